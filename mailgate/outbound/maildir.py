"""The outbox Maildir (<state_dir>/outbox): where notifications go when no relay is configured.

Each message is written to tmp/, fsynced, renamed into new/ and the directory fsynced, named
the Maildir way (`<seconds>.M<microseconds>P<pid>Q<outbound id>.<host>`), so any Maildir
reader (a mail client, Dovecot, `mailbox.Maildir`) can pick it up. Return-Path and
Delivered-To say what the envelope would have said.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from mailgate.core.durable import commit, write_tmp
from mailgate.db import run_blocking
from mailgate.outbound.errors import Outage


class Maildir:
    def __init__(self, root: Path):
        self.root = Path(root)

    def deliver(self, outbound_id: int, envelope_sender: str, recipient: str, message: bytes) -> Path:
        """Store one message durably in new/; returns its path. Blocking."""
        for sub in ("tmp", "new", "cur"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        name = _unique_name(outbound_id)
        tmp, final = self.root / "tmp" / name, self.root / "new" / name
        head = f"Return-Path: <{envelope_sender}>\r\nDelivered-To: {recipient}\r\n".encode()
        write_tmp(tmp, (head, message))
        commit(tmp, final)
        return final


class MaildirTransport:
    """The sender's view of the Maildir: the same `send`/`close` as the relay."""

    name = "outbox Maildir"

    def __init__(self, root: Path):
        self.maildir = Maildir(root)

    async def send(self, outbound_id: int, envelope_sender: str, recipient: str, message: bytes) -> None:
        try:
            await run_blocking(self.maildir.deliver, outbound_id, envelope_sender, recipient, message)
        except OSError as e:  # disk full, permissions: no message can be written now
            raise Outage(None, f"{self.maildir.root}: {e.strerror or e}") from e

    async def close(self) -> None:
        pass


def _unique_name(outbound_id: int) -> str:
    now = time.time()
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
    return f"{int(now)}.M{int(now % 1 * 1_000_000):06d}P{os.getpid()}Q{outbound_id}.{host}"

