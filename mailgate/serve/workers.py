"""Processing in worker processes, so that it can use more than one core.

One Python process runs its Python code on one core at a time; parsing, rules and the database
work of a message are Python, and they compete with the listener for that core. With
`[processing] processes = N` (N > 1) the daemon starts N children (`python -m
mailgate.serve.workers`), each running the same `Runner` over the same spool with
`processing.threads` threads. Nothing new is needed for safety: a spooled message is claimed
with an flock (mailgate.core.spool), so two processes never process one message, and a child that
dies leaves its message to be recovered by the child started in its place.

The daemon and a child talk over the child's standard streams:
    daemon → child  a line per spooled message (wake up); EOF: stop after the message in hand
    child → daemon  "ready" once it handles signals; "taking SPOOL_ID" and "left SPOOL_ID"
                    around each message; "done OUTCOME SECONDS" per message (for /metrics);
                    "queued" after a transaction queued mail (wake the sender)
A child also stops on SIGTERM (systemd signals the whole control group) and reloads on SIGHUP.
Because EOF stops it, a daemon killed with SIGKILL leaves no child behind for long.

A child that dies takes nothing with it, and the listener never notices: the daemon counts a
death against each message the child had in hand and puts it back into the spool; a message
that was in hand at `runner.MAX_DEATHS` deaths is quarantined without being parsed again, so
mail that crashes the interpreter (a segfault in a C library) cannot keep a worker dying.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time

import tenacity

from mailgate import config as config_module
from mailgate.app import App, configure_logging
from mailgate.core.aio import wait_any, wait_seconds
from mailgate.core.runner import MAX_DEATHS, Runner
from mailgate.db import run_blocking

log = logging.getLogger("mailgate.workers")

STOP_SECONDS = 20  # a child finishes the message in hand within this, else it is killed
HEALTHY_SECONDS = 60  # a child that lived this long died of something new: restart at once
_RESTART = tenacity.wait_exponential_jitter(multiplier=0.5, max=30, jitter=0.5)


class WorkerPool:
    """The daemon's side: keeps COUNT children running, wakes them, gathers their results."""

    def __init__(self, app: App, count: int):
        self.app = app
        self.count = count
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._ready: set[int] = set()  # children that handle SIGHUP (the default would kill them)
        self._reload_when_ready: set[int] = set()
        self._holding: dict[int, set[str]] = {}  # pid → spool ids it is working on

    def on_spooled(self) -> None:
        """A message is in the spool: wake every child (the first to claim it takes it)."""
        for child in list(self._children.values()):
            if child.stdin is not None and not child.stdin.is_closing():
                child.stdin.write(b"\n")

    def reload(self) -> None:
        """Pass SIGHUP on; a child still starting gets it once it can take it (it may have
        read the config file before it changed)."""
        for pid, child in list(self._children.items()):
            if pid in self._ready:
                child.send_signal(signal.SIGHUP)
            else:
                self._reload_when_ready.add(pid)

    async def run(self, stopping: asyncio.Event) -> None:
        await asyncio.gather(*(self._keep_running(n, stopping) for n in range(self.count)))

    async def _keep_running(self, n: int, stopping: asyncio.Event) -> None:
        """Child number N, started again whenever it ends, until STOPPING; the backoff grows
        while children die young and starts over after one that lived a while."""
        deaths = 0
        while not stopping.is_set():
            started = time.monotonic()
            try:
                child = await self._start()
            except OSError as e:
                log.error("cannot start processing worker %d: %s", n, e)
                pid, code, held = None, None, set()
            else:
                pid, code = child.pid, await self._supervise(child, stopping)
                held = self._holding.pop(pid, set())
            if code == 0:  # it was told to stop (systemd signals the whole group): so are we, soon
                await wait_any(stopping, timeout=STOP_SECONDS)
            if stopping.is_set():
                break
            deaths = 1 if time.monotonic() - started > HEALTHY_SECONDS else deaths + 1
            if pid is not None:
                log.error("processing worker %d (pid %d) exited with %s; starting another", n, pid, code)
                await self._count_deaths(held, pid)
            await wait_any(stopping, timeout=wait_seconds(_RESTART, deaths))

    async def _count_deaths(self, spool_ids: set[str], pid: int) -> None:
        for spool_id in sorted(spool_ids):
            if await run_blocking(self.app.spool.note_death, spool_id):
                log.error("spool_id=%s was in hand when worker pid %d died; put back (it is quarantined "
                          "after %d such deaths)", spool_id, pid, MAX_DEATHS)

    async def _start(self) -> asyncio.subprocess.Process:
        source = self.app.config.source
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailgate.serve.workers", *(["--config", source] if source else []),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        self._children[child.pid] = child
        return child

    async def _supervise(self, child: asyncio.subprocess.Process, stopping: asyncio.Event) -> int:
        """Read CHILD's reports until it exits; at STOPPING, close its input and let it finish."""
        reports = asyncio.create_task(self._read_reports(child))
        stop = asyncio.create_task(stopping.wait())
        try:
            await asyncio.wait({reports, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.is_set():
                child.stdin.close()  # EOF: finish the message in hand, then exit
                try:
                    await asyncio.wait_for(child.wait(), STOP_SECONDS)
                except asyncio.TimeoutError:
                    log.warning("processing worker pid %d did not stop within %ds; killed", child.pid, STOP_SECONDS)
                    child.kill()
            await reports
            return await child.wait()
        finally:
            stop.cancel()
            self._children.pop(child.pid, None)
            self._ready.discard(child.pid)
            self._reload_when_ready.discard(child.pid)

    async def _read_reports(self, child: asyncio.subprocess.Process) -> None:
        while line := await child.stdout.readline():
            kind, _, rest = line.decode("ascii", "replace").strip().partition(" ")
            if kind == "ready":
                self._ready.add(child.pid)
                if child.pid in self._reload_when_ready:
                    child.send_signal(signal.SIGHUP)
            elif kind == "taking":
                self._holding.setdefault(child.pid, set()).add(rest)
            elif kind == "left":
                self._holding.get(child.pid, set()).discard(rest)
            elif kind == "done":
                outcome, _, seconds = rest.partition(" ")
                self.app.metrics.message(outcome, float(seconds) if seconds else None)
            elif kind == "queued" and self.app.on_outbound_queued is not None:
                self.app.on_outbound_queued()


# --- the child's side ----------------------------------------------------------------------


class _Reports:
    """Lines to the daemon, from any thread; each one write(2) of a few bytes, so lines never
    interleave. A daemon that is gone is not an error here: EOF on stdin stops us."""

    def __init__(self, fd: int):
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, line: str) -> None:
        with self.lock:
            try:
                os.write(self.fd, (line + "\n").encode("ascii", "replace"))
            except BrokenPipeError:
                pass

    # the two calls the pipeline and the notifications make on App.metrics / App.on_outbound_queued
    def message(self, outcome: str, seconds: float | None) -> None:
        self.send(f"done {outcome} {seconds if seconds is not None else ''}".rstrip())

    def queued(self) -> None:
        self.send("queued")

    def on_claim(self, spool_id: str, working: bool) -> None:
        self.send(f"{'taking' if working else 'left'} {spool_id}")


async def _serve_child(app: App, reports: "_Reports") -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    runner = Runner(app, on_claim=reports.on_claim).warm_up()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, app.reload)
    reports.send("ready")  # from now on a SIGHUP reloads instead of killing us
    wakes = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(wakes), sys.stdin)

    async def listen() -> None:
        while await wakes.readline():
            runner.wake.set()
        stopping.set()  # EOF: the daemon is stopping, or gone

    listening = asyncio.create_task(listen())
    await runner.run(stopping)
    listening.cancel()
    app.db.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailgate.serve.workers",
                                     description="a processing worker of `mailgate serve` (started by it)")
    parser.add_argument("--config")
    args = parser.parse_args(argv)
    config = config_module.load(args.config) if args.config else config_module.Config()
    configure_logging(config)
    reports = _Reports(sys.stdout.fileno())
    app = App(config, metrics=reports, on_outbound_queued=reports.queued)  # the daemon keeps the figures
    return asyncio.run(_serve_child(app, reports))


if __name__ == "__main__":
    sys.exit(main())
