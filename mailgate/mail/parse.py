"""Raw bytes → one plain `ParsedMessage` (SPEC §4.2).

The work is split by what it is about: `mime` cuts the bytes into the MIME tree in linear
time (depth and part count checked while cutting), `body` takes the body text and the
attachments out of it (sizes checked before decoding), `charsets` decodes text whatever its
declaration says, `headers` decodes subjects, names and addresses, `htmltext` turns HTML
into text and `tnef` unpacks an Outlook `winmail.dat`. Whatever the bytes, `parse` either
returns or raises `UnparseableMessage` — every other exception of the email package or the
libraries (RecursionError included) is turned into one, so the pipeline quarantines the
message instead of retrying it for ever.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message

from mailgate.mail import body, charsets, headers, mime, refs
from mailgate.mail.headers import message_id_of  # noqa: F401  (parse.message_id_of: the raw fallback)


class UnparseableMessage(Exception):
    """Nothing usable could be read from the bytes, or they exceed a limit."""


@dataclass(frozen=True)
class Limits:
    max_attachments: int = 250
    max_decoded_bytes: int = 100 * 1024 * 1024
    max_headers: int = 1000
    max_header_bytes: int = 100 * 1024
    max_depth: int = 30  # MIME nesting
    max_parts: int = 2000


ParsedAttachment = body.Attachment


@dataclass
class ParsedMessage:
    message_id: str | None  # as in the header, with angle brackets
    subject: str
    from_name: str
    from_address: str | None  # lower case
    to: list[str]
    cc: list[str]
    date: datetime | None
    in_reply_to: list[str]
    references: list[str]
    text: str
    attachments: list[ParsedAttachment]
    headers: Message = field(repr=False)  # the whole tree, for the auto-reply and bounce checks
    content_type: str = "text/plain"


def parse(raw: bytes, limits: Limits = Limits()) -> ParsedMessage:
    try:
        return _parse(raw, limits)
    except UnparseableMessage:
        raise
    except (mime.StructureLimit, body.BodyLimit) as e:
        raise UnparseableMessage(str(e)) from e
    except (Exception, RecursionError) as e:  # the email package and the libraries raise many kinds
        raise UnparseableMessage(f"{type(e).__name__}: {e}") from e


def _parse(raw: bytes, limits: Limits) -> ParsedMessage:
    _check_headers(raw, limits)
    tree = mime.parse(raw, mime.StructureLimits(limits.max_depth, limits.max_parts))
    msg = tree.message
    if len(msg) == 0 and not raw.strip():
        raise UnparseableMessage("empty message")
    content = body.read(tree, limits.max_attachments, limits.max_decoded_bytes)
    hint = body.declared_charset(msg)
    from_name, from_address = headers.first_address(headers.raw_values(msg, "From"), hint)
    return ParsedMessage(
        message_id=_message_id(msg),
        subject=_subject(msg, hint),
        from_name=from_name,
        from_address=from_address,
        to=headers.addresses(headers.raw_values(msg, "To"), hint),
        cc=headers.addresses(headers.raw_values(msg, "Cc"), hint),
        date=_date(msg.get("Date")),
        in_reply_to=refs.message_ids(_header(msg, "In-Reply-To")),
        references=refs.message_ids(_header(msg, "References")),
        text=content.text,
        attachments=content.attachments,
        headers=msg,
        content_type=msg.get_content_type(),
    )


# --- limits ------------------------------------------------------------------------------


def _check_headers(raw: bytes, limits: Limits) -> None:
    """Count and measure the top-level header fields before anything parses them."""
    end = raw.find(b"\n\n")
    end2 = raw.find(b"\r\n\r\n")
    ends = [e for e in (end, end2) if e >= 0]
    head = raw[: min(ends)] if ends else raw
    count, longest, current = 0, 0, 0
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            current += len(line)
        else:
            count += 1
            current = len(line)
        longest = max(longest, current)
    if count > limits.max_headers:
        raise UnparseableMessage(f"limit: {count} header fields (at most {limits.max_headers})")
    if longest > limits.max_header_bytes:
        raise UnparseableMessage(f"limit: a header of {longest} bytes (at most {limits.max_header_bytes})")


# --- headers -----------------------------------------------------------------------------


def _subject(msg: Message, hint: str | None) -> str:
    values = headers.raw_values(msg, "Subject")
    return headers.decode(values[0], hint) if values else ""


def _header(msg: Message, name: str) -> str:
    """The first value of NAME, raw 8-bit bytes decoded (they reach the database)."""
    values = headers.raw_values(msg, name)
    return charsets.unsurrogate(values[0]) if values else ""


def _message_id(msg: Message) -> str | None:
    ids = refs.message_ids(_header(msg, "Message-ID"))
    return ids[0] if ids else None


def _date(value) -> datetime | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
