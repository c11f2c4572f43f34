"""The new text of a reply: quoted history and signature removed (SPEC §4.7).

mail-parser-reply knows the reply headers of many mail clients in many languages
("On … wrote:", "Am … schrieb …:", Outlook's "From:/Sent:" and "Von:/Gesendet:" blocks,
"-----Original Message-----", "-----Ursprüngliche Nachricht-----"); we ask it for English and
German and keep the whole text when it finds nothing new (a reply that is all quote is
better kept than lost).
"""

from __future__ import annotations

import logging
from functools import lru_cache

from mailparser_reply import EmailReplyParser

log = logging.getLogger(__name__)

LANGUAGES = ("en", "de")


@lru_cache(maxsize=1)
def _parser() -> EmailReplyParser:
    return EmailReplyParser(languages=list(LANGUAGES))


def new_text(body: str) -> str:
    """The part of BODY the sender wrote now."""
    if not body.strip():
        return ""
    try:
        reply = _parser().parse_reply(text=body)
    except Exception:  # the library on text it was not made for: keep everything
        log.warning("quote stripping failed; keeping the whole body")
        return body.strip()
    reply = _without_signature(reply or "")
    reply = _without_trailing_separators(reply).strip()
    return reply or body.strip()


def _without_signature(text: str) -> str:
    """Cut at the signature separator "-- " (RFC 3676; some clients drop its blank)."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line in ("-- ", "--") and i > 0:
            return "\n".join(lines[:i])
    return text


def _without_trailing_separators(text: str) -> str:
    """Drop the separator line the library leaves above a quote it cut ("-----Original
    Message-----", "-----Ursprüngliche Nachricht-----", Outlook's line of underscores)."""
    lines = text.rstrip().split("\n")
    while lines and _is_separator(lines[-1]):
        lines.pop()
    return "\n".join(lines)


def _is_separator(line: str) -> bool:
    line = line.strip()
    if len(line) >= 10 and set(line) <= {"_", "-", "="}:
        return True
    return line.startswith("-----") and line.endswith("-----")
