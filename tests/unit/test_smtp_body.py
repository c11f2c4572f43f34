"""The listener's DATA reader (issues 13 and 16): the body is read in stretches up to the
end (CR LF "." CR LF) and unstuffed with bytes operations (mailgate.ingest.smtp.BodyStream), not a line
at a time. What it gathers must be exactly what a line-by-line reading of RFC 5321 gathers,
however the bytes arrive, and a pipelined command after the lone dot must stay for the
session; a body of a million bare CR LF lines must cost little and never hold the loop."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.ingest import smtp

LIMIT = 1000
TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"


class _Draft:
    """What the reader writes the body into as it comes (a spool draft, in memory)."""

    def __init__(self):
        self.failed, self.pieces = None, []

    def write(self, piece: bytes) -> None:
        self.pieces.append(bytes(piece))


def _line_by_line(data: bytes) -> tuple[bytes, bytes]:
    """RFC 5321 §4.5.2 read as aiosmtpd reads it: (the unstuffed body, what follows the dot)."""
    body, pos = bytearray(), 0
    while True:
        end = data.index(b"\r\n", pos) + 2
        line, pos = data[pos:end], end
        if line == b".\r\n":
            return bytes(body), data[pos:]
        body += line[1:] if line.startswith(b".") else line


async def _read(data: bytes, sizes: list[int], limit: int = LIMIT) -> tuple[bytes | str, bytes, float]:
    """Feed DATA to a session's reader (whose stretch is LIMIT) in pieces of SIZES, as the
    network splits it, and read the body: (body or refusal, what is left for the next
    command, the longest wait of the loop for a turn)."""
    session = smtp.MailgateSMTP.__new__(smtp.MailgateSMTP)
    session._reader = asyncio.StreamReader(limit=limit)
    session.data_size_limit, session.in_flight, session._taken = 0, None, 0
    longest, last = 0.0, time.perf_counter()

    async def network():
        pos = 0
        for size in sizes * (len(data) // max(1, sum(sizes)) + 1):
            session._reader.feed_data(data[pos:pos + size])
            pos += size
            await asyncio.sleep(0)
        session._reader.feed_data(data[pos:])
        session._reader.feed_eof()

    async def other_work():  # HTTP, the sender, other sessions: how long do they wait for a turn?
        nonlocal longest, last
        while True:
            now = time.perf_counter()
            longest, last = max(longest, now - last), now
            await asyncio.sleep(0)

    feeding, other = asyncio.create_task(network()), asyncio.create_task(other_work())
    draft = _Draft()
    body = await session._read_body(draft)
    other.cancel()
    await feeding
    read = body if isinstance(body, str) else b"".join(draft.pieces) + bytes(body)
    return read, bytes(session._reader._buffer), longest


PIECES = st.sampled_from([b"a", b".", b"..", b"\r", b"\n", b"\r\n", b".\r\n", b"x.\r\n", b"\r\n..\r\n", b"QUIT"])


@settings(max_examples=400, deadline=None)
@given(st.lists(PIECES, max_size=40), st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_the_body_is_what_a_line_by_line_reading_gives_however_it_arrives(pieces, sizes):
    body = b"".join(pieces)
    data = body + (b"\r\n" if body and not body.endswith(b"\r\n") else b"") + b".\r\nQUIT\r\n"
    read, left, _ = asyncio.run(_read(data, sizes))
    assert (read, left) == _line_by_line(data)


def test_a_line_over_the_limit_is_refused_and_the_session_goes_on():
    data = b"short\r\n" + b"x" * (smtp.MAX_BODY_LINE + 10) + b"\r\n..still read\r\n.\r\nRSET\r\n"
    read, left, _ = asyncio.run(_read(data, [65536], limit=smtp.STRETCH))
    assert (read, left) == (TOO_LONG, b"RSET\r\n")


def test_a_long_line_under_the_limit_is_kept_whole():
    line = b"<td>" + b"y" * (3 * smtp.STRETCH) + b"</td>\r\n"  # HTML mailers send such lines
    read, left, _ = asyncio.run(_read(b"..a\r\n" + line + b".\r\n", [7000], limit=smtp.STRETCH))
    assert (read, left) == (b".a\r\n" + line, b"")


@pytest.mark.parametrize("line, lines", [(b"\r\n", 4_000_000), (b"x.\r\n", 1_000_000)], ids=["bare CR LF", "x."])
def test_a_million_bare_newlines_cost_little_and_never_hold_the_loop(line, lines):
    """7.7 MB of bare CR LF cost the listener 8-14 s of CPU a line at a time, and held every
    other task of the daemon for seconds while it was buffered (3.2 s for /metrics); stretches
    that stopped at every ".\r\n" then made 4 MB of "x." lines cost 10-14 s, a turn of the loop
    each. The reader looks for the body's end (CR LF "." CR LF) only: the work follows the
    size, not the lines."""
    data = line * lines + b"..dot-stuffed\r\n.\r\n"
    started = time.process_time()
    read, left, longest = asyncio.run(_read(data, [1 << 16], limit=smtp.STRETCH))
    cpu = time.process_time() - started
    assert read == line * lines + b".dot-stuffed\r\n" and left == b""
    assert cpu < 2.0, f"{cpu:.2f} s of CPU for {len(data) / 1e6:.0f} MB of {line!r} lines"
    assert longest < 0.25, f"the loop waited {longest:.2f} s for a turn"


def test_the_reader_can_take_back_bytes():
    """The DATA reader puts the command's CR LF back in front of the reader's buffer (there is
    no public way): CPython's StreamReader must still keep it as a bytearray."""
    async def buffer():
        return asyncio.StreamReader()._buffer

    assert isinstance(asyncio.run(buffer()), bytearray)
