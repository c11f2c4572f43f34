"""Generators of hostile mail (issue 13): shapes that made parsers loop, recurse, backtrack or
copy without bound. Each takes a size N and returns raw bytes; tests/unit/test_hostile.py runs
them small with measured budgets, bench/hostile.py runs them big and many.
"""

from __future__ import annotations

import base64
import struct

FROM = b"From: Alice Adams <alice@acme.example>\r\nTo: support@example.com\r\n"


def _mail(subject: bytes, body: bytes, headers: bytes = b"", content_type: bytes = b"text/plain; charset=utf-8") -> bytes:
    return (FROM + b"Subject: " + subject + b"\r\nMessage-ID: <hostile-" + str(len(body)).encode()
            + b"@acme.example>\r\n" + headers + b"MIME-Version: 1.0\r\nContent-Type: " + content_type + b"\r\n\r\n" + body)


def newlines(n: int) -> bytes:
    """`x`, N CR LF, `x`: quadratic in the quote library's expressions."""
    return _mail(b"Re: [SD-1] newlines", b"x" + b"\r\n" * n + b"x")


def spaces(n: int) -> bytes:
    return _mail(b"Re: [SD-1] spaces", b"x" + b" " * n + b"\r\n" + b" \r\n" * n + b"x")


def quote_markers(n: int) -> bytes:
    """Runs of `>` and `> ` lines, one line of N markers, and attributions between them."""
    body = b">" * n + b"\r\n" + b"> \r\n" * n + b"On Mon wrote:\r\n>\r\n" * (n // 20) + b"new text\r\n"
    return _mail(b"Re: [SD-1] quotes", body)


def wrote_lines(n: int) -> bytes:
    """Lines that all look like the start of a reply header, in several languages."""
    line = b"On Mon, 3 Mar 2025 Le a \xc3\xa9crit Am schrieb wrote wrote wrote\r\n"
    return _mail(b"Re: [SD-1] wrote", line * n)


def header_fields(n: int) -> bytes:
    """Lines that all look like Outlook header fields."""
    return _mail(b"Re: [SD-1] fields", b"From: a\r\nSent: b\r\nTo: c\r\n*From:* d\r\n" * n)


def deep_nesting(n: int) -> bytes:
    """Multiparts nested N deep (the standard parser costs size x depth)."""
    body = b"Content-Type: text/plain\r\n\r\ninnermost\r\n"
    for i in range(n):
        boundary = b"d%d" % i
        body = (b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n--' + boundary + b"\r\n"
                + body + b"\r\n--" + boundary + b"--\r\n")
    return FROM + b"Subject: deep\r\nMessage-ID: <deep-%d@acme.example>\r\nMIME-Version: 1.0\r\n" % n + body


def nested_attachments(n: int, depth: int = 20) -> bytes:
    """Multiparts nested DEPTH deep, each marked as an attachment and carrying N bytes of
    base64 beside the next level (mail-parser serialised every level: 826 MB for 1.9 MB)."""
    blob = base64.encodebytes(b"\x00" * n)
    body = b"Content-Type: text/plain\r\n\r\nend\r\n"
    for i in range(depth):
        boundary = b"n%d" % i
        body = (b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n'
                b'Content-Disposition: attachment; filename="level%d.bin"\r\n\r\n' % i
                + b"--" + boundary + b"\r\n" + body + b"\r\n--" + boundary + b"\r\n"
                b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
                b'Content-Disposition: attachment; filename="part%d.bin"\r\n\r\n' % i + blob
                + b"\r\n--" + boundary + b"--\r\n")
    return FROM + b"Subject: nested attachments\r\nMessage-ID: <nested-%d@acme.example>\r\nMIME-Version: 1.0\r\n" % n + body


def many_parts(n: int) -> bytes:
    parts = b"".join(b"--p\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(n))
    return _mail(b"many parts", parts + b"--p--\r\n", content_type=b'multipart/mixed; boundary="p"')


def boundary_traps(n: int) -> bytes:
    """Lines that begin like the boundary but are not it."""
    body = b"--b\r\nContent-Type: text/plain\r\n\r\n" + b"--bb not the boundary\r\n" * n + b"--b--\r\n"
    return _mail(b"boundary traps", body, content_type=b'multipart/mixed; boundary="b"')


def deep_comments(n: int) -> bytes:
    """`To: support@…, ((((…))))`: the address parser recursed into each level."""
    return (b"From: Alice Adams <alice@acme.example>\r\nTo: support@example.com, " + b"(" * n + b")" * n
            + b"\r\nSubject: comments\r\nMessage-ID: <comments@acme.example>\r\n\r\nbody\r\n")


def encoded_words(n: int) -> bytes:
    return _mail(b"=?utf-8?q?a?= " * n, b"body\r\n")


def huge_html(n: int) -> bytes:
    """An HTML-only table of N rows (4 MB cost 555 MB and 10.7 s in the converter)."""
    rows = b"".join(b"<tr><td>cell %d</td><td>value</td></tr>" % i for i in range(n))
    return _mail(b"table", b"<html><body><table>" + rows + b"</table></body></html>", content_type=b"text/html; charset=utf-8")


def broken_html(n: int) -> bytes:
    return _mail(b"broken html", b"<" * n + b"<!--" * (n // 4) + b"<script>" * (n // 8) + b"<div>" * (n // 5),
                 content_type=b"text/html; charset=utf-8")


def _tnef_mail(tnef: bytes) -> bytes:
    return _mail(b"winmail", b"--t\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n--t\r\n"
                 b"Content-Type: application/ms-tnef; name=\"winmail.dat\"\r\nContent-Transfer-Encoding: base64\r\n"
                 b"Content-Disposition: attachment; filename=\"winmail.dat\"\r\n\r\n" + base64.encodebytes(tnef)
                 + b"\r\n--t--\r\n", content_type=b'multipart/mixed; boundary="t"')


def _tnef(level: int, name: int, data: bytes) -> bytes:
    return (struct.pack("<IH", 0x223E9F78, 0) + bytes([level]) + struct.pack("<HHI", name, 6, len(data)) + data
            + b"\x00\x00")


def tnef_property_count(_: int = 0) -> bytes:
    """The 21-byte winmail.dat that claims 0xFFFFFFFF properties."""
    return _tnef_mail(_tnef(1, 0x9003, b"\xff\xff\xff\xff"))


def tnef_value_count(_: int = 0) -> bytes:
    """One multi-valued 16-bit property that claims 0xFFFFFFFF values."""
    return _tnef_mail(_tnef(1, 0x9003, struct.pack("<IHHI", 1, 0x1002, 0x0001, 0xFFFFFFFF)))


def tnef_rows(_: int = 0) -> bytes:
    """A recipient table that claims 0xFFFFFFFF rows."""
    return _tnef_mail(_tnef(1, 0x9004, b"\xff\xff\xff\xff"))


def tnef_objects(n: int) -> bytes:
    """N tiny objects: tnefparse copies the rest of the data for each."""
    body = struct.pack("<IH", 0x223E9F78, 0) + (bytes([1]) + struct.pack("<HHI", 0x8008, 7, 1) + b"x\x00\x00") * n
    return _tnef_mail(body)


def iso2022jp_junk(n: int) -> bytes:
    """A part declared ISO-2022-JP whose two-byte segment no codec takes (a byte-by-byte
    re-coding would cost Python time per byte)."""
    return _mail(b"jis", b"\x1b$B" + b"\x7f\x21\x2d\x21" * n + b"\x1b(B", content_type=b"text/plain; charset=ISO-2022-JP")


def part_header(n: int) -> bytes:
    """A part whose header block is N bytes (the top-level header limits do not reach it)."""
    body = b"--h\r\nContent-Type: text/plain\r\nX-Filler: " + b"a" * n + b"\r\n\r\ntext\r\n--h--\r\n"
    return _mail(b"part header", body, content_type=b'multipart/mixed; boundary="h"')


def long_header(n: int) -> bytes:
    return _mail(b"x" * n, b"body\r\n")


SHAPES = {
    "newlines": newlines, "spaces": spaces, "quote markers": quote_markers, "wrote lines": wrote_lines,
    "header fields": header_fields, "deep nesting": deep_nesting, "nested attachments": nested_attachments,
    "many parts": many_parts, "boundary traps": boundary_traps, "deep comments": deep_comments,
    "encoded words": encoded_words, "huge html": huge_html, "broken html": broken_html,
    "tnef property count": tnef_property_count, "tnef value count": tnef_value_count, "tnef rows": tnef_rows,
    "tnef objects": tnef_objects, "long header": long_header, "iso-2022-jp junk": iso2022jp_junk,
    "part header": part_header,
}
