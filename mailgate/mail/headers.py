"""Header fields → text: subjects, display names, addresses and file names decoded the way
mail from the wild needs (SPEC §4.2), and the Message-ID read off raw bytes that may not
parse at all.

Encoded words (RFC 2047) are decoded with the widened charsets of `charsets`, adjacent words
of one charset joined first (mailers split multi-byte characters across words); raw 8-bit
bytes without any encoding are decoded like undeclared body text, with the charset the
message declares elsewhere as the first guess. Every pattern is bounded in what it matches,
and nested comments are flattened before the address parser sees them (it recurses into
each level: `((((…))))` three thousand deep raised RecursionError).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import re
from email.message import Message

from mailgate.mail import charsets, refs

# Spaces inside the encoded text are not allowed, but mailers write them ("=?UTF-8?Q? Betreff?=").
_ENCODED_WORD = re.compile(rb"=\?([^?\s]{1,64})\?([bBqQ])\?([^?]{0,2000})\?=")
_GAP = re.compile(rb"[ \t\r\n]*")
_HINT_SCAN = 4096  # characters of a header looked at for a charset hint
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
_LINE_BREAKS = re.compile(r"[\r\n\t]")
MAX_ID_VALUE = 4096  # bytes of a Message-ID field (with its folds) that `message_id_of` reads
# Spelled out instead of re.I, so the engine looks for the newline first: 25 MB in ~0.2 s.
_MESSAGE_ID_FIELD = re.compile(rb"\n[Mm][Ee][Ss][Ss][Aa][Gg][Ee]-[Ii][Dd][ \t]*:")


def raw_values(msg: Message, name: str) -> list[str]:
    """A header's values as received (8-bit bytes as surrogate escapes)."""
    return [str(v) for k, v in msg.raw_items() if k.lower() == name.lower()]


def encoded_word_charset(msg: Message) -> str | None:
    """The first charset other than ASCII that an encoded word of the subject or an address
    header names: what the sender's software writes in, when no text part says so."""
    for name in ("Subject", "From", "To", "Cc"):
        for value in raw_values(msg, name):
            for match in _ENCODED_WORD.finditer(value[:_HINT_SCAN].encode("utf-8", "surrogateescape")):
                charset = match.group(1).split(b"*", 1)[0].decode("ascii", "replace")
                if charsets.codec_of(charset) not in (None, "ascii", "utf-8"):
                    return charset
    return None


def decode(value: str, hint: str | None = None, fold: bool = True) -> str:
    """A header value (as `raw_values` gives it) as one line of text; runs of white space
    folded into one unless FOLD is false (file names keep theirs)."""
    data = _as_bytes(_unfolded(value))
    pieces, position = [], 0
    for run_start, run_end, charset, payload in _encoded_runs(data):
        pieces.append(_plain(data[position:run_start], hint))
        pieces.append(charsets.decode_header_bytes(payload, charset))
        position = run_end
    pieces.append(_plain(data[position:], hint))
    text = "".join(pieces)
    return one_line(text) if fold else _LINE_BREAKS.sub(" ", text).strip()


def one_line(text: str) -> str:
    """Folded or malicious headers may carry CR/LF or NULs; a header is one line of text."""
    return " ".join(text.replace("\x00", " ").split())


def params(msg: Message, name: str) -> dict[str, str | tuple[str, str, str]]:
    """The parameters of header NAME as received: a value is text (8-bit bytes as surrogate
    escapes), or (charset, language, text) for RFC 2231 — read off the raw value, because
    the email package replaces 8-bit bytes before it parses parameters."""
    values = raw_values(msg, name)
    if not values:
        return {}
    parts = _split_params(_unfolded(values[0]))
    pairs = [(parts[0].strip(), "")]
    pairs += [(k.strip().lower(), v.strip()) for k, _, v in (p.partition("=") for p in parts[1:]) if k.strip()]
    try:
        decoded = email.utils.decode_params(pairs)[1:]
    except Exception:  # a broken continuation: the parameters as they are
        decoded = pairs[1:]
    return {k: (v[0], v[1], email.utils.unquote(v[2])) if isinstance(v, tuple) else email.utils.unquote(v)
            for k, v in decoded}


def _split_params(value: str) -> list[str]:
    """VALUE split at the semicolons outside quoted strings. Linear."""
    parts, current, quoted, escaped = [], [], False, False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def first_address(values: list[str], hint: str | None = None) -> tuple[str, str | None]:
    """(display name, lower-case address) of the first address in VALUES."""
    for name, address in _pairs(values, hint):
        if "@" in address:
            return decode(name, hint), address.strip().lower()
    return "", None


def addresses(values: list[str], hint: str | None = None) -> list[str]:
    return [address.strip().lower() for _, address in _pairs(values, hint) if "@" in address]


def message_id_of(raw: bytes) -> str | None:
    """The Message-ID of RAW from a plain scan of its header block, for a message that may
    not parse at all; None when there is none. Never raises. The whole header block is
    searched (one pass of a regular expression, linear: 20 MB in milliseconds), so a
    Message-ID below a header field of hundreds of kilobytes — the very message a limit
    quarantines — is still found."""
    try:
        end = _header_block_end(raw)
        if raw[:10].lower() == b"message-id":  # the first field: give it the newline the others have
            raw, end = b"\n" + raw[:end], end + 1
        for match in _MESSAGE_ID_FIELD.finditer(raw, 0, end):
            value = raw[match.end():min(match.end() + MAX_ID_VALUE, end)]
            value = re.split(rb"\r?\n(?![ \t])", value, maxsplit=1)[0]  # the field with its folds
            ids = refs.message_ids(value.decode("ascii", "replace"))
            return ids[0][:998] if ids else None
    except Exception:  # the point of this function is to answer for bytes nothing else reads
        return None
    return None


def _header_block_end(raw: bytes) -> int:
    ends = [i for i in (raw.find(b"\n\n"), raw.find(b"\n\r\n")) if i >= 0]
    return min(ends) if ends else len(raw)
    return None


def _as_bytes(value: str) -> bytes:
    """The bytes a header value was received as (8-bit bytes come as surrogate escapes)."""
    try:
        return value.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:  # text that was already decoded somewhere
        return value.encode("utf-8", "surrogateescape")


def _unfolded(value: str) -> str:
    return value.replace("\r", "").replace("\n", "")


def _encoded_runs(data: bytes):
    """(start, end, charset, decoded bytes) of each run of encoded words of one charset that
    only white space separates (RFC 2047 §6.2: that space is not part of the text)."""
    run = None
    for match in _ENCODED_WORD.finditer(data):
        charset = match.group(1).split(b"*", 1)[0].decode("ascii", "replace")  # RFC 2231 language
        payload = _word_bytes(match.group(2), match.group(3))
        joined = run is not None and run[2] == charset and _GAP.fullmatch(data, run[1], match.start())
        if joined:
            run = (run[0], match.end(), charset, run[3] + payload)
            continue
        if run is not None:
            yield run
        run = (match.start(), match.end(), charset, payload)
    if run is not None:
        yield run


def _word_bytes(encoding: bytes, text: bytes) -> bytes:
    if encoding in b"bB":
        clean = re.sub(rb"[^A-Za-z0-9+/]", b"", text)
        clean = clean[: len(clean) - (len(clean) % 4 == 1)]
        try:
            return base64.b64decode(clean + b"=" * (-len(clean) % 4))
        except (binascii.Error, ValueError):
            return text
    return _QP_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), text.replace(b"_", b" "))


def _plain(data: bytes, hint: str | None) -> str:
    """Text between encoded words: ASCII, or raw 8-bit bytes in whatever charset the sender's
    software used (the message's declared charset first)."""
    if data.isascii():
        return data.decode("ascii")
    return charsets.decode_header_bytes(data, hint)


def _pairs(values: list[str], hint: str | None) -> list[tuple[str, str]]:
    """(name, address) pairs of address headers: raw 8-bit bytes decoded and nested comments
    flattened first; encoded words in the names left for `decode`."""
    pairs = email.utils.getaddresses([_flat_comments(_eight_bit(str(v), hint)) for v in values])
    return [_unbracketed(name, address) for name, address in pairs]


def _unbracketed(name: str, address: str) -> tuple[str, str]:
    """`Max Mustermann max@example.com`, without the angle brackets (fax and scanner
    gateways, home-made scripts; Zammad's mail087): the parser takes all of it for the
    address. The one word with an "@" is the address, the words before it the name."""
    words = address.split()
    if name or len(words) < 2 or sum("@" in w for w in words) != 1 or "@" not in words[-1]:
        return name, address
    return " ".join(words[:-1]), words[-1]


def _eight_bit(value: str, hint: str | None) -> str:
    if not any("\udc80" <= c <= "\udcff" for c in value):
        return value
    return charsets.decode_header_bytes(value.encode("ascii", "surrogateescape"), hint)


def _flat_comments(value: str) -> str:
    """VALUE with comments nested inside comments removed (the outer comment may be a display
    name: "a@example.com (Alice)"); quoted strings left alone. Linear."""
    out, depth, quoted, escaped = [], 0, False, False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"' and depth == 0:
            quoted = not quoted
        elif char == "(" and not quoted:
            depth += 1
            if depth > 1:
                continue
        elif char == ")" and not quoted and depth > 0:
            depth -= 1
            if depth > 0:
                continue
        if depth <= 1:
            out.append(char)
    return "".join(out) + ")" * (depth > 0)
