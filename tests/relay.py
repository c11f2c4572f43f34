"""A real SMTP relay sink on loopback (aiosmtpd), for the outbound tests: it records every
envelope it accepts and answers chosen recipients with a chosen reply ("550 5.1.1 …")."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self):
        return email.message_from_bytes(self.data, policy=email.policy.default)


class _Handler:
    def __init__(self, sink: "RelaySink"):
        self.sink = sink

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.sink.replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.sink.stall:  # never answer: a sender in the middle of a delivery, for ever
            self.sink.stalled += 1
            await asyncio.Event().wait()
        with self.sink.lock:
            self.sink.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 queued"


@dataclass
class RelaySink:
    port: int = field(default_factory=free_port)
    replies: dict[str, str] = field(default_factory=dict)  # recipient → the reply to RCPT
    received: list[Received] = field(default_factory=list)
    stall: bool = False  # True: take DATA but never answer it
    stalled: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: Controller | None = None

    def start(self) -> "RelaySink":
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, decode_data=False)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def message_ids(self) -> Counter:
        with self.lock:
            return Counter(str(r.message["Message-ID"]) for r in self.received)

    def config(self, **extra) -> dict:
        """The [outbound] section that sends through this sink."""
        return {"relay_host": "127.0.0.1", "relay_port": self.port, **extra}
