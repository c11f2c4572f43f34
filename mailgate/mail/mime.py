"""Raw bytes → the MIME tree, in time linear in the size and with depth and parts counted
while splitting, before any part is copied.

The tree is the one the standard library's parser builds (compat32 `Message` objects: the
rest of mailgate, bounce matching included, reads it as before), but the splitting is ours:
the standard parser checks every line against every open boundary, so a mail of nested
multiparts costs size × depth in Python (a 650 KB mail nested 300 deep took 3.6 s), and it
re-serialises attached messages instead of keeping their bytes. Here each multipart body is
cut at its own boundary lines with `bytes.find`, headers are parsed per part by the standard
header parser, and the bytes of every attached message are kept exactly as received.
"""

from __future__ import annotations

import binascii
import email.policy
import quopri
import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser


class StructureLimit(Exception):
    """The MIME structure is deeper or has more parts than a message may have."""


@dataclass(frozen=True)
class StructureLimits:
    max_depth: int = 30
    max_parts: int = 2000
    max_part_header_bytes: int = 256 * 1024  # a part's header block (the top level has its own limits)


@dataclass
class Tree:
    message: Message
    # id() of each message/rfc822 part → the attached message's bytes, as received
    originals: dict[int, bytes] = field(default_factory=dict)

    def original(self, part: Message) -> bytes | None:
        return self.originals.get(id(part))


# A header line as the standard parser sees one (email.feedparser.headerRE).
_HEADER_LINE = re.compile(rb"(From |[\041-\071\073-\176]*:|[\t ])")
_FIELD = re.compile(rb"[A-Za-z][A-Za-z0-9-]{0,75}:[ \t]")
_FIELD_ANYWHERE = re.compile(rb"^[A-Za-z][A-Za-z0-9-]{0,75}:[ \t]", re.M)
_ATTACHED_MESSAGES = ("message/rfc822", "message/global")


def parse(raw: bytes, limits: StructureLimits = StructureLimits()) -> Tree:
    tree = Tree(Message())
    builder = _Builder(raw, limits, tree)
    tree.message = builder.entity(0, len(raw), depth=0)
    return tree


class _Builder:
    def __init__(self, raw: bytes, limits: StructureLimits, tree: Tree):
        self.raw, self.limits, self.tree, self.parts = raw, limits, tree, 0

    def entity(self, start: int, end: int, depth: int, data: bytes | None = None) -> Message:
        """The entity in DATA[START:END] (DATA: the raw message unless given)."""
        data = self.raw if data is None else data
        self._count(depth)
        unixfrom = None
        if depth == 0 and data.startswith(b"From ", start):  # an mbox separator line
            unixfrom, start = _line(data, start, end)
        head, body_start = _header_block(data, start, end)
        if len(head) > self.limits.max_part_header_bytes:
            raise StructureLimit(f"limit: a header block of {len(head)} bytes (at most {self.limits.max_part_header_bytes})")
        msg = BytesHeaderParser(_class=Leaf, policy=email.policy.compat32).parsebytes(head)
        if unixfrom is not None:
            msg.set_unixfrom(data[unixfrom[0]:unixfrom[1]].decode("ascii", "surrogateescape").rstrip("\r\n"))
        kind = msg.get_content_type()
        boundary = msg.get_boundary() if msg.get_content_maintype() == "multipart" else None
        if boundary and self._multipart(msg, data, body_start, end, boundary, depth):
            return msg
        if kind in _ATTACHED_MESSAGES:
            self._attached(msg, data, body_start, end, depth)
            return msg
        msg.keep_span(data, body_start, end)  # its text is made only when someone reads it
        return msg

    def _count(self, depth: int) -> None:
        self.parts += 1
        if depth > self.limits.max_depth:
            raise StructureLimit(f"limit: MIME parts nested more than {self.limits.max_depth} deep")
        if self.parts > self.limits.max_parts:
            raise StructureLimit(f"limit: more than {self.limits.max_parts} MIME parts")

    def _multipart(self, msg: Message, data: bytes, start: int, end: int, boundary: str, depth: int) -> bool:
        """Split a multipart body at its boundary; False when the boundary never appears
        (then the body is kept as text, as the standard parser does) or only closes a
        multipart that has no part (its opening delimiters were mangled: the text is all
        the sender's words there are)."""
        marker = b"--" + boundary.encode("ascii", "surrogateescape")
        delimiters = list(_delimiters(data, marker, start, end))
        if not delimiters or delimiters[0][2]:
            return False
        msg.preamble = _text(data, start, _before_newline(data, start, delimiters[0][0])) or None
        parts = []
        for (_, part_start, close), following in zip(delimiters, [*delimiters[1:], None]):
            if close:
                msg.epilogue = _text(data, part_start, end) or None
                break
            part_end = _before_newline(data, part_start, following[0]) if following else end
            parts.append(self.entity(part_start, part_end, depth + 1, data))
        msg.set_payload(parts)
        return True

    def _attached(self, msg: Message, data: bytes, start: int, end: int, depth: int) -> None:
        """An attached message: its bytes kept as received (decoded if a mailer encoded it,
        which RFC 2046 forbids but happens), its headers and parts parsed for the readers
        of the tree (bounce matching reads the Message-ID inside)."""
        original = _transfer_decoded(msg, data[start:end])
        self.tree.originals[id(msg)] = original
        msg.set_payload([self.entity(0, len(original), depth + 1, original)])


class Leaf(Message):
    """A part as the standard parser makes it, whose body stays a span of the raw bytes until
    it is read as text (`get_payload`): an attachment is decoded straight from the raw bytes
    (`transfer_decoded`), so a 25 MB attachment is never also held as 34 MB of text."""

    span: tuple[bytes, int, int] | None = None

    def keep_span(self, data: bytes, start: int, end: int) -> None:
        self._payload, self.span = None, (data, start, end)

    def get_payload(self, i=None, decode=False):
        if self.span is not None and self._payload is None:
            self._payload = _text(*self.span)
        return super().get_payload(i, decode)

    def set_payload(self, payload, charset=None):
        self.span = None
        super().set_payload(payload, charset)

    def encoded_size(self) -> int:
        """The length of the body as it stands in the message (what `get_payload` gives)."""
        if self.span is not None and self._payload is None:
            return self.span[2] - self.span[1]
        payload = self._payload
        return len(payload) if isinstance(payload, str) else 0

    def transfer_decoded(self) -> bytes:
        """The body with its transfer encoding undone, as `get_payload(decode=True)` gives it,
        decoded from the raw bytes without a copy when it has not been read as text."""
        if self.span is None or self._payload is not None:
            return self.get_payload(decode=True) or b""
        data, start, end = self.span
        view = memoryview(data)[start:end]
        encoding = str(self.get("content-transfer-encoding", "")).strip().lower()
        try:
            if encoding == "base64":
                return binascii.a2b_base64(view)
            if encoding == "quoted-printable":
                return binascii.a2b_qp(view)
        except (binascii.Error, ValueError):  # the email package's lenient ways, and their defects
            return self.get_payload(decode=True) or b""
        if encoding in _UUENCODED:
            return self.get_payload(decode=True) or b""
        return bytes(view)


_UUENCODED = ("x-uuencode", "uuencode", "uue", "x-uue")


def _line(data: bytes, start: int, end: int) -> tuple[tuple[int, int], int]:
    """(the line at START without its end, where the next line starts)."""
    newline = data.find(b"\n", start, end)
    stop = end if newline < 0 else newline + 1
    return (start, stop), stop


def _header_block(data: bytes, start: int, end: int) -> tuple[bytes, int]:
    """(the header lines, where the body starts). The body follows the first blank line.
    A line in the header block that is no header field is, as mail clients read it, the
    fold of a parameter list when the line before ends with ";", else junk that is dropped
    (a lost fold, a stray separator) — as long as header fields follow it before that blank
    line; without one after it, it is the start of a body that lacks the blank line (as the
    standard parser has it)."""
    lines, position, checked = [], start, False
    while position < end:
        (line_start, line_end), following = _line(data, position, end)
        line = data[line_start:line_end]
        if line.strip(b"\r\n") == b"":
            return b"".join(lines), following
        if _HEADER_LINE.match(line):
            lines.append(line)
            checked = checked and not _FIELD.match(line)
        elif checked or _field_follows(data, following, end):
            checked = True
            if lines and lines[-1].rstrip().endswith(b";"):
                lines.append(b" " + line)
        else:
            return b"".join(lines), line_start
        position = following
    return b"".join(lines), end


def _field_follows(data: bytes, start: int, end: int) -> bool:
    """Whether a header field comes before the next blank line (looked for in a bounded stretch)."""
    stop = min(end, start + 64 * 1024)
    blank = min((i for i in (data.find(b"\n\n", start, stop), data.find(b"\n\r\n", start, stop)) if i >= 0), default=stop)
    return _FIELD_ANYWHERE.search(data, start, blank) is not None


def _delimiters(data: bytes, marker: bytes, start: int, end: int):
    """(line start, next line start, is the close delimiter) of each delimiter line."""
    position = start
    while True:
        found = data.find(marker, position, end)
        if found < 0:
            return
        position = found + 1
        if found != start and data[found - 1] != 0x0A:
            continue  # not at the start of a line
        after = found + len(marker)
        close = data.startswith(b"--", after)
        (_, line_end), following = _line(data, after + 2 * close, end)
        if not close and data[after:line_end].strip():
            continue  # a longer boundary that begins with ours
        yield found, following, close
        if close:
            return
        position = following


def _before_newline(data: bytes, start: int, delimiter: int) -> int:
    """Where a part ends: the line end before its delimiter belongs to the delimiter."""
    stop = delimiter
    if stop > start and data[stop - 1] == 0x0A:
        stop -= 1
        if stop > start and data[stop - 1] == 0x0D:
            stop -= 1
    return stop


def _text(data: bytes, start: int, end: int) -> str:
    """A body as the standard parser keeps it: bytes as text, 8-bit bytes as surrogate escapes."""
    return data[start:end].decode("ascii", "surrogateescape")


def _transfer_decoded(msg: Message, body: bytes) -> bytes:
    encoding = str(msg.get("Content-Transfer-Encoding", "") or "").strip().lower()
    try:
        if encoding == "base64":
            return binascii.a2b_base64(body)
        if encoding == "quoted-printable":
            return quopri.decodestring(body)
    except (binascii.Error, ValueError):
        pass
    return body
