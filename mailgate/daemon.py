"""`mailgate serve`: the listeners, the processor and the workers on one event loop.

Startup prepares the state directory and schema, binds the listeners, then says what it
listens on. SIGTERM and SIGINT stop accepting, let the processor finish the message in hand
and return 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from mailgate.app import App
from mailgate.http import server as http_server
from mailgate.ingest import smtp
from mailgate.ingest import imap
from mailgate.outbound.sender import Sender
from mailgate.processor import Processor

log = logging.getLogger("mailgate.daemon")

SHUTDOWN_GRACE_SECONDS = 20
IMAP_STOP_SECONDS = 10  # an IDLE notices `stopping` within a second; a fetch may take longer


class Daemon:
    def __init__(self, app: App):
        self.app = app
        self.stopping = asyncio.Event()
        self.processor = Processor(app)
        self.sender = Sender(app)
        app.on_outbound_queued = self.sender.wake_threadsafe  # mail queued → sent now, not at the next poll
        self.mailboxes = imap.Pollers(app, self.processor.wake.set)
        self.servers: list = []
        self.http_runner = None

    async def run(self) -> int:
        await self._start_listeners()
        self._start_mailboxes()
        processing = asyncio.create_task(self.processor.run(self.stopping))
        sending = asyncio.create_task(self.sender.run(self.stopping))
        timers = asyncio.create_task(self._lifecycle())
        await self.stopping.wait()
        log.info("stopping: no new connections; finishing the message in hand")
        await self._stop_listeners()
        timers.cancel()
        await self.mailboxes.stop(IMAP_STOP_SECONDS)
        try:
            await asyncio.wait_for(processing, SHUTDOWN_GRACE_SECONDS)
        except asyncio.TimeoutError:
            log.warning("processing did not finish within %ds; the spool keeps the rest", SHUTDOWN_GRACE_SECONDS)
        try:
            await asyncio.wait_for(sending, SHUTDOWN_GRACE_SECONDS)
        except asyncio.TimeoutError:
            log.warning("sending did not finish within %ds; the outbox keeps the rest", SHUTDOWN_GRACE_SECONDS)
        self.app.db.dispose()
        log.info("stopped")
        return 0

    async def _lifecycle(self) -> None:
        """The lifecycle pass of SPEC §6, every `lifecycle.interval_seconds`."""
        from mailgate.db import run_blocking
        from mailgate.models import utcnow
        from mailgate.tickets import lifecycle

        while not self.stopping.is_set():
            try:
                report = await run_blocking(lifecycle.run, self.app, utcnow())
                if report.closed or report.reminded:
                    log.info("lifecycle: %d closed, %d reminded", report.closed, report.reminded)
            except Exception as e:  # the database may be away; the next pass tries again
                log.error("lifecycle pass failed: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
            try:
                await asyncio.wait_for(self.stopping.wait(), self.app.config.lifecycle.interval_seconds)
            except asyncio.TimeoutError:
                pass

    async def _start_listeners(self) -> None:
        cfg = self.app.config
        if cfg.smtp.enabled:
            server = await smtp.start(self.app, self.processor.wake.set)
            self.servers.append(server)
            kind = "LMTP" if cfg.smtp.lmtp else "SMTP"
            _announce(f"{kind} on {_bound(server)}")
        if cfg.http.enabled:
            self.http_runner = await http_server.start(self.app, self.mailboxes)
            _announce(f"HTTP on {cfg.http.host}:{_http_port(self.http_runner)}")
        _announce(f"state in {cfg.state_dir.resolve()}; database {_safe_url(cfg.database_url)}")

    def _start_mailboxes(self) -> None:
        for box in self.app.config.imap:
            _announce(f"IMAP {box.label} {box.host}:{box.port}/{box.folder}")
        self.mailboxes.start(self.stopping)

    async def _stop_listeners(self) -> None:
        for server in self.servers:
            server.close()
        if self.http_runner is not None:
            await self.http_runner.cleanup()


def _bound(server: asyncio.AbstractServer) -> str:
    host, port = server.sockets[0].getsockname()[:2]
    return f"{host}:{port}"


def _http_port(runner) -> int:
    return runner.addresses[0][1] if runner.addresses else 0


def _safe_url(url: str) -> str:
    """The database URL without its password, for the log."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def _announce(text: str) -> None:
    """Tell whoever started us where we are (stdout, so a newcomer sees it at once)."""
    print(f"mailgate: {text}", flush=True)


def serve(app: App) -> int:
    app.prepare()
    return asyncio.run(_serve(Daemon(app)))


async def _serve(daemon: Daemon) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stopping.set)
    return await daemon.run()
