"""Does a customer's reply to a resolved ticket confirm that it may be closed? (SPEC §4.7)

The first line of the reply's new text decides: it is a close confirmation when it is one of
`tickets.close_phrases` — case, blanks and trailing punctuation ignored — as a customer
writes it, with the courtesy around it that says nothing either way: "Thanks, please close.",
"Please close it, thank you!", "Danke, kann geschlossen werden.", "Hi team, please close". A
first line that only greets ("Hi,", "Hallo Service-Team,") is a salutation, not the answer:
the line after it decides. Anything else — "Thanks, but do not close yet", "Still broken" —
is not a confirmation (the ticket is reopened). Only the first lines are looked at, each cut
to MAX_LINE characters: the work is bounded whatever the text.
"""

from __future__ import annotations

import re

MAX_LINE = 200  # characters of a line looked at
MAX_LINES = 20  # lines looked at for the first two that are not blank
MAX_SCAN = 10_000  # characters searched for a line's end; a longer line ends the search
# Said around a confirmation, they neither confirm nor deny anything.
COURTESY = frozenset({
    "thanks", "thank you", "many thanks", "thanks a lot", "thank you very much", "thanks again", "cheers",
    "ok", "okay", "yes", "great", "perfect", "fine", "all good",
    "danke", "vielen dank", "danke schön", "danke schon", "dankeschön", "danke sehr", "besten dank",
    "herzlichen dank", "ja", "super", "prima", "perfekt", "alles klar", "gut",
})
_PLEASE = ("please ", "bitte ")
_SEGMENTS = re.compile(r"\s*[,;.!?:]+\s*|\s+[-–—]+\s+")
_GREETING = re.compile(
    r"(hi|hello|hey|dear|good (morning|afternoon|evening)|hallo|moin|servus|guten (morgen|tag|abend)|"
    r"liebe[rs]?|sehr geehrte[rs]?|grüß gott)\b[^.!?]{0,60}[,!:]?")


def confirms(text: str, phrases) -> bool:
    """Whether the first line of TEXT (after a salutation) confirms closing, by PHRASES."""
    wanted = {_normal(p) for p in phrases}
    line = _deciding_line(text)
    if _normal(line) in wanted:
        return True
    said = [s for s in _SEGMENTS.split(_normal(line)) if s and s not in COURTESY and not _GREETING.fullmatch(s)]
    return len(said) == 1 and (said[0] in wanted or _without_please(said[0]) in wanted)


def _deciding_line(text: str) -> str:
    """The first non-blank line, or the one after it when it only greets."""
    lines, position = [], 0
    for _ in range(MAX_LINES):
        end = text.find("\n", position, position + MAX_SCAN)
        line = text[position:position + MAX_LINE] if end < 0 else text[position:min(end, position + MAX_LINE)]
        if line.strip():
            lines.append(line.strip())
            if len(lines) == 2:
                break
        if end < 0:
            break
        position = end + 1
    if len(lines) == 2 and _GREETING.fullmatch(lines[0].lower()):
        return lines[1]
    return lines[0] if lines else ""


def _normal(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(" .!?,;:")


def _without_please(text: str) -> str:
    for word in _PLEASE:
        if text.startswith(word):
            return text[len(word):]
    return text
