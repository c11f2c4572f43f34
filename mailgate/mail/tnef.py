"""The files inside an Outlook `winmail.dat` (TNEF), unpacked by tnefparse within bounds.

tnefparse believes the counts it reads: a 21-byte winmail.dat whose property block claims
0xFFFFFFFF properties makes it loop four billion times, logging a warning each time; a
multi-valued property may claim as many values, and every object copies the rest of the
data. So before tnefparse sees the bytes, `check` walks the same structures and verifies
every count and length against the bytes present (each property, value and row must fit in
what is left), bounds embedded messages and the total copying; only a consistent file is
handed over, and tnefparse's logger is held at ERROR so a broken file cannot flood the log.
"""

from __future__ import annotations

import logging
import struct

from tnefparse import TNEF

logging.getLogger("tnefparse").setLevel(logging.ERROR)

_SIGNATURE = 0x223E9F78
_ATTACHMENT_LEVEL = 0x02
_MAPI_PROPS, _RECIPIENTS, _ATTACHMENT = 0x9003, 0x9004, 0x9005
_ATTACH_DATA_OBJECT = 0x3701
_EMBEDDED = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"
_FIXED_SIZE = {0x0002: 2, 0x000B: 2, 0x0003: 4, 0x0004: 4, 0x000A: 4, 0x0005: 8, 0x0006: 8,
               0x0007: 8, 0x0014: 8, 0x0040: 8, 0x0048: 16}
_VARIABLE = {0x0000, 0x000D, 0x001E, 0x001F, 0x0102}
_MULTI_VALUE, _NAMED = 0x1000, 0x8000

MAX_EMBEDDED_DEPTH = 3
MAX_OBJECTS = 10_000
MAX_COPY_FACTOR = 64  # tnefparse copies the rest of the data for every object


class InvalidTnef(Exception):
    """The TNEF data claims more than it holds, or is nested or fragmented beyond reason."""


def unpack(data: bytes) -> list[tuple[str, bytes]]:
    """(file name, content) of each file in DATA; raises InvalidTnef or tnefparse's errors."""
    check(data)
    return [(_name(a), bytes(a.data or b"")) for a in TNEF(data).attachments]


def check(data: bytes, depth: int = 0) -> None:
    if depth > MAX_EMBEDDED_DEPTH:
        raise InvalidTnef("embedded messages nested too deep")
    if len(data) < 6 or _u32(data, 0) != _SIGNATURE:
        raise InvalidTnef("not TNEF")
    offset, objects, copied = 6, 0, 0
    while offset + 12 < len(data):  # tnefparse's loop condition
        objects += 1
        copied += len(data) - offset
        if objects > MAX_OBJECTS or copied > MAX_COPY_FACTOR * len(data) + (1 << 20):
            raise InvalidTnef("too many objects")
        level, name = data[offset], _u16(data, offset + 1)
        length = min(len(data) - offset, _u32(data, offset + 5) + 11)
        body = data[offset + 9: offset + length - 2]
        _check_object(level, name, body, depth)
        offset += length


def _check_object(level: int, name: int, body: bytes, depth: int) -> None:
    if level == _ATTACHMENT_LEVEL:
        if name == _ATTACHMENT:
            _Properties(body, depth).block()
    elif name == _MAPI_PROPS:
        _Properties(body, depth).block()
    elif name == _RECIPIENTS:
        reader = _Properties(body, depth)
        rows = reader.count(4)
        for _ in range(rows):
            reader.block()


class _Properties:
    """A cursor over MAPI property blocks that fails as soon as a claim exceeds the bytes."""

    def __init__(self, data: bytes, depth: int):
        self.data, self.offset, self.depth = data, 0, depth

    def need(self, size: int) -> int:
        if size < 0 or self.offset + size > len(self.data):
            raise InvalidTnef("a length beyond the data")
        start = self.offset
        self.offset += size
        return start

    def u32(self) -> int:
        return _u32(self.data, self.need(4))

    def count(self, least_size: int) -> int:
        """A count of items of at least LEAST_SIZE bytes each, checked against what is left."""
        value = self.u32()
        if value * least_size > len(self.data) - self.offset:
            raise InvalidTnef(f"a count of {value} in {len(self.data) - self.offset} bytes")
        return value

    def block(self) -> None:
        for _ in range(self.count(4)):
            if not self.property():
                return  # a type tnefparse does not know: it stops reading the block there too

    def property(self) -> bool:
        kind, name = struct.unpack_from("<HH", self.data, self.need(4))
        if name >= _NAMED:
            self.need(16)
            if self.u32() == 0:
                self.need(4)
            else:
                self.need(_padded(self.u32()))
        values = None
        if kind & _MULTI_VALUE:
            kind ^= _MULTI_VALUE
            values = self.count(2)
        if kind in _FIXED_SIZE:
            self.need(_FIXED_SIZE[kind] * (values or 1))
        elif kind in _VARIABLE:
            self._variable(name, values)
        else:
            return False
        if (values or 1) % 2 and kind in (0x0002, 0x000B):
            self.offset += 2  # tnefparse skips the padding of an odd count of 16-bit values
        return True

    def _variable(self, name: int, values: int | None) -> None:
        for _ in range(values or 1):
            items = 1 if values else self.count(4)
            for _ in range(items):
                start = self.need(_padded(self.u32()))
                if name == _ATTACH_DATA_OBJECT and self.data.startswith(_EMBEDDED, start):
                    check(self.data[start + len(_EMBEDDED): self.offset], self.depth + 1)


def _padded(length: int) -> int:
    return length + (-length % 4)


def _u16(data: bytes, offset: int) -> int:
    return struct.unpack_from("<H", data, offset)[0] if offset + 2 <= len(data) else 0


def _u32(data: bytes, offset: int) -> int:
    return struct.unpack_from("<I", data, offset)[0] if offset + 4 <= len(data) else 0


def _name(attachment) -> str:
    name = attachment.long_filename() or attachment.name or "attachment"
    return name.decode("latin-1") if isinstance(name, bytes) else str(name)
