"""The customer's mail inside an agent's forward (SPEC §11): who wrote it, its subject, its
text, its attachments — and the forwarder's own text above it.

An inline forward is a marker line and a block of header fields above the original text, as
the common clients write them (English and German; the field names of both are known
whatever the marker):

    Gmail        ---------- Forwarded message ---------      From/Von, Date, Subject, To, Cc
                 ---------- Weitergeleitete Nachricht ---------
    Thunderbird  -------- Forwarded Message --------         Subject/Betreff, Date/Datum, From/Von, To/An
                 -------- Weitergeleitete Nachricht --------  (a tab after the colon)
    Apple Mail   Begin forwarded message:                    From/Von, Subject/Betreff, Date/Datum, To/An
                 Anfang der weitergeleiteten Nachricht:       (in plain text quoted with "> ")
    Outlook      -----Original Message-----                  From/Von, Sent/Gesendet, To/An, Cc, Subject/Betreff
                 -----Ursprüngliche Nachricht-----, or a rule of underscores (Outlook 365),
                 or no marker at all (its HTML part as text: the rule was an <hr>)

The sender is read from the From field as clients write it: `Name <address>`, `"Adams,
Alice" <address>`, `Name [mailto:address]`, a bare address. An attached message
(message/rfc822, Outlook's "forward as attachment") is parsed like any mail (mail.parse,
under the same limits) when the text holds no inline forward.

Bounded: the marker is looked for in the first MAX_EXAMINED characters, each line seen up to
MAX_LINE characters; the header block is at most MAX_FIELDS lines; addresses are found by
one bounded pattern in one field value. Work and memory are linear in the text, whatever it
holds. (email-forward-parser knows more clients and languages, but runs ~200 unanchored
patterns with nested `.+` over the whole body: 8 KB of `From: a<a<a<…` took it 2.5 s, and it
grows faster than the text — see the test of hostile forwards.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailgate.mail.parse import Limits, ParsedAttachment, ParsedMessage, UnparseableMessage, parse

MAX_EXAMINED = 128 * 1024  # characters in which a marker is looked for
MAX_LINE = 300  # characters of a line that the patterns see
MAX_FIELDS = 12  # lines of a header block
ATTACHED_MESSAGES = ("message/rfc822", "message/global")

_MARKER = re.compile(
    r"^\s*(?:-{2,}\s*(?:forwarded message|weitergeleitete nachricht|original message|ursprüngliche nachricht|"
    r"original-nachricht)\s*-{2,}|begin forwarded message\s*:|anfang der weitergeleiteten nachricht\s*:|_{10,})\s*$",
    re.I)
_FIELD = re.compile(r"^\s*\*?\s*(from|von|sent|gesendet|date|datum|to|an|cc|kopie|subject|betreff|reply-to|"
                    r"antwort an)\s*\*?\s*:\s*\*?\s*(.*)$", re.I)
_FIELDS = {"von": "from", "gesendet": "date", "sent": "date", "datum": "date", "an": "to", "kopie": "cc",
           "betreff": "subject", "antwort an": "reply-to"}
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?){1,8}")
_NAME_JUNK = re.compile(r"mailto:|[<>\[\]()\"]")


@dataclass
class Forward:
    sender_name: str
    sender_address: str | None  # lower case; None when the forward names no address
    subject: str
    text: str  # the original's text
    note: str  # the forwarder's own text above it
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    attachments: list[ParsedAttachment] = field(default_factory=list)  # the original's
    message_id: str | None = None  # an attached message's
    attached_index: int | None = None  # which of the forwarding mail's attachments it was


def find(parsed: ParsedMessage, text: str, limits: Limits) -> Forward | None:
    """The mail PARSED forwards (TEXT: its new text, commands taken off), or None."""
    return inline(text, parsed.attachments) or attached(parsed, text, limits)


def inline(text: str, attachments: list[ParsedAttachment] = ()) -> Forward | None:
    """An inline forward in TEXT; the forwarding mail's ATTACHMENTS are the original's."""
    head = text[:MAX_EXAMINED]
    lines = head.split("\n")
    for i, line in enumerate(lines):
        if _MARKER.match(line[:MAX_LINE]) or (_is_field(line, "from") and _field_follows(lines, i)):
            start = i + 1 if _MARKER.match(line[:MAX_LINE]) else i
            found = _block(lines, start)
            if found is not None:
                fields, end, quoted = found
                note = "\n".join(lines[:i]).strip()
                body = "\n".join(_unquote(line) if quoted else line for line in lines[end:]) + text[len(head):]
                return _forward(fields, body.strip("\n").rstrip(), note, list(attachments))
    return None


def attached(parsed: ParsedMessage, text: str, limits: Limits) -> Forward | None:
    """The first attached message of PARSED, parsed like any mail; TEXT is the note."""
    for index, attachment in enumerate(parsed.attachments):
        if attachment.content_type not in ATTACHED_MESSAGES:
            continue
        try:
            original = parse(attachment.data, limits)
        except UnparseableMessage:
            return None
        return Forward(sender_name=original.from_name, sender_address=original.from_address,
                       subject=original.subject, text=original.text, note=text.strip(), to=original.to,
                       cc=original.cc, attachments=original.attachments, message_id=original.message_id,
                       attached_index=index)
    return None


# --- the header block ------------------------------------------------------------------------


def _block(lines: list[str], start: int) -> tuple[dict[str, str], int, bool] | None:
    """The fields from START (blank lines before them skipped): (fields, the first line of
    the body, whether the block was quoted with "> "), or None without a From. The block
    ends at a blank line, or — once it has a From and another field — at the first line
    that is no field (Outlook's HTML turned into text has no blank line there)."""
    i = start
    while i < len(lines) and i < start + 3 and not _unquote(lines[i]).strip():
        i += 1
    quoted = i < len(lines) and lines[i].lstrip().startswith(">")
    fields: dict[str, str] = {}
    last = None
    for j in range(i, min(len(lines), i + MAX_FIELDS)):
        line = (_unquote(lines[j]) if quoted else lines[j])[:MAX_LINE]
        if not line.strip():
            return (fields, j, quoted) if "from" in fields else None
        match = _FIELD.match(line)
        if match:
            last = _FIELDS.get(match.group(1).lower(), match.group(1).lower())
            fields.setdefault(last, match.group(2).strip())
        elif last in ("to", "cc") and "@" in line:
            fields[last] += " " + line.strip()  # a long list of recipients, wrapped
        elif "from" in fields and len(fields) > 1:
            return fields, j, quoted  # the body right below the fields (Outlook's HTML as text)
        else:
            return None
    return None


def _forward(fields: dict[str, str], body: str, note: str, attachments: list[ParsedAttachment]) -> Forward:
    name, address = _mailbox(fields.get("from", ""))
    return Forward(sender_name=name, sender_address=address, subject=fields.get("subject", ""), text=body,
                   note=note, to=_addresses(fields.get("to", "")), cc=_addresses(fields.get("cc", "")),
                   attachments=attachments)


def _mailbox(value: str) -> tuple[str, str | None]:
    """(name, address) of a From field's value as clients write it."""
    match = _ADDRESS.search(value[:MAX_LINE])
    if match is None:
        return " ".join(_NAME_JUNK.sub(" ", value).split()).strip(" ,'"), None
    name = value[:match.start()] + value[match.end():]
    name = " ".join(_NAME_JUNK.sub(" ", name).split()).strip(" ,'")
    return ("" if name.lower() == match.group(0).lower() else name), match.group(0).lower()


def _addresses(value: str) -> list[str]:
    return [a.lower() for a in _ADDRESS.findall(value[:4 * MAX_LINE])]


def _is_field(line: str, name: str) -> bool:
    match = _FIELD.match(line[:MAX_LINE])
    return bool(match) and _FIELDS.get(match.group(1).lower(), match.group(1).lower()) == name


def _field_follows(lines: list[str], i: int) -> bool:
    """A bare Outlook block: From followed by another field within three lines."""
    return any(_FIELD.match(line[:MAX_LINE]) for line in lines[i + 1:i + 4])


def _unquote(line: str) -> str:
    """LINE without one level of "> " quoting (Apple Mail's plain-text forward)."""
    stripped = line.lstrip()
    if not stripped.startswith(">"):
        return line
    return stripped[2:] if stripped.startswith("> ") else stripped[1:]
