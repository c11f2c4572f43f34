"""The daemon's end of `mailgate deliver` (issue 16): a Unix socket in the state directory
through which a `deliver` that the MTA started hands its message to the running daemon, instead
of loading the database layer, the parsers and the templates for one message
(`mailgate.ingest.pipe.hand_over` is the other end).

One message per connection: a JSON line `{"sender", "recipient", "size"}` and SIZE bytes. The
answer is one JSON line `{"code", "outcome", "ticket", "error"}`, `code` being deliver's exit
code (SPEC §3.3). The message is refused as `deliver` refuses it (65 too big, 67 not a support
address); otherwise it is spooled like SMTP mail — fsynced before anything is answered, 75 when
the spool cannot take it — and counted against `smtp.max_bytes_in_flight` while it is received.
The daemon's runner or workers process it like any other message; the answer waits for its
outcome (so `deliver --json` tells what became of the mail, as without a daemon), at most
OUTCOME_SECONDS: after that, or when the daemon stops, the answer is 0 without an outcome — the
message is durable in the spool and the daemon's to process.

The socket is the daemon's user's alone (mode 0600); a `deliver` that cannot use it processes
the message itself, as when no daemon runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from typing import Callable

from mailgate.app import App
from mailgate.core.aio import wait_any
from mailgate.core.spool import Envelope, SpoolError
from mailgate.db import run_blocking
from mailgate.errors import first_line
from mailgate.ingest import pipe
from mailgate.ingest.smtp import InFlight

log = logging.getLogger("mailgate.handoff")

OUTCOME_SECONDS = 10  # a spooled message's outcome is waited for this long, then 0 without it
_HEAD_LIMIT = 64 * 1024  # the JSON line before the message


class Handoff:
    """The socket server; `settled` is told when a runner let go of a message."""

    def __init__(self, app: App, on_spooled: Callable[[], None], in_flight: InFlight, stopping: asyncio.Event):
        self.app = app
        self.on_spooled = on_spooled
        self.in_flight = in_flight
        self.stopping = stopping
        self.path = pipe.socket_path(app.config)
        self.server: asyncio.AbstractServer | None = None
        self._waiting: dict[str, asyncio.Event] = {}  # spool id → set when a runner let go of it
        self._connections: set[asyncio.Task] = set()

    async def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with pipe.unix_address(self.path) as address:
                _remove_stale(self.path)
                sock.bind(address)
            os.chmod(self.path, 0o600)  # before listen(): nobody else ever gets in
            self.server = await asyncio.start_unix_server(self._connection, sock=sock, limit=_HEAD_LIMIT)
        except BaseException:
            sock.close()
            raise

    async def stop(self, grace: float) -> None:
        """Take no more messages; answer those in hand within GRACE seconds (a spooled one is
        answered at once: it is ours), cut off the rest (their `deliver` exits 75)."""
        if self.server is None:
            return
        self.server.close()
        await self.server.wait_closed()
        _remove_stale(self.path)
        if self._connections:
            _done, pending = await asyncio.wait(self._connections, timeout=grace)
            for task in pending:
                task.cancel()

    def on_claim(self, spool_id: str, working: bool) -> None:
        """A runner took (WORKING) or let go of SPOOL_ID: a message handed over may be done."""
        if not working and spool_id in self._waiting:
            self._waiting[spool_id].set()

    # --- one connection ----------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(asyncio.current_task())
        try:
            answer = await self._take(reader)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the deliver went away: it exits 75 (or was killed), the MTA tries again
        finally:
            self._connections.discard(asyncio.current_task())
            writer.close()

    async def _take(self, reader: asyncio.StreamReader) -> dict:
        try:
            sender, recipient, size = _head(await reader.readline())
        except (ValueError, KeyError, TypeError) as e:
            return _answer(pipe.EX_TEMPFAIL, error=f"a malformed hand-over: {type(e).__name__}: {e}")
        if refused := pipe.refusal(self.app.config, size, recipient):
            return _answer(refused.exit_code, error=refused.error)
        if not self.in_flight.take(size):
            return _answer(pipe.EX_TEMPFAIL, error="too much mail in transit (smtp.max_bytes_in_flight)")
        try:
            raw = await reader.readexactly(size)
            envelope = Envelope(sender=sender, recipients=[recipient] if recipient else [], source="pipe")
            spool_id = await run_blocking(self.app.spool.put, raw, envelope)
        except SpoolError as e:
            log.error("spool write failed, deliver answered 75: %s", e.strerror)
            return _answer(pipe.EX_TEMPFAIL, error=f"cannot store the message now: {e.strerror}")
        finally:
            self.in_flight.give_back(size)
        self._waiting[spool_id] = asyncio.Event()
        try:
            self.on_spooled()
            outcome, ticket = await self._outcome(spool_id)
        finally:
            del self._waiting[spool_id]
        return _answer(pipe.EX_OK, outcome, ticket)

    async def _outcome(self, spool_id: str) -> tuple[str | None, str | None]:
        """SPOOL_ID's outcome and ticket once it is processed; (None, None) when that takes
        longer than OUTCOME_SECONDS, or the daemon stops meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OUTCOME_SECONDS
        settled = self._waiting[spool_id]
        while True:
            settled.clear()
            found = await run_blocking(self._recorded, spool_id)
            left = deadline - loop.time()
            if found or left <= 0 or self.stopping.is_set():
                return found or (None, None)
            # A second at most: a message settled where nobody tells us (a killed worker's) is
            # found all the same.
            await wait_any(settled, self.stopping, timeout=min(1.0, left))

    def _recorded(self, spool_id: str) -> tuple[str, str | None] | None:
        from sqlmodel import select

        from mailgate.models import Inbound, Ticket

        try:
            with self.app.db.read_session() as session:
                return session.exec(
                    select(Inbound.outcome, Ticket.key).outerjoin(Ticket, Ticket.id == Inbound.ticket_id)
                    .where(Inbound.spool_id == spool_id)
                ).first()
        except Exception as e:  # the database is away: the message waits in the spool
            log.debug("outcome of spool_id=%s not known yet: %s", spool_id, first_line(e))
            return None


def _head(line: bytes) -> tuple[str | None, str | None, int]:
    head = json.loads(line)
    sender, recipient, size = head["sender"], head["recipient"], head["size"]
    if not all(v is None or isinstance(v, str) for v in (sender, recipient)):
        raise ValueError("sender and recipient are strings or null")
    if not isinstance(size, int) or size < 0:
        raise ValueError("size is a count of bytes")
    return sender, recipient, size


def _answer(code: int, outcome: str | None = None, ticket: str | None = None, error: str | None = None) -> dict:
    return {"code": code, "outcome": outcome, "ticket": ticket, "error": error}


def _remove_stale(path) -> None:
    """A socket left by a daemon that died (nobody listens on it any more)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
