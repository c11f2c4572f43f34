"""Bytes → the text the sender wrote, whatever the charset declaration says (SPEC §4.2).

Mail from the wild declares charsets that are too narrow (gb2312 for GBK text, ks_c_5601
for cp949, iso-8859-1 for Windows-1252, ISO-2022-JP with NEC's extra characters), declares
none at all, or declares one that is wrong. So a declaration is trusted only when the bytes
decode under it (after widening it to the superset mailers really use), valid UTF-8 beats a
single-byte declaration, and the rest is left to charset-normalizer, which sees a bounded
sample so that detection costs the same for a 20 MB part as for a 20 KB one.
"""

from __future__ import annotations

import codecs
import logging
import re
import unicodedata

import charset_normalizer
from charset_normalizer.md import mess_ratio

from mailgate.mail import jis

log = logging.getLogger(__name__)

# Detection reads at most this much: its cost grows with the input, its accuracy does not.
DETECTION_SAMPLE = 32 * 1024
MESS_SAMPLE = 8 * 1024  # characters judged for mojibake

# Declarations that name a subset of what the sender's software really wrote.
_WIDER = {
    "gb2312": "gb18030", "gbk": "gb18030", "cp936": "gb18030", "euc-cn": "gb18030",
    "x-gbk": "gb18030", "chinese": "gb18030", "csgb2312": "gb18030", "gb_2312-80": "gb18030",
    "ks_c_5601-1987": "cp949", "ks_c_5601": "cp949", "ksc5601": "cp949", "euc-kr": "cp949",
    "korean": "cp949", "ks_c_5601-1989": "cp949",
    "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932",
    "ms_kanji": "cp932", "windows-31j": "cp932",
    "euc-jp": "euc_jis_2004", "x-euc-jp": "euc_jis_2004",
    "big5": "big5hkscs", "x-big5": "big5hkscs", "cn-big5": "big5hkscs",
    "iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "iso8859-1": "cp1252",
    "iso-8859-9": "cp1254", "iso-8859-11": "cp874", "tis-620": "cp874", "windows-874": "cp874",
    "iso-8859-8-i": "iso-8859-8", "iso-8859-6-i": "iso-8859-6",
    "unicode-1-1-utf-7": "utf-7", "x-unicode-2-0-utf-7": "utf-7",
    "utf8": "utf-8", "x-utf-8": "utf-8",
}
# Declarations that mean "I don't know": treated as no declaration.
_UNKNOWN = {"", "us-ascii", "ascii", "unknown", "unknown-8bit", "x-unknown", "default", "charset", "none", "8bit"}
_ISO_2022_JP = {"iso-2022-jp", "csiso2022jp", "iso2022jp", "iso-2022-jp-1", "iso-2022-jp-2", "iso-2022-jp-3"}


def decode(data: bytes, declared: str | None = None, hint: str | None = None) -> str:
    """DATA as text: the declared charset when it decodes, else the most likely one. HINT is
    the charset the rest of the message is in: taken like a declaration for a part that
    declares none (or one nobody knows)."""
    if hint and codec_of(declared) is None and _normalise(declared) not in _ISO_2022_JP:
        declared = hint
    name = _normalise(declared)
    if name in _ISO_2022_JP:
        return jis.decode_iso2022jp(data)
    codec = codec_of(name)
    if data.isascii() and codec != "utf-7":
        return data.decode("ascii")
    if codec is not None and _is_single_byte(codec):
        return _single_byte(data, codec)
    for candidate in (codec, "utf-8"):
        if candidate is not None:
            try:
                return data.decode(candidate)
            except (UnicodeDecodeError, LookupError):
                continue
    if _mostly_utf8(data):
        return _mixed(data)
    return data.decode(detect(data) or codec or "cp1252", "replace")


def _single_byte(data: bytes, codec: str) -> str:
    """A single-byte declaration decodes any bytes, so it is believed only when the text it
    gives reads like text: valid UTF-8 is UTF-8, and mojibake ("×ª·¢£º" for GBK read as
    Latin-1) yields to what detection finds."""
    if _is_utf8(data):
        return data.decode("utf-8")
    if _mostly_utf8(data):
        return _mixed(data, codec)
    text = data.decode(codec, "replace")
    declared_mess = mess_ratio(text[:MESS_SAMPLE], 1.0)
    if declared_mess < 0.5:
        return text
    detected = detect(data)
    if detected in (None, codec):
        return text
    other = data.decode(detected, "replace")
    return other if mess_ratio(other[:MESS_SAMPLE], 1.0) < declared_mess / 3 else text


def codec_of(declared: str | None) -> str | None:
    """The Python codec for a declaration, widened; None when unknown or meaningless."""
    name = _normalise(declared)
    if name in _UNKNOWN:
        return None
    for candidate in (_WIDER.get(name, name), name.replace("-", ""), name.replace("_", "-")):
        try:
            return codecs.lookup(_WIDER.get(candidate, candidate)).name
        except LookupError:
            continue
    return None


def detect(data: bytes) -> str | None:
    """The most likely charset of DATA, judged on a bounded sample.

    On a short text (a file name, a subject) several charsets decode it equally cleanly;
    then the one more mail is written in wins (`_LIKELY`, most likely first).
    """
    sample = data[:DETECTION_SAMPLE]
    matches = _matches(sample, _candidates(sample)) or _matches(sample, list(_LIKELY))
    if not matches:
        return None
    least = min(m.chaos for m in matches)
    tied = {name for m in matches if m.chaos <= least + 0.01 for name in m.could_be_from_charset}
    return codec_of(min(tied, key=lambda name: _LIKELY.get(name, len(_LIKELY))))


def _matches(sample: bytes, candidates: list[str]) -> list:
    try:
        return list(charset_normalizer.from_bytes(sample, cp_isolation=candidates))
    except Exception:  # detection is a guess; a failing guess is no guess
        log.debug("charset detection failed", exc_info=True)
        return []


def _candidates(sample: bytes) -> list[str]:
    """The charsets worth trying on SAMPLE. Latin-script text in a single-byte charset has
    its 8-bit bytes alone between ASCII letters ("Gr\xfc\xdfe"); CJK double-byte text and
    Cyrillic or Greek words have them in runs. On a short sample that tells more than
    detection, which finds every charset equally clean there."""
    runs = [len(run) for run in _HIGH_RUNS.findall(sample)]
    alone = sum(1 for n in runs if n == 1) / len(runs) if runs else 1.0
    if alone >= 0.9:
        return [name for name in _LIKELY if name in _LATIN or name == "utf_8"]
    if alone < 0.5:
        return [name for name in _LIKELY if name not in _LATIN]
    return list(_LIKELY)


_HIGH_RUNS = re.compile(rb"[\x80-\xff]+")
_LATIN = {"cp1252", "cp1250", "iso8859_2", "cp1254", "cp1257", "cp1258", "mac_roman", "cp850"}


# The charsets detection chooses from, in the order mail is most often written in them.
_LIKELY = {name: rank for rank, name in enumerate((
    "utf_8", "cp1252", "gb18030", "cp932", "euc_jis_2004", "cp949", "big5hkscs", "koi8_r",
    "cp1251", "cp1250", "iso8859_2", "cp1253", "cp1254", "cp1257", "cp1255", "cp1256",
    "cp874", "cp1258", "koi8_u", "iso8859_5", "iso8859_7", "mac_roman", "cp866", "cp850",
))}


def decode_header_bytes(data: bytes, declared: str | None = None) -> str:
    """Like `decode`, for a header word or a raw 8-bit header (names, subjects), NFC-normalised
    so a Mac's decomposed "é" and a PC's precomposed one read the same."""
    return unicodedata.normalize("NFC", decode(data, declared))


def unsurrogate(text: str) -> str:
    """A header as the email package hands it over: raw 8-bit bytes (no RFC 2047) arrive as
    surrogate escapes; decode them like any undeclared 8-bit text."""
    if not any("\udc80" <= c <= "\udcff" for c in text):
        return text
    return decode_header_bytes(text.encode("utf-8", "surrogateescape"))


def _normalise(declared: str | None) -> str:
    return (declared or "").strip().strip("\"'").strip().lower()


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# A well-formed multi-byte UTF-8 sequence (RFC 3629's table: no overlongs, no surrogates).
_UTF8_SEQUENCE = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}"
    rb"|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}"
    rb"|\xf4[\x80-\x8f][\x80-\xbf]{2}")
_ESCAPED = re.compile("[\udc80-\udcff]+")  # bytes that were not UTF-8, as surrogate escapes
MIXED_MAX = 1024 * 1024


def _mostly_utf8(data: bytes) -> bool:
    """Whether DATA is UTF-8 with a few pieces in a single-byte charset: a Latin-1 footer
    under a UTF-8 body, text pasted from a legacy program. Most of its 8-bit bytes belong to
    well-formed UTF-8 sequences — which Latin-1 text almost never has ("Ã" followed by a
    control character), and double-byte CJK text has for only a small share of its bytes.
    Only a part of text's usual size is read so (`MIXED_MAX`): beyond it, detection decides."""
    if len(data) > MIXED_MAX:
        return False
    high = sum(len(run) for run in _HIGH_RUNS.findall(data))
    in_sequences = sum(len(m) for m in _UTF8_SEQUENCE.findall(data))
    return high > 0 and in_sequences >= 2 and in_sequences >= 0.6 * high


def _mixed(data: bytes, single_byte: str = "cp1252") -> str:
    """DATA as UTF-8, each byte that is not part of a UTF-8 sequence read in SINGLE_BYTE."""
    table = {0xDC00 + b: bytes((b,)).decode(single_byte, "replace") for b in range(0x80, 0x100)}
    return _ESCAPED.sub(lambda m: m.group().translate(table), data.decode("utf-8", "surrogateescape"))


def _is_single_byte(codec: str) -> bool:
    return codec.startswith(("cp125", "iso8859", "latin", "koi8", "mac-", "cp874", "cp437", "cp85", "cp86"))
