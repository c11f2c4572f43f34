"""The listener's DATA reader (issue 13): a body of a million bare CR LF lines arrives faster
than it is read, so every line is already buffered and `readuntil` returns without giving the
event loop a turn — HTTP, the sender and every other session waited seconds (3.2 s for a
/metrics request while 7.6 MB of newlines came in, on the shared machine). The reader now
yields every YIELD_EVERY_LINES lines; what it gathers is unchanged."""

from __future__ import annotations

import asyncio

from mailgate.ingest import smtp


class _Draft:
    """What the reader writes the body into as it comes (a spool draft, in memory)."""

    def __init__(self):
        self.failed, self.pieces = None, []

    def write(self, piece: bytes) -> None:
        self.pieces.append(bytes(piece))


def _reader_of(data: bytes) -> smtp.MailgateSMTP:
    """A session whose reader holds DATA, all of it buffered (as it is when it came faster)."""
    session = smtp.MailgateSMTP.__new__(smtp.MailgateSMTP)
    session._reader = asyncio.StreamReader(limit=smtp.MailgateSMTP.line_length_limit)
    session._reader.feed_data(data)
    session._reader.feed_eof()
    session.data_size_limit, session.in_flight, session._taken = 0, None, 0
    return session


def test_a_body_of_bare_newlines_gives_the_event_loop_turns_while_it_is_read():
    lines = 200_000

    async def read_while_counting_turns():
        session = _reader_of(b"\r\n" * lines + b"..dot-stuffed\r\n.\r\n")  # a StreamReader needs the loop
        turns = 0

        async def other_work():
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        other = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        draft = _Draft()
        last = await session._read_body(draft)
        other.cancel()
        return b"".join(draft.pieces) + bytes(last), turns

    body, turns = asyncio.run(read_while_counting_turns())
    assert body == b"\r\n" * lines + b".dot-stuffed\r\n"
    assert turns >= lines // smtp.YIELD_EVERY_LINES // 2, turns  # before: 1 (all lines were buffered)
