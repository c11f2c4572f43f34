"""The MIME tree → the body text and the attachments (SPEC §4.2).

- text/plain parts that are not attachments are the body, all of them in order (a
  multipart/mixed may carry text in several parts); an HTML part is converted to text and
  kept in its place; of a multipart/alternative only one alternative gives text (plain text
  when there is any), but the attachments of every alternative are kept;
- every other leaf is an attachment: named as the sender named it, else after its
  description, else `attachment-N.ext` from its type (N: its place among the attachments,
  so the name is the same on every parse);
- an attached message is one `.eml` attachment with the bytes it was received as, named
  after its subject; nothing inside it is walked into;
- a `winmail.dat` is unpacked (`tnef`).

Sizes are checked before each part is decoded, from its encoded length, so no limit is
found out only after the copies exist.
"""

from __future__ import annotations

import logging
import mimetypes
import re
import unicodedata
from dataclasses import dataclass, field
from email.message import Message

from mailgate.mail import charsets, headers, htmltext, tnef
from mailgate.mail.mime import Leaf, Tree

log = logging.getLogger(__name__)

TNEF_TYPES = ("application/ms-tnef", "application/vnd.ms-tnef")
_TEXT_BODY = ("text/plain", "text/html")
_ATTACHED_MESSAGES = ("message/rfc822", "message/global")
_FILE_NAME = re.compile(r"[^.\s]\.[A-Za-z0-9]{1,5}$")


class BodyLimit(Exception):
    """The parts would decode to more than a message may hold."""


@dataclass
class Attachment:
    filename: str
    content_type: str
    data: bytes
    inline: bool = False
    content_id: str | None = None
    name_given: bool = True  # False: the sender gave no name, it was made up here


@dataclass
class Body:
    text: str = ""
    attachments: list[Attachment] = field(default_factory=list)


@dataclass
class _Walk:
    tree: Tree
    max_attachments: int
    max_decoded_bytes: int
    hint: str | None
    pieces: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    decoded: int = 0


def read(tree: Tree, max_attachments: int, max_decoded_bytes: int) -> Body:
    _count_attachments(tree.message, max_attachments)
    walk = _Walk(tree, max_attachments, max_decoded_bytes, declared_charset(tree.message))
    _visit(walk, tree.message, keep_text=True)
    # A multipart's preamble is a notice for readers that know no MIME, never the body.
    return Body("\n\n".join(p for p in (_clean(p) for p in walk.pieces) if p.strip()), walk.attachments)


def _count_attachments(msg: Message, most: int) -> None:
    """Refuse a message with too many attachments before decoding any of them."""
    count, stack = 0, [msg]
    while stack:
        part = stack.pop()
        if part.is_multipart() and part.get_content_type() not in _ATTACHED_MESSAGES:
            stack.extend(p for p in part.get_payload() if isinstance(p, Message))
        elif not _is_body_text(part):
            count += 1
    if count > most:
        raise BodyLimit(f"limit: {count} attachments (at most {most})")


def declared_charset(msg: Message) -> str | None:
    """The first charset the message declares for a text part, else the first that its
    subject or addresses name in an encoded word: the best guess for raw 8-bit header fields,
    file names and text parts, which declare none ("äöüß" alone reads as two Chinese
    characters just as cleanly)."""
    for part in msg.walk():
        charset = part.get_content_charset()
        if charset and charsets.codec_of(charset) not in (None, "ascii"):
            return charset
        if part.get_content_type() in _ATTACHED_MESSAGES:
            break
    return headers.encoded_word_charset(msg)


# --- the walk ------------------------------------------------------------------------------


def _visit(walk: _Walk, part: Message, keep_text: bool, related: bool = False) -> None:
    """RELATED: PART is a resource of a multipart/related (an image its HTML shows)."""
    if part.get_content_type() in _ATTACHED_MESSAGES:
        _attach(walk, part)  # its parts are the attached message's, not this message's
    elif part.is_multipart():
        children = [p for p in part.get_payload() if isinstance(p, Message)]
        chosen = _alternative(walk, children) if part.get_content_type() == "multipart/alternative" else None
        resources = part.get_content_type() == "multipart/related"
        for child in children:
            _visit(walk, child, keep_text and (chosen is None or child is chosen), resources and child is not children[0])
    elif _is_body_text(part):
        if keep_text:
            walk.pieces.append(_text(walk, part))
    else:
        _attach(walk, part, related)


def _alternative(walk: _Walk, children: list[Message]) -> Message | None:
    """The alternative whose text is the body: plain text where it is the whole story, else
    the richest one (the last with text). A plain alternative that says far less than the
    HTML one ("read this newsletter online") or other words is not the whole story."""
    with_text = [c for c in children if any(_is_body_text(p) and _has_text(p) for p in c.walk())]
    plain = next((c for c in with_text if any(p.get_content_type() == "text/plain" and _is_body_text(p)
                                              and _has_text(p) for p in c.walk())), None)
    richest = with_text[-1] if with_text else (children[-1] if children else None)
    if plain is None or plain is richest or not _says_far_less(walk, plain, richest):
        return plain or richest
    return richest


def _says_far_less(walk: _Walk, plain: Message, rich: Message) -> bool:
    """Whether the plain alternative tells less than the rich one: far shorter, or opening
    with words the rich one does not have (a stale or templated plain part) — unless it is
    far longer: then the rich part is the stub (a forward kept whole only in the plain
    part), and dropping the plain one would lose what the sender sent."""
    def squeezed(alternative: Message) -> str:
        texts = (_text(walk, p, count=False) for p in alternative.walk() if _is_body_text(p) and _has_text(p))
        return "".join("".join(texts).split())

    plain_text, rich_text = squeezed(plain), squeezed(rich)
    if _far_shorter(rich_text, plain_text):
        return False
    return _far_shorter(plain_text, rich_text) or plain_text[:60] not in rich_text


def _far_shorter(text: str, other: str) -> bool:
    return 3 * len(text) + 200 < len(other)


def _is_body_text(part: Message) -> bool:
    kind = part.get_content_type()
    if part.get_content_maintype() == "multipart":  # a boundary that never appears: kept as text
        return True
    return kind in _TEXT_BODY and part.get_content_disposition() != "attachment" and not part.get_filename()


def _has_text(part: Message) -> bool:
    payload = part.get_payload()
    return isinstance(payload, str) and bool(payload.strip())


def _text(walk: _Walk, part: Message, count: bool = True) -> str:
    """PART's text; COUNT false: a look that does not count against the budget (the part is
    counted when it is taken)."""
    text = charsets.decode(_decoded(walk, part, count), part.get_content_charset(), walk.hint)
    return htmltext.to_text(text) if part.get_content_subtype() == "html" else text


def _decoded(walk: _Walk, part: Message, count: bool = True) -> bytes:
    """PART's payload, transfer-decoded, once the budget allows what it will decode to."""
    walk.decoded += _encoded_size(part) if count else 0
    if walk.decoded > walk.max_decoded_bytes:
        raise BodyLimit(f"limit: more than {walk.max_decoded_bytes} bytes of attachments")
    try:
        return part.transfer_decoded() if isinstance(part, Leaf) else part.get_payload(decode=True) or b""
    except Exception:  # a transfer encoding the email package cannot undo: the raw text
        return str(part.get_payload()).encode("ascii", "surrogateescape")


def _encoded_size(part: Message) -> int:
    if isinstance(part, Leaf):
        return part.encoded_size()
    payload = part.get_payload()
    return len(payload) if isinstance(payload, str) else 0


# --- attachments ---------------------------------------------------------------------------


def _attach(walk: _Walk, part: Message, related: bool = False) -> None:
    kind = part.get_content_type()
    if kind in _ATTACHED_MESSAGES:
        data = walk.tree.original(part) or b""
        _budget(walk, len(data))
        name = _given_name(part, walk.hint) or _subject_name(part, walk.hint)
        _add(walk, part, data, name or None, ".eml")
        return
    data = _decoded(walk, part)
    name = _given_name(part, walk.hint)
    if kind in TNEF_TYPES or (name or "").lower() == "winmail.dat":
        files = _tnef_files(data)
        if files is not None:
            for file_name, content in files:
                _add_file(walk, file_name, content)
            return
    _add(walk, part, data, name, _extension(kind), related)


def _budget(walk: _Walk, size: int) -> None:
    walk.decoded += size
    if walk.decoded > walk.max_decoded_bytes:
        raise BodyLimit(f"limit: more than {walk.max_decoded_bytes} bytes of attachments")


def _add(walk: _Walk, part: Message, data: bytes, name: str | None, extension: str, related: bool = False) -> None:
    content_id = headers.one_line(str(part.get("Content-ID", "") or "")).strip("<>").strip() or None
    disposition = part.get_content_disposition()
    _append(walk, Attachment(
        filename=name or _generated_name(walk, part, extension, content_id),
        content_type=part.get_content_type()[:255],
        data=data,
        inline=_inline(disposition, content_id, related),
        content_id=content_id[:255] if content_id else None,
        name_given=bool(name),
    ))


def _inline(disposition: str | None, content_id: str | None, related: bool) -> bool:
    """Shown in the text rather than beside it: disposition inline, or a part with a Content-ID
    that says nothing else — or that is a resource of a multipart/related, whatever its
    disposition (clients and libraries write `attachment` with a file name there, and the HTML
    shows it by its cid: all the same; RFC 2387)."""
    if disposition == "inline":
        return True
    return content_id is not None and (disposition is None or related)


def _add_file(walk: _Walk, name: str, data: bytes) -> None:
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    _append(walk, Attachment(filename=display_name(name), content_type=kind, data=data))


def _append(walk: _Walk, attachment: Attachment) -> None:
    if len(walk.attachments) >= walk.max_attachments:
        raise BodyLimit(f"limit: more than {walk.max_attachments} attachments")
    walk.attachments.append(attachment)


def _tnef_files(data: bytes) -> list[tuple[str, bytes]] | None:
    """The files in a winmail.dat; None (keep it as it is) when it holds none or is broken."""
    try:
        return tnef.unpack(data) or None
    except Exception:  # tnef.InvalidTnef and whatever tnefparse raises on broken data
        log.warning("winmail.dat could not be decoded; kept as it is")
        return None


# --- names ---------------------------------------------------------------------------------


def _given_name(part: Message, hint: str | None) -> str:
    """The file name the sender gave (filename or name parameter), decoded; "" when none."""
    for param, header in (("filename", "Content-Disposition"), ("name", "Content-Type")):
        value = headers.params(part, header).get(param)
        text = _param_text(value, hint) if value else ""
        if text.strip():
            return display_name(text)
    return ""


def _param_text(value, hint: str | None) -> str:
    if isinstance(value, tuple):  # RFC 2231: (charset, language, %-decoded text)
        charset, _, text = value
        return charsets.decode_header_bytes(text.encode("latin-1", "surrogateescape"), charset or hint)
    return headers.decode(value, hint, fold=False)


def _subject_name(part: Message, hint: str | None) -> str:
    inner = part.get_payload()
    message = inner[0] if isinstance(inner, list) and inner else None
    subject = headers.raw_values(message, "Subject") if isinstance(message, Message) else []
    return display_name(headers.decode(subject[0], hint) + ".eml") if subject and subject[0].strip() else ""


def _generated_name(walk: _Walk, part: Message, extension: str, content_id: str | None) -> str:
    """A name for a part the sender did not name: its description, else a file name its
    Content-ID carries ("image001.png@01D…", as Outlook writes it), else its place and type."""
    described = headers.raw_values(part, "Content-Description")
    description = headers.decode(described[0], walk.hint) if described else ""
    if description and len(description) <= 100:
        return display_name(description if _FILE_NAME.search(description) else description + extension)
    local = (content_id or "").split("@", 1)[0]
    if _FILE_NAME.search(local):
        return display_name(local)
    return f"attachment-{len(walk.attachments) + 1}{extension}"


def _extension(kind: str) -> str:
    known = {"image/jpeg": ".jpg", "image/jpg": ".jpg", "text/plain": ".txt", "video/quicktime": ".mov",
             "message/delivery-status": ".txt", "text/rfc822-headers": ".txt", "application/octet-stream": ".bin"}
    if kind in known:
        return known[kind]
    return mimetypes.guess_extension(kind) or (".txt" if kind.startswith(("text/", "message/")) else ".bin")


def display_name(name: str) -> str:
    """The sender's file name, for display only (content is stored under its sha256):
    control characters removed, NFC, at most 255 characters."""
    text = unicodedata.normalize("NFC", name).strip()
    text = "".join(c for c in text if unicodedata.category(c) != "Cc")
    return text[:255] or "attachment"


def _clean(text: str) -> str:
    # Trailing blanks stay: "-- " is the signature separator (RFC 3676).
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return text.strip("\n")
