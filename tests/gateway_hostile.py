"""Generators of hostile mail (issue 13): the shapes that have broken mail software — long runs
of newlines, spaces and quote markers, deep nesting, huge counts, length fields that lie,
deeply nested comments, huge HTML. Each takes a SCALE (1 = small enough for CI; the campaign
in bench/gateway_hostile.py goes up to the size limit) and returns raw bytes from an active contact
(alice@acme.example), so the message goes through every stage, not just the sender check.

Used by tests/system/test_hostile.py and bench/gateway_hostile.py.
"""

from __future__ import annotations

import base64
import struct
from typing import Callable

FROM = "alice@acme.example"
TO = "support@example.com"


def _head(subject: str, n: int, extra: str = "") -> bytes:
    return (f"From: Alice Adams <{FROM}>\r\nTo: {TO}\r\nSubject: {subject}\r\n"
            f"Message-ID: <hostile-{subject.replace(' ', '-').lower()}-{n}@acme.example>\r\n"
            f"Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n{extra}").encode()


def _reply_head(subject: str, n: int) -> bytes:
    # a reply to SD-1, so quote stripping runs on the body
    return _head(f"Re: [SD-1] {subject}", n, "In-Reply-To: <seed@acme.example>\r\n")


def newlines(scale: int, n: int = 0) -> bytes:
    """The reply that froze quote stripping: x, a long run of CR LF, x."""
    return _reply_head("newlines", n) + b"\r\nx" + b"\r\n" * (60_000 * scale) + b"x\r\n"


def spaces(scale: int, n: int = 0) -> bytes:
    """Runs of spaces, each line just under the listener's line limit (1 MiB) at larger scales."""
    run = 200_000 * scale
    lines = [b"x" + b" " * min(run, 900_000) + b"x" for _ in range(max(1, run // 900_000))]
    return _reply_head("spaces", n) + b"\r\n" + b"\r\n".join(lines) + b"\r\n"


def quote_markers(scale: int, n: int = 0) -> bytes:
    """Quote markers nested ever deeper, then an "On … wrote:" line with nothing after it."""
    lines = [b"> " * min(i, 500) + b"quoted" for i in range(5_000 * scale)]
    return _reply_head("quotes", n) + b"\r\nnew text\r\n" + b"\r\n".join(lines) + b"\r\nOn Monday Bob wrote:" + b" " * 5000 + b"\r\n"


def wrote_lines(scale: int, n: int = 0) -> bytes:
    """Thousands of reply headers one after the other, as a quote library searches them."""
    line = b"On Mon, 1 Dec 2026 at 10:00, Bob <bob@example.com> wrote:\r\n> -----Original Message-----\r\n"
    return _reply_head("wrote", n) + b"\r\nhi\r\n" + line * (3_000 * scale)


def nested_attachments(scale: int, n: int = 0) -> bytes:
    """Multiparts nested deep, each level marked as an attachment (the memory amplifier)."""
    depth = 200 * scale
    body = b"Content-Type: text/plain\r\n\r\n" + b"A" * 2000 + b"\r\n"
    for level in range(depth):
        boundary = f"b{level}".encode()
        body = (b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n"
                b"Content-Disposition: attachment; filename=part" + str(level).encode() + b".bin\r\n\r\n"
                b"--" + boundary + b"\r\n" + body + b"\r\n--" + boundary + b"--\r\n")
    return _head("nested", n, "MIME-Version: 1.0\r\n") + body


def many_parts(scale: int, n: int = 0) -> bytes:
    """A huge count of tiny attachments."""
    parts = b"".join(b"--p\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
                     b"filename=f" + str(i).encode() + b".bin\r\n\r\nx\r\n" for i in range(5_000 * scale))
    return _head("many parts", n, "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=p\r\n") \
        + b"\r\n" + parts + b"--p--\r\n"


def many_headers(scale: int, n: int = 0) -> bytes:
    return _head("many headers", n) + b"".join(b"X-H%d: v\r\n" % i for i in range(20_000 * scale)) + b"\r\nbody\r\n"


def tnef_bomb(scale: int, n: int = 0) -> bytes:
    """A winmail.dat whose property block claims 0xFFFFFFFF properties in 21 bytes."""
    tnef = struct.pack("<IH", 0x223E9F78, 0) + b"\x02" + struct.pack("<II", 0x00069003, 4) \
        + struct.pack("<I", 0xFFFFFFFF) + b"\x00\x00" + b"\x00" * (scale - 1)
    encoded = base64.encodebytes(tnef)
    return (_head("tnef", n, "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=t\r\n")
            + b"\r\n--t\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n--t\r\n"
            b"Content-Type: application/ms-tnef; name=winmail.dat\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=winmail.dat\r\n\r\n" + encoded + b"--t--\r\n")


def lying_lengths(scale: int, n: int = 0) -> bytes:
    """Length fields that lie: a base64 part cut short, a declared huge Content-Length, an
    encoded word that claims a charset and never ends."""
    return (_head("lengths", n, "MIME-Version: 1.0\r\nContent-Length: 99999999999\r\n"
                  "Content-Type: multipart/mixed; boundary=l\r\n")
            + b"\r\n--l\r\nContent-Type: text/plain; charset=\"=?utf-8?b?" + b"QUFB" * (1000 * scale) + b"\r\n\r\nhi\r\n"
            b"--l\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + b"QUJD" * (50_000 * scale) + b"=" + b"\r\n")  # no closing boundary


def deep_comments(scale: int, n: int = 0) -> bytes:
    """A To: header of nested comments (the RecursionError that was never recorded)."""
    depth = 3_000 * scale
    return _head("comments", n).replace(f"To: {TO}".encode(), f"To: {TO}, ".encode() + b"(" * depth + b")" * depth) \
        + b"\r\nhello\r\n"


def huge_html(scale: int, n: int = 0) -> bytes:
    """An HTML-only table of many cells (what HTML-to-text conversion chokes on)."""
    rows = b"".join(b"<tr>" + b"<td>cell</td>" * 20 + b"</tr>\r\n" for _ in range(2_000 * scale))
    return (_head("html", n, "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n")
            + b"\r\n<html><body><table>" + rows + b"</table></body></html>\r\n")


def deep_html(scale: int, n: int = 0) -> bytes:
    return (_head("deep html", n, "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n")
            + b"\r\n<html><body>" + b"<div>" * (20_000 * scale) + b"x\r\n")


def long_line(scale: int, n: int = 0) -> bytes:
    """One line just under the listener's line limit, in a header folded a thousand times."""
    folded = b"Subject: long" + b"\r\n x" * (1_000 * scale) + b"\r\n"
    return _head("long", n).replace(b"Subject: long\r\n", folded) + b"\r\n" + b"y" * (900_000) + b"\r\n"


SHAPES: dict[str, Callable[[int, int], bytes]] = {
    "newlines": newlines, "spaces": spaces, "quote_markers": quote_markers, "wrote_lines": wrote_lines,
    "nested_attachments": nested_attachments, "many_parts": many_parts, "many_headers": many_headers,
    "tnef_bomb": tnef_bomb, "lying_lengths": lying_lengths, "deep_comments": deep_comments,
    "huge_html": huge_html, "deep_html": deep_html, "long_line": long_line,
}


def ordinary(n: int) -> bytes:
    return _head(f"Ordinary {n}", n) + b"\r\nMy printer is on fire.\r\n"


class PeakRss:
    """Samples, in a thread, the resident memory of a process and all its children together
    (the daemon and its workers; `deliver` and its child); `peak` is the largest sum seen, in
    bytes. Every 10 ms: a runaway that the budget stops is seen on its way up."""

    def __init__(self, pid: int, interval: float = 0.01):
        import threading

        self.pid, self.interval, self.peak, self._since = pid, interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def take(self) -> int:
        """The peak since the last take (one case's), and start over."""
        since, self._since = self._since, 0
        return since

    def _run(self) -> None:
        while not self._stop.is_set():
            now = tree_rss(self.pid)
            self.peak, self._since = max(self.peak, now), max(self._since, now)
            self._stop.wait(self.interval)


def tree_rss(pid: int) -> int:
    """VmRSS of PID and its children, in bytes (0 for what is gone)."""
    return sum(_rss(p) for p in [pid, *_children(pid)])


def _children(pid: int) -> list[int]:
    try:  # the kernel's list for the main thread (the daemon forks from it)
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        from tests.support import children_of

        return children_of(pid)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
