"""`mailgate serve`, the composition root: the listeners, the worker pool, the sender, the
mailboxes and the timers on one event loop. Processing runs in worker processes under the
budget of every message (mailgate.serve.workers); `[processing] processes = 0` runs it in the
daemon instead, without a budget (for tests and debugging only).

Startup prepares the state directory and schema, binds the listeners, says what it listens
on, and tells systemd READY=1 (then pings its watchdog from the loop, so a blocked loop is
noticed). SIGTERM or SIGINT: STOPPING=1, new connections get 421, the message being handed
over is finished, the workers and the sender finish what they hold, exit 0 — all within
bounds that add up to less than the unit's TimeoutStopSec (50 s): the listeners and the
mailboxes stop together (≤ 10 s), processing and sending get SHUTDOWN_GRACE_SECONDS from the
start of the stop, a worker that is still busy is killed, and no child outlives the daemon.
SIGHUP: reload the config file (what can change without a restart) and the templates.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from mailgate.app import App
from mailgate.core.aio import wait_any
from mailgate.core.budget import release_memory_promptly
from mailgate.core.runner import Runner
from mailgate.db import run_blocking
from mailgate.errors import first_line
from mailgate.http import server as http_server
from mailgate.ingest import handoff, imap, smtp
from mailgate.outbound.sender import Sender
from mailgate.serve import sdnotify
from mailgate.serve.workers import WorkerPool

log = logging.getLogger("mailgate.daemon")

# The shutdown's bounds stay below the unit's TimeoutStopSec (50 s; tests/unit/test_unit_file.py
# checks it), so systemd never has to SIGKILL us.
SMTP_GRACE_SECONDS = 10  # a message being handed over when SIGTERM comes is finished within this
IMAP_STOP_SECONDS = 10  # an IDLE notices `stopping` within a second; a fetch may take longer
SHUTDOWN_GRACE_SECONDS = 20  # processing and sending, from SIGTERM on (a worker: STOP_SECONDS)
# The listeners and the mailboxes stop side by side, then processing and sending get what is
# left of their grace: the whole shutdown takes at most this long.
STOP_BOUND_SECONDS = max(SMTP_GRACE_SECONDS, IMAP_STOP_SECONDS) + SHUTDOWN_GRACE_SECONDS


class Daemon:
    def __init__(self, app: App):
        self.app = app
        self.stopping = asyncio.Event()
        processes = app.config.processing.processes
        self.listener = smtp.Listener(app, self._on_spooled)
        # `mailgate deliver` hands its message over here when the daemon runs (issue 16).
        self.handoff = handoff.Handoff(app, self._on_spooled, self.listener.in_flight, self.stopping)
        self.pool = WorkerPool(app, processes, on_claim=self.handoff.on_claim) if processes > 0 else None
        self.processing = self.pool or Runner(app, on_claim=self.handoff.on_claim).warm_up()
        self.sender = Sender(app)
        app.on_outbound_queued = self.sender.wake_threadsafe  # mail queued → sent now, not at the next poll
        self.mailboxes = imap.Pollers(app, self._on_spooled)
        self.servers: list = []
        self.http_runner = None

    async def run(self) -> int:
        await self._start_listeners()
        self._start_mailboxes()
        tasks = {
            "processing": asyncio.create_task(self.processing.run(self.stopping)),
            "sending": asyncio.create_task(self.sender.run(self.stopping)),
        }
        background = [asyncio.create_task(self._lifecycle()), asyncio.create_task(self._watchdog())]
        sdnotify.notify("READY=1", "STATUS=taking mail")
        await self.stopping.wait()
        sdnotify.notify("STOPPING=1", "STATUS=stopping")
        log.info("stopping: new connections get 421; finishing what is in hand")
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE_SECONDS
        for task in background:
            task.cancel()
        await asyncio.gather(self._stop_listeners(), self.mailboxes.stop(IMAP_STOP_SECONDS))
        await self.app.oauth.stop()
        await self._finish(tasks, deadline)
        self.app.db.dispose()
        log.info("stopped")
        return 0

    async def _finish(self, tasks: dict[str, asyncio.Task], deadline: float) -> None:
        """Let processing and sending finish until DEADLINE; cancel what has not (it resumes
        at the next start), and leave no worker process behind."""
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        _done, pending = await asyncio.wait(tasks.values(), timeout=timeout)
        for name, task in tasks.items():
            if task in pending:
                log.warning("%s did not finish within %ds; it resumes at the next start", name, SHUTDOWN_GRACE_SECONDS)
                task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self.pool is not None:
            self.pool.kill_all()

    def _on_spooled(self) -> None:
        self.processing.on_spooled()

    def reload(self) -> None:
        """SIGHUP: the config that can change without a restart, and the templates — here
        and in the processing worker processes."""
        if self.app.reload() and self.pool is not None:
            self.pool.reload()

    async def _lifecycle(self) -> None:
        """The lifecycle pass of SPEC §6, every `lifecycle.interval_seconds`."""
        from mailgate.models import utcnow
        from mailgate.tickets import lifecycle

        while not self.stopping.is_set():
            try:
                report = await run_blocking(lifecycle.run, self.app, utcnow())
                if report.closed or report.reminded:
                    log.info("lifecycle: %d closed, %d reminded", report.closed, report.reminded)
            except Exception as e:  # the database may be away; the next pass tries again
                log.error("lifecycle pass failed: %s", first_line(e))
            await wait_any(self.stopping, timeout=self.app.config.lifecycle.interval_seconds)

    async def _watchdog(self) -> None:
        """Ping systemd's watchdog from the loop itself: a loop that hangs stops the pings."""
        interval = sdnotify.watchdog_interval()
        while interval and not self.stopping.is_set():
            sdnotify.notify("WATCHDOG=1")
            await wait_any(self.stopping, timeout=interval)

    async def _start_listeners(self) -> None:
        cfg = self.app.config
        if cfg.smtp.enabled:
            server = await self.listener.start()
            self.servers.append(server)
            _announce(f"{'LMTP' if cfg.smtp.lmtp else 'SMTP'} on {_bound(server)}")
        try:
            await self.handoff.start()
        except OSError as e:  # deliver then processes its messages itself, as without a daemon
            log.error("cannot open the socket for mailgate deliver (%s): %s", self.handoff.path, e.strerror or e)
        if cfg.http.enabled:
            self.http_runner = await http_server.start(self.app, self.mailboxes)
            _announce(f"HTTP on {cfg.http.host}:{_http_port(self.http_runner)}")
        _announce(f"state in {cfg.state_dir.resolve()}; database {_safe_url(cfg.database_url)}")

    def _start_mailboxes(self) -> None:
        for box in self.app.config.imap:
            _announce(f"IMAP {box.label} {box.host}:{box.port}/{box.folder}")
        self.app.oauth.start(self.stopping)  # tokens refreshed on their own schedule
        self.mailboxes.start(self.stopping)

    async def _stop_listeners(self) -> None:
        await self.handoff.stop(SMTP_GRACE_SECONDS)
        if self.servers:
            cut = await self.listener.stop(SMTP_GRACE_SECONDS)
            if cut:
                log.warning("closed %d SMTP session(s) still mid-message; their senders will retry", cut)
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
    release_memory_promptly()  # what a big message took goes back once it is spooled
    app.prepare()
    return asyncio.run(_serve(Daemon(app)))


async def _serve(daemon: Daemon) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stopping.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    return await daemon.run()
