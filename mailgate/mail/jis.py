"""ISO-2022-JP as Japanese mailers really write it (what Microsoft calls cp50220/cp50221).

Outlook and most Japanese clients put NEC's special characters (①, ㈱, Roman numerals) and
the IBM extensions inside ISO-2022-JP's JIS X 0208 segments, where the standard defines
nothing; Python's iso2022_jp codecs then fail or leave escape codes in the text. The
two-byte segments are EUC-JP less its high bit, and EUC's JIS X 0213 variant holds NEC's
characters; IBM's extensions are known to Windows' Shift_JIS (cp932) only, so a small
segment that needs them is re-coded to cp932 and decoded from there.
"""

from __future__ import annotations

import re

_ESC = re.compile(rb"\x1b(\$@|\$B|\$\(B|\$\(D|\(B|\(J|\(I|\$\(Q|\$\(O)")
_TWO_BYTE = (b"$@", b"$B", b"$(B", b"$(D", b"$(Q", b"$(O")
_TO_EUC = bytes(b + 0x80 if 0x21 <= b <= 0x7E else b for b in range(256))
_TO_KANA = bytes(b + 0x80 if 0x21 <= b <= 0x5F else b for b in range(256))
MAX_CP932_SEGMENT = 256 * 1024  # re-coded byte by byte in Python: kept small


def decode_iso2022jp(data: bytes) -> str:
    """DATA (ISO-2022-JP, possibly with the Microsoft extensions) as text."""
    try:
        return data.decode("iso2022_jp")
    except UnicodeDecodeError:
        pass
    out, mode, position = [], b"(B", 0
    for match in _ESC.finditer(data):
        out.append(_segment(data[position:match.start()], mode))
        mode, position = match.group(1), match.end()
    out.append(_segment(data[position:], mode))
    return "".join(out)


def _segment(chunk: bytes, mode: bytes) -> str:
    if mode in _TWO_BYTE:
        # JIS X 0208 pairs are EUC-JP pairs less 0x80 each, and EUC's JIS X 0213 holds NEC's
        # row 13 (①, ㈱, Ⅳ) where NEC put it: one translate, decoded in C. Only IBM's
        # extensions are missing there; a small segment that needs them goes through cp932.
        text = chunk.translate(_TO_EUC).decode("euc_jis_2004", "replace")
        if "\ufffd" in text and len(chunk) <= MAX_CP932_SEGMENT:
            return _to_sjis(chunk).decode("cp932", "replace")
        return text
    if mode == b"(I":  # JIS X 0201 half-width katakana: 0x21–0x5F are 0xA1–0xDF in Shift_JIS
        return chunk.translate(_TO_KANA).decode("cp932", "replace")
    return chunk.decode("cp932", "replace")  # ASCII / JIS-Roman; stray 8-bit bytes as Windows does


def _to_sjis(chunk: bytes) -> bytes:
    """JIS X 0208 byte pairs → Shift_JIS pairs; line ends and stray bytes pass through."""
    out = bytearray()
    i = 0
    while i < len(chunk):
        j1 = chunk[i]
        if 0x21 <= j1 <= 0x7E and i + 1 < len(chunk) and 0x21 <= chunk[i + 1] <= 0x7E:
            out += _pair(j1, chunk[i + 1])
            i += 2
        else:
            out.append(j1)
            i += 1
    return bytes(out)


def _pair(j1: int, j2: int) -> bytes:
    s1 = (j1 + 1) // 2 + (0x70 if j1 <= 0x5E else 0xB0)
    if j1 % 2:
        s2 = j2 + (0x1F if j2 <= 0x5F else 0x20)
    else:
        s2 = j2 + 0x7E
    return bytes((s1, s2))
