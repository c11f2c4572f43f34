"""Raw bytes → one plain `ParsedMessage` (SPEC §4.2), with mail-parser doing the MIME work.

Whatever the charset — declared, missing or wrong — the result holds readable text: mail-parser
decodes with replacement, HTML-only mail is turned into text by inscriptis, and an Outlook
`winmail.dat` is unpacked by tnefparse into ordinary attachments. Only a message that cannot
be parsed at all raises `UnparseableMessage`; the pipeline quarantines it.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import email.utils
import logging
import mimetypes
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from email.feedparser import BytesFeedParser
from email.message import Message

import mailparser
from inscriptis import get_text
from tnefparse import TNEF

from mailgate.mail import refs

log = logging.getLogger(__name__)

TNEF_TYPES = ("application/ms-tnef", "application/vnd.ms-tnef")


class UnparseableMessage(Exception):
    """Nothing usable could be read from the bytes, or they exceed a limit."""


@dataclass(frozen=True)
class Limits:
    max_attachments: int = 250
    max_decoded_bytes: int = 100 * 1024 * 1024
    max_headers: int = 1000
    max_header_bytes: int = 100 * 1024


@dataclass
class ParsedAttachment:
    filename: str
    content_type: str
    data: bytes
    inline: bool = False
    content_id: str | None = None


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
    headers: Message = field(repr=False)  # the top-level headers, for the auto-reply checks
    content_type: str = "text/plain"


def parse(raw: bytes, limits: Limits = Limits()) -> ParsedMessage:
    _check_headers(raw, limits)
    try:
        mail = mailparser.MailParser(_message_from_bytes(raw))
    except Exception as e:  # mail-parser raises many kinds (and RecursionError); all mean the same to us
        raise UnparseableMessage(f"{type(e).__name__}: {e}") from e
    msg = mail.message
    if msg is None or (len(msg) == 0 and not raw.strip()):
        raise UnparseableMessage("empty message")
    from_name, from_address = _first_address(_raw_values(msg, "From"))
    attachments = _attachments(mail.attachments)
    _check_attachments(attachments, limits)
    return ParsedMessage(
        message_id=_message_id(msg),
        subject=_subject(msg),
        from_name=from_name,
        from_address=from_address,
        to=_addresses(msg.get_all("To", [])),
        cc=_addresses(msg.get_all("Cc", [])),
        date=_date(msg.get("Date")),
        in_reply_to=refs.message_ids(str(msg.get("In-Reply-To", "") or "")),
        references=refs.message_ids(str(msg.get("References", "") or "")),
        text=_body_text(msg),
        attachments=attachments,
        headers=msg,
        content_type=msg.get_content_type(),
    )


def _message_from_bytes(raw: bytes) -> Message:
    """The standard library's parser (what mail-parser uses), fed in slices. Given a whole
    message at once it splits all of it into lines in one go: a 35 MB message peaked at
    274 MB; in 64 KB slices, at ~100 MB (bench.memory)."""
    parser = BytesFeedParser()
    view = memoryview(raw)
    for start in range(0, len(raw), _FEED_SLICE):
        parser.feed(bytes(view[start:start + _FEED_SLICE]))
    return parser.close()


_FEED_SLICE = 64 * 1024


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


def _check_attachments(attachments: list[ParsedAttachment], limits: Limits) -> None:
    if len(attachments) > limits.max_attachments:
        raise UnparseableMessage(f"limit: {len(attachments)} attachments (at most {limits.max_attachments})")
    total = sum(len(a.data) for a in attachments)
    if total > limits.max_decoded_bytes:
        raise UnparseableMessage(f"limit: {total} bytes of attachments (at most {limits.max_decoded_bytes})")


# --- headers -----------------------------------------------------------------------------


def _header_text(value) -> str:
    text = value if isinstance(value, str) else str(value or "")
    # Folded or malicious headers may carry CR/LF or NULs; a subject is one line of text.
    return " ".join(text.replace("\x00", " ").split())


def _subject(msg: Message) -> str:
    """The first Subject, decoded by the standard library's RFC 2047 rules (which keep the
    space between an encoded word and plain text that mail-parser loses)."""
    values = _raw_values(msg, "Subject")
    if not values:
        return ""
    value = _unsurrogate(str(values[0])).replace("\r", "").replace("\n", "")  # unfold
    try:
        return _header_text(str(email.policy.default.header_factory("subject", value)))
    except Exception:  # a header the registry cannot take: fall back to encoded-word decoding
        return _header_text(_decode_words(value))


def _raw_values(msg: Message, name: str) -> list[str]:
    """A header's values as received (8-bit bytes as surrogate escapes), not as Header objects."""
    return [str(v) for k, v in msg.raw_items() if k.lower() == name.lower()]


def _unsurrogate(text: str) -> str:
    """Raw 8-bit bytes in a header (no RFC 2047) arrive as surrogate escapes: decode them
    as UTF-8, else as Windows-1252."""
    if not any("\udc80" <= c <= "\udcff" for c in text):
        return text
    data = text.encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _message_id(msg: Message) -> str | None:
    ids = refs.message_ids(str(msg.get("Message-ID", "") or ""))
    return ids[0] if ids else None


def _first_address(values: list) -> tuple[str, str | None]:
    for name, address in email.utils.getaddresses([_unsurrogate(str(v)) for v in values]):
        if "@" in address:
            return _header_text(_decode_words(name)), address.strip().lower()
    return "", None


def _addresses(values: list) -> list[str]:
    pairs = email.utils.getaddresses([str(v) for v in values])
    return [a.strip().lower() for _, a in pairs if "@" in a]


def _decode_words(text: str) -> str:
    from email.header import decode_header, make_header

    try:
        return str(make_header(decode_header(text)))
    except Exception:  # a broken encoded-word: keep what the sender wrote
        return text


def _date(value) -> datetime | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None


# --- body --------------------------------------------------------------------------------


def _body_text(msg: Message) -> str:
    """The text of the body parts: text/plain, else text/html converted to text.

    mail-parser decides which parts are attachments; the text of the body parts we decode
    ourselves, because its decoding replaces what a wrong or missing charset declaration
    makes undecodable, and leaves 7-bit encodings such as ISO-2022-JP undecoded.
    """
    plain, html = [], []
    for part in _body_parts(msg):
        text = _decode_part(part)
        if text.strip():
            (html if part.get_content_subtype() == "html" else plain).append(text)
    if plain:
        return _clean("\n\n".join(plain))
    if html:
        return _clean("\n\n".join(_html_to_text(h) for h in html))
    if msg.get_content_maintype() == "multipart" and not msg.is_multipart():
        # A boundary that never appears: the parser keeps the whole body as one string.
        return _clean(_decode_part(msg))
    return _clean(msg.preamble or "") if msg.is_multipart() else ""


def _body_parts(msg: Message):
    """Text parts that are the body: not attachments, not inside an attached message."""
    if msg.is_multipart():
        for part in msg.get_payload():
            if isinstance(part, Message) and not _is_attached(part):
                yield from _body_parts(part)
    elif msg.get_content_type() in ("text/plain", "text/html") and not _is_attached(msg):
        yield msg


def _is_attached(part: Message) -> bool:
    return (
        part.get_content_disposition() == "attachment" or bool(part.get_filename())
        or part.get_content_type() == "message/rfc822"
    )


def _decode_part(part: Message) -> str:
    """Bytes → text: the declared charset, then UTF-8, then Windows-1252, then Latin-1."""
    try:
        data = part.get_payload(decode=True) or b""
    except Exception:
        data = str(part.get_payload()).encode("utf-8", "replace")
    declared = part.get_content_charset()
    for charset in (declared, "utf-8", "cp1252"):
        if not charset:
            continue
        try:
            return data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("latin-1")


def _html_to_text(html: str) -> str:
    try:
        return get_text(html)
    except Exception:  # inscriptis on pathological markup; text beats nothing
        log.warning("html to text failed; keeping the markup as text")
        return html


def _clean(text: str) -> str:
    # Trailing blanks stay: "-- " is the signature separator (RFC 3676).
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return text.strip("\n")


# --- attachments -------------------------------------------------------------------------


def _attachments(items: list[dict]) -> list[ParsedAttachment]:
    result = []
    for item in items:
        attachment = _attachment(item)
        if _is_tnef(attachment):
            result.extend(_unpack_tnef(attachment))
        else:
            result.append(attachment)
    return result


def _attachment(item: dict) -> ParsedAttachment:
    payload = item.get("payload") or ""
    if item.get("binary"):
        data = _lenient_b64decode(payload)
    else:
        data = payload.encode(item.get("charset") or "utf-8", errors="replace") if isinstance(payload, str) else payload
    content_id = (item.get("content-id") or "").strip() or None
    disposition = (item.get("content-disposition") or "").strip().lower()
    inline = disposition.startswith("inline") or (content_id is not None and not disposition)
    filename = item.get("filename") or "attachment"
    if content_id and filename == item.get("content-id"):
        filename = refs.strip_brackets(content_id)  # mail-parser names unnamed parts by their Content-ID
    return ParsedAttachment(
        filename=_display_name(filename),
        content_type=(item.get("mail_content_type") or "application/octet-stream").lower()[:255],
        data=data,
        inline=inline,
        content_id=refs.strip_brackets(content_id) if content_id else None,
    )


def _display_name(name: str) -> str:
    """The sender's file name, for display only (content is stored under its sha256):
    control characters removed, at most 255 characters."""
    text = "".join(c for c in _header_text(name) if unicodedata.category(c) != "Cc")
    return text[:255] or "attachment"


def _lenient_b64decode(text: str) -> bytes:
    """Base64 as broken mailers write it: stray characters dropped, padding repaired."""
    try:
        return base64.b64decode(text)
    except (binascii.Error, ValueError):
        pass
    clean = re.sub(r"[^A-Za-z0-9+/]", "", text)
    clean = clean[: len(clean) - (len(clean) % 4 == 1)]  # a lone last sextet carries no byte
    return base64.b64decode(clean + "=" * (-len(clean) % 4))


def _is_tnef(attachment: ParsedAttachment) -> bool:
    return attachment.content_type in TNEF_TYPES or attachment.filename.lower() == "winmail.dat"


def _unpack_tnef(attachment: ParsedAttachment) -> list[ParsedAttachment]:
    """The files inside a winmail.dat; the winmail.dat itself when it holds none or is broken."""
    try:
        tnef = TNEF(attachment.data)
        files = [
            ParsedAttachment(
                filename=_display_name(_tnef_name(a)),
                content_type=mimetypes.guess_type(_tnef_name(a))[0] or "application/octet-stream",
                data=bytes(a.data),
            )
            for a in tnef.attachments
        ]
    except Exception:
        log.warning("winmail.dat could not be decoded; kept as it is")
        return [attachment]
    return files or [attachment]


def _tnef_name(a) -> str:
    name = a.long_filename() or a.name or "attachment"
    return name.decode("latin-1") if isinstance(name, bytes) else str(name)
