"""The SMTP and LMTP listener (SPEC §3.1), on aiosmtpd.

The handler refuses during the dialog what it can — recipients that are not support
addresses (550 5.1.1), more than `smtp.max_recipients` (452 4.5.3), messages over the size
limit (552 5.3.4, advertised with SIZE) — and answers 250 to DATA only once the raw message is
fsynced in the spool; when the spool cannot take it, 451 4.3.0 and the client keeps the
message. The body goes into its spool file (tmp/) in pieces as it arrives, so the listener never
holds a big message whole; it is moved into new/ only once complete and fsynced. In LMTP mode
DATA gets one reply per accepted recipient, as an LMTP client (Postfix's lmtp: transport)
expects. A message for the addresses of two desks is spooled once per desk, each copy with its
desk's recipients, before the one 250 (mailgate.desks: each desk opens its own ticket; a copy
written before a 451 is a duplicate when the client sends it again).

What the listener holds is bounded whatever clients do: at most `smtp.max_sessions`
connections (more get 421 at once), and at most `smtp.max_bytes_in_flight` bytes of message
bodies being received by all sessions together — a body that would go over it is cut off
(421, connection closed, nothing acknowledged), so many slow near-maximum uploads cannot add
up to more than that (in tmp/ files and the pieces on their way there).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Callable

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, Envelope as SmtpEnvelope, syntax

from mailgate import desks
from mailgate.app import App
from mailgate.db import run_blocking
from mailgate.mail.addresses import is_support_address
from mailgate.core.spool import Draft, Envelope, SpoolError

log = logging.getLogger("mailgate.smtp")

ACCEPTED = "250 2.0.0 Message accepted"
SPOOL_FAILED = "451 4.3.0 Cannot store the message now; try again later"
TOO_BIG = "552 5.3.4 Message exceeds the maximum size"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TOO_MANY_SESSIONS = "421 4.7.0 Too many connections, try again later"
TOO_MUCH_IN_FLIGHT = "421 4.3.2 Too much mail in transit, try again later"
CHUNK = 256 * 1024  # a body goes to its spool file in pieces of this size as it arrives
STRETCH = 64 * 1024  # a body is read up to the next ".\r\n" or this many bytes at a time
# RFC 5321 allows 1000 characters a line, but real mailers send longer HTML lines and MTAs
# pass them on; refusing them would lose mail. A body line over this is refused (500).
MAX_BODY_LINE = 1024 * 1024


class InboundHandler:
    """aiosmtpd hooks: only RCPT and DATA need deciding."""

    def __init__(self, app: App, on_spooled: Callable[[], None], lmtp: bool):
        self.app = app
        self.on_spooled = on_spooled
        self.source = "lmtp" if lmtp else "smtp"

    async def handle_RCPT(self, server, session, envelope: SmtpEnvelope, address: str, rcpt_options):
        # Read at use: a SIGHUP may have changed the support addresses.
        if not is_support_address(address, self.app.config.support_addresses):
            return f"550 5.1.1 <{address}>: no such support address"
        if len(envelope.rcpt_tos) >= self.app.config.smtp.max_recipients:
            return TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    def draft(self, envelope: SmtpEnvelope) -> Draft:
        """Where DATA's body goes as it arrives: a spool file being written."""
        # aiosmtpd keeps MAIL FROM:<> as "<>" (it needs a true value there); the spool's null
        # sender is "".
        sender = "" if envelope.mail_from in ("<>", "") else envelope.mail_from
        copies = [Envelope(sender=sender, recipients=group, source=self.source)
                  for group in desks.of(self.app.config).split(list(envelope.rcpt_tos))]
        return self.app.spool.draft(copies[0], copies[1:])

    async def handle_DATA(self, server, session, envelope: SmtpEnvelope):
        """The body is in ENVELOPE's draft but for its last piece (`original_content`): made
        durable here (once per desk), and only then answered 250."""
        draft: Draft = envelope.draft
        try:
            if draft.failed is not None:
                raise draft.failed
            spool_id = ",".join(await run_blocking(draft.commit, envelope.original_content))
        except SpoolError as e:
            log.error("spool write failed, answered 451: %s", e.strerror)
            return SPOOL_FAILED
        except Exception:  # whatever it was, the message is not stored: the client must keep it
            await run_blocking(draft.discard)
            log.exception("spool write failed, answered 451")
            return SPOOL_FAILED
        log.debug("spooled %s", spool_id)
        self.on_spooled()
        return ACCEPTED


class InFlight:
    """The bytes of message bodies all sessions are receiving at once (`smtp.max_bytes_in_flight`)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.bytes = 0

    def take(self, n: int) -> bool:
        if self.bytes + n > self.limit:
            return False
        self.bytes += n
        return True

    def give_back(self, n: int) -> None:
        self.bytes -= n


class BodyStream:
    """DATA's body, taken in pieces that end at its end (CR LF "." CR LF) or anywhere, each no
    longer than LIMIT (the reader's are a STRETCH), and given back as whole lines with their
    dot-stuffing undone (RFC 5321 §4.5.2) — by bytes operations, never line by line. The start
    of a line not yet ended waits in `carry`; `too_long` tells that a line went over LIMIT (a
    line inside one piece cannot, so only the first and the carry can)."""

    END = b"\r\n.\r\n"  # the CR LF that ends the last line, then the lone dot
    DOT = END[2:]

    def __init__(self, limit: int):
        self.limit, self.carry, self.too_long = limit, b"", False

    def lines(self, piece: bytes, ended: bool) -> bytes:
        """The whole lines that PIECE completes, unstuffed (without the lone dot)."""
        text = self.carry + piece if self.carry else piece
        if ended:
            text, self.carry = text[:-len(self.DOT)], b""
        else:
            last = text.rfind(b"\r\n")
            cut = last + 2 if last >= 0 else 0
            text, self.carry = text[:cut], text[cut:]
            if len(self.carry) > self.limit:  # kept only to see where the line ends
                self.too_long, self.carry = True, self.carry[-2:]
        if text.find(b"\r\n") > self.limit:  # the first line, begun in an earlier piece
            self.too_long = True
        if text.startswith(b"."):
            text = text[1:]
        return text.replace(b"\r\n.", b"\r\n")


class _EnhancedReplies:
    """aiosmtpd's own size replies lack the enhanced status code of SPEC §3.1; the listener
    needs to know its open sessions to shut down gracefully; and the body of DATA goes into
    its spool file as it arrives — without aiosmtpd's per-line overhead, never held whole —
    and is counted against the listener's InFlight."""

    # The reader's limit: a command line at most, and the longest stretch of a body read at
    # once (what the body has sent is taken, counted and written on at least this often).
    line_length_limit = STRETCH
    sessions: set | None = None  # the listener's set of open sessions
    in_flight: InFlight | None = None  # the listener's count of body bytes in transit

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """DATA as aiosmtpd does it, but the body is written into a spool draft in pieces as
        it arrives: aiosmtpd keeps a bytearray per line, ~130 bytes of memory for each empty
        line, so 25 MB of bare CR LF would cost the listener gigabytes, and even one buffer
        holds a big message whole. Each line also counts against `in_flight`."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            return await self.push("503 Error: need RCPT command")
        if arg:
            return await self.push("501 Syntax: DATA")
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self._taken = 0
        draft = self.envelope.draft = self.event_handler.draft(self.envelope)
        try:
            try:
                body = await self._read_body(draft)
            except BaseException:  # the client went away mid-body, or the session is cancelled:
                draft.discard()  # nothing of it stays on disk (a close and an unlink, no thread)
                raise
            if not isinstance(body, bytearray):
                await run_blocking(draft.discard)
            if isinstance(body, str):  # refused: the whole body was read (RFC 5321 §4.2.5)
                self._set_post_data_state()
                return await self.push(body)
            if body is None:  # cut off: the connection is closed
                return
            self.envelope.content = self.envelope.original_content = body
            status = await self._call_handler_hook("DATA")
        finally:
            if self.in_flight is not None:
                self.in_flight.give_back(self._taken)  # spooled or dropped: not held any more
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_body(self, draft: Draft) -> bytearray | str | None:
        """The dot-unstuffed body up to the lone dot, written into DRAFT in pieces of CHUNK
        bytes as it comes (a big message is never held whole): the last piece, not yet
        written. A reply text when it is too big or has a line too long; None when the
        connection was cut (too much in flight). A piece that cannot be written is kept in
        DRAFT.failed, and the rest is read and dropped (the reply is 451).

        The body is read in stretches up to its end (or STRETCH bytes without it) and unstuffed
        with bytes operations, so the work depends on the size, never on the lines: a line at a
        time, 7.7 MB of bare CR LF cost the listener 8-14 s of CPU, and stretches that stopped
        at every ".\r\n" still cost 14 s for 4 MB of "x." lines."""
        body, refusal, limit, size = bytearray(), None, self.data_size_limit, 0
        stream = BodyStream(MAX_BODY_LINE)
        # The CR LF of the DATA command stands for the line before the body, so that a lone dot
        # at once (an empty body) ends it too. A StreamReader cannot put bytes back; CPython's
        # keeps its buffer in a bytearray (tests/unit/test_smtp_body.py checks that it still does).
        self._reader._buffer[0:0] = b"\r\n"
        skip = 2
        while True:
            await asyncio.sleep(0)  # a stretch already buffered comes without a turn of the loop
            try:
                piece, ended = await self._reader.readuntil(BodyStream.END), True
            except asyncio.LimitOverrunError as e:  # not in the next STRETCH bytes (and no end
                # lies across what is taken: the reader leaves the end's length less one behind)
                piece, ended = await self._reader.readexactly(e.consumed), False
            piece, skip = piece[skip:], 0
            if self.in_flight is not None:
                if not self.in_flight.take(len(piece)):
                    return self._cut_off()
                self._taken += len(piece)
            lines = stream.lines(piece, ended)
            if stream.too_long:
                refusal = refusal or "500 Line too long (see RFC5321 4.5.3.1.6)"
            if refusal is None and limit and size + len(lines) > limit:
                refusal = "552 Error: Too much mail data"
            if refusal is None and draft.failed is None:
                body += lines
                size += len(lines)
                if len(body) >= CHUNK:
                    piece, body = body, bytearray()
                    try:
                        await run_blocking(draft.write, piece)
                    except SpoolError as e:
                        draft.failed = e
            if ended:
                return refusal or body

    def _cut_off(self) -> None:
        log.warning("%d bytes of bodies in transit (smtp.max_bytes_in_flight): a message cut off, "
                    "its client will try again", self.in_flight.bytes)
        self.transport.write(f"{TOO_MUCH_IN_FLIGHT}\r\n".encode())
        self.transport.close()
        return None

    def connection_made(self, transport):
        super().connection_made(transport)
        if self.sessions is not None:
            self.sessions.add(self)

    def connection_lost(self, exc):
        if self.sessions is not None:
            self.sessions.discard(self)
        super().connection_lost(exc)

    @property
    def in_transaction(self) -> bool:
        """Between MAIL FROM and the reply to DATA: a message the client is handing over."""
        return bool(self.envelope and self.envelope.mail_from)

    async def push(self, status):
        if isinstance(status, str) and "552 Error" in status:
            status = "\r\n".join(TOO_BIG if line.startswith("552 Error") else line for line in status.split("\r\n"))
        await super().push(status)


class MailgateSMTP(_EnhancedReplies, SMTP):
    pass


class MailgateLMTP(_EnhancedReplies, LMTP):
    """LMTP (RFC 2033 §4.2): the reply to the end of DATA comes once per accepted recipient —
    a 250 as well as aiosmtpd's own refusals (too big, line too long) or our 451. aiosmtpd
    sends one; an LMTP client would wait for the others and the dialog would go out of step."""

    _data_recipients = 0  # >0 from DATA's 354 until its final reply
    _data_started = False

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        self._data_recipients = len(self.envelope.rcpt_tos) if self.envelope else 0
        self._data_started = False
        try:
            await super().smtp_DATA(arg)
        finally:
            self._data_recipients = 0
            self._data_started = False

    async def push(self, status):
        if self._data_recipients and isinstance(status, str):
            if not self._data_started:
                self._data_started = status.startswith("354")  # replies before it are single
            else:
                count, self._data_recipients = self._data_recipients, 0
                status = "\r\n".join([status] * count)
        await super().push(status)


def tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    if not cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


class _Refuse(asyncio.Protocol):
    """What a connection made after SIGTERM, or beyond `smtp.max_sessions`, gets: 421, then
    the door."""

    def __init__(self, reply: str):
        self.reply = reply

    def connection_made(self, transport) -> None:
        transport.write(f"{self.reply}\r\n".encode())
        transport.close()


class Listener:
    """The bound SMTP/LMTP server and its sessions, for a graceful stop (SPEC §8): new
    connections get 421, a message being handed over is finished, idle sessions are told 421."""

    def __init__(self, app: App, on_spooled: Callable[[], None]):
        self.app = app
        self.on_spooled = on_spooled
        self.sessions: set = set()
        self.in_flight = InFlight(app.config.smtp.max_bytes_in_flight)
        self.closing = False
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> asyncio.AbstractServer:
        factory = await _protocol_factory(self.app, self.on_spooled)

        def connection():
            if self.closing:
                return _Refuse(SHUTTING_DOWN)
            if len(self.sessions) >= self.app.config.smtp.max_sessions:
                log.warning("%d SMTP sessions open (smtp.max_sessions): a connection refused", len(self.sessions))
                return _Refuse(TOO_MANY_SESSIONS)
            protocol = factory()
            protocol.sessions, protocol.in_flight = self.sessions, self.in_flight
            return protocol

        cfg = self.app.config.smtp
        self.server = await asyncio.get_running_loop().create_server(connection, host=cfg.host, port=cfg.port)
        return self.server

    async def stop(self, grace: float) -> int:
        """Stop taking mail within GRACE seconds; returns how many sessions had to be cut."""
        self.closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.sessions and loop.time() < deadline:
            for session in [s for s in self.sessions if not s.in_transaction]:
                await _say_goodbye(session)
            if self.sessions:
                await asyncio.sleep(0.05)  # a transaction in hand finishes within the grace
        cut = len(self.sessions)
        for session in list(self.sessions):
            session.transport.close()  # never acknowledged: the client keeps the message
        self.server.close()
        await self.server.wait_closed()
        return cut


async def _say_goodbye(session) -> None:
    try:
        await session.push(SHUTTING_DOWN)
    except Exception:  # the client went away meanwhile
        pass
    session.sessions.discard(session)
    if session.transport is not None:
        session.transport.close()


async def _protocol_factory(app: App, on_spooled: Callable[[], None]):
    cfg = app.config.smtp
    # aiosmtpd's own log says "<< / >>" for every command at INFO, and logs the DATA lines —
    # the message bodies — at DEBUG. We log one line per message ourselves (SPEC §8).
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    handler = InboundHandler(app, on_spooled, cfg.lmtp)
    protocol = MailgateLMTP if cfg.lmtp else MailgateSMTP
    context = tls_context(cfg.tls_cert, cfg.tls_key)
    # Without a name aiosmtpd asks socket.getfqdn() once per connection, on the event loop
    # (a DNS lookup that may take seconds): ask once, off the loop.
    hostname = cfg.hostname or await run_blocking(socket.getfqdn)
    kwargs = dict(
        data_size_limit=cfg.max_message_size, enable_SMTPUTF8=True, decode_data=False,
        tls_context=context, require_starttls=False, ident="mailgate", hostname=hostname,
    )
    return lambda: protocol(handler, **kwargs)
