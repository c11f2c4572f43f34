"""Processing in worker processes: the budget of every message, and more than one core.

Processing works on whatever bytes anyone sent, with libraries that may one day loop or
allocate without end on some of them — in C, where no Python code can stop them. So it runs in
children (`python -P -m mailgate.serve.workers`; `[processing] processes = N`, one by default),
and the daemon — listener, HTTP, sender — never waits on it: it holds each message to its
budget from outside (mailgate.core.budget). A child whose message has cost it more than
`processing.budget_seconds` of CPU is killed and the message quarantined at once, unparsed;
a child caps its own memory, so a runaway allocation ends in MemoryError (the runner
quarantines; a child that ran out of memory then ends with RECYCLE_EXIT and a fresh one takes
its place, because what it freed stays fragmented and the next big message may not fit). More than one child also puts processing on more cores: parsing, rules and
the database work are Python, one core per process. Each child runs the same `Runner` over
the same spool with `processing.threads` threads. Nothing new is needed for safety: a spooled message is claimed
with an flock (mailgate.core.spool), so two processes never process one message, and a child that
dies leaves its message to be recovered by the child started in its place.

The daemon and a child talk over the child's standard streams:
    daemon → child  a line per spooled message (wake up); EOF: stop after the message in hand
    child → daemon  "ready" once it handles signals; "taking SPOOL_ID" and "left SPOOL_ID"
                    around each message; "queued" after a transaction queued mail (wake the sender)
A child counts its messages for /metrics itself, in the instance's counter file, as every
process does (mailgate.metrics).
A child also stops on SIGTERM (systemd signals the whole control group) and reloads on SIGHUP.
It dies with the daemon (PR_SET_PDEATHSIG), even when stuck where EOF is never read; at a
shutdown one that does not finish within STOP_SECONDS is killed.

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
from dataclasses import dataclass
from typing import Callable

import tenacity

from mailgate import config as config_module
from mailgate.app import App, configure_logging
from mailgate.core.aio import wait_any, wait_seconds
from mailgate.core.budget import Budget, cpu_seconds, die_with_parent, limit_memory, release_memory_promptly
from mailgate.core.runner import MAX_DEATHS, Runner
from mailgate.core.spool import Disposition
from mailgate.db import run_blocking

log = logging.getLogger("mailgate.workers")

STOP_SECONDS = 10  # at shutdown a child finishes the message in hand within this, else it is killed
RECYCLE_EXIT = 3  # a child that ran out of memory ends with this after its message: a fresh one takes over
POLL_SECONDS = 0.1  # how often the CPU time of a child working on a message is looked at
HEALTHY_SECONDS = 60  # a child that lived this long died of something new: restart at once
_RESTART = tenacity.wait_exponential_jitter(multiplier=0.5, max=30, jitter=0.5)


@dataclass
class _Held:
    """A message a child reported taking: its CPU time then, and whether another was worked
    beside it meanwhile (then an overrun may be the neighbour's fault)."""

    cpu_at_start: float
    shared: bool = False


class WorkerPool:
    """The daemon's side: keeps COUNT children running, wakes them, gathers their results,
    and holds each message to its budget (mailgate.core.budget)."""

    def __init__(self, app: App, count: int, on_claim: Callable[[str, bool], None] | None = None):
        self.app = app
        self.count = count
        self.on_claim = on_claim  # (spool_id, True) when a child takes a message, False when it lets go
        self.budget = Budget.of(app.config)
        self.runner = Runner(app)  # decides about a message whose worker was killed over it
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._ready: set[int] = set()  # children that handle SIGHUP (the default would kill them)
        self._reload_when_ready: set[int] = set()
        self._holding: dict[int, dict[str, _Held]] = {}  # pid → the messages it is working on
        self._overran: dict[int, str] = {}  # pid → the message it was killed for

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

    def kill_all(self) -> None:
        """The last word of a shutdown: no child outlives the daemon."""
        for child in list(self._children.values()):
            if child.returncode is None:
                log.warning("processing worker pid %d still running at exit; killed", child.pid)
                child.kill()

    async def run(self, stopping: asyncio.Event) -> None:
        await asyncio.gather(*(self._keep_running(n, stopping) for n in range(self.count)))

    async def _keep_running(self, n: int, stopping: asyncio.Event) -> None:
        """Child number N, started again whenever it ends, until STOPPING; the backoff grows
        while children die young and starts over after one that lived a while. One killed for
        overrunning the budget is replaced at once: it was not ill, its message was."""
        deaths = 0
        while not stopping.is_set():
            started = time.monotonic()
            try:
                child = await self._start()
            except OSError as e:
                log.error("cannot start processing worker %d: %s", n, e)
                pid, code, held, overran = None, None, {}, None
            else:
                pid, code = child.pid, await self._supervise(child, stopping)
                held, overran = self._holding.pop(pid, {}), self._overran.pop(pid, None)
            if overran is not None:
                await self._settle_overrun(overran, held)
                continue
            if code == RECYCLE_EXIT and not stopping.is_set():
                # Not ill, but its heap is fragmented past what the next big message needs.
                log.warning("processing worker %d (pid %d) ran out of memory; a fresh one takes over", n, pid)
                await self._put_back(held, Disposition.WAIT)
                deaths = 1 if time.monotonic() - started > HEALTHY_SECONDS else deaths + 1
                if deaths > 1:  # a fresh child ran out again at once: no tight loop
                    await wait_any(stopping, timeout=wait_seconds(_RESTART, deaths))
                continue
            if code == 0:  # it was told to stop (systemd signals the whole group): so are we, soon
                await wait_any(stopping, timeout=STOP_SECONDS)
            if stopping.is_set():
                await self._put_back(held, Disposition.WAIT)  # killed at the stop bound: not its fault
                break
            deaths = 1 if time.monotonic() - started > HEALTHY_SECONDS else deaths + 1
            if pid is not None:
                log.error("processing worker %d (pid %d) exited with %s; starting another", n, pid, code)
                if await self._put_back(held, Disposition.DIED):
                    log.error("spool_id=%s was in hand when worker pid %d died; put back (it is quarantined "
                              "after %d such deaths)", ", ".join(sorted(held)), pid, MAX_DEATHS)
            await wait_any(stopping, timeout=wait_seconds(_RESTART, deaths))

    async def _put_back(self, spool_ids, disposition: Disposition) -> int:
        return sum([await run_blocking(self.app.spool.note_death, spool_id, disposition)
                    for spool_id in sorted(spool_ids)])

    async def _settle_overrun(self, spool_id: str, held: dict[str, _Held]) -> None:
        """The worker was killed over SPOOL_ID: the runner decides about it; what else it held
        goes back uncounted."""
        await self._put_back(set(held) - {spool_id}, Disposition.WAIT)
        claim = await run_blocking(self.app.spool.take_orphan, spool_id)
        if claim is None:  # finished after all
            return
        shared = held[spool_id].shared if spool_id in held else False
        handled = await run_blocking(self.runner.over_budget, claim, self.budget.describe_overrun(), shared)
        await run_blocking(self.app.spool.settle, claim, handled.disposition)
        self._tell(spool_id, False)

    async def _start(self) -> asyncio.subprocess.Process:
        source = self.app.config.source
        # -P: the installed package, never a `mailgate` in the current directory.
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-m", "mailgate.serve.workers", *(["--config", source] if source else []),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        self._children[child.pid] = child
        return child

    async def _supervise(self, child: asyncio.subprocess.Process, stopping: asyncio.Event) -> int:
        """Read CHILD's reports until it exits, holding its messages to the budget; at STOPPING,
        close its input and let it finish within STOP_SECONDS, else kill it."""
        reports = asyncio.create_task(self._read_reports(child))
        stop = asyncio.create_task(stopping.wait())
        watch = asyncio.create_task(self._watch_budget(child))
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
            if child.returncode is None:  # cancelled: it must not outlive us
                child.kill()
            for task in (stop, watch):
                task.cancel()
            self._children.pop(child.pid, None)
            self._ready.discard(child.pid)
            self._reload_when_ready.discard(child.pid)

    async def _watch_budget(self, child: asyncio.subprocess.Process) -> None:
        """Kill CHILD when the message it took first has cost it more CPU than the budget."""
        while child.returncode is None:
            await asyncio.sleep(POLL_SECONDS)
            spent = cpu_seconds(child.pid)
            held = self._holding.get(child.pid)
            if spent is None or not held:
                continue
            spool_id, first = min(held.items(), key=lambda item: item[1].cpu_at_start)
            if spent - first.cpu_at_start > self.budget.seconds:
                log.error("spool_id=%s: %s; worker pid %d killed", spool_id, self.budget.describe_overrun(), child.pid)
                self._overran[child.pid] = spool_id
                child.kill()
                return

    async def _read_reports(self, child: asyncio.subprocess.Process) -> None:
        while line := await child.stdout.readline():
            kind, _, rest = line.decode("ascii", "replace").strip().partition(" ")
            if kind == "ready":
                self._ready.add(child.pid)
                if child.pid in self._reload_when_ready:
                    child.send_signal(signal.SIGHUP)
            elif kind == "taking":
                self._taking(child.pid, rest)
                self._tell(rest, True)
            elif kind == "left":
                self._holding.get(child.pid, {}).pop(rest, None)
                self._tell(rest, False)
            elif kind == "queued" and self.app.on_outbound_queued is not None:
                self.app.on_outbound_queued()

    def _tell(self, spool_id: str, working: bool) -> None:
        if self.on_claim is not None:
            self.on_claim(spool_id, working)

    def _taking(self, pid: int, spool_id: str) -> None:
        held = self._holding.setdefault(pid, {})
        entry = _Held(cpu_seconds(pid) or 0.0, shared=bool(held))
        for other in held.values():
            other.shared = True
        held[spool_id] = entry


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

    # the call the notifications make on App.on_outbound_queued
    def queued(self) -> None:
        self.send("queued")

    def on_claim(self, spool_id: str, working: bool) -> None:
        self.send(f"{'taking' if working else 'left'} {spool_id}")


async def _serve_child(app: App, reports: "_Reports") -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    runner = Runner(app, on_claim=reports.on_claim, on_memory_exhausted=stopping.set).warm_up()
    limit_memory(Budget.of(app.config).memory)  # from what a ready worker holds (see core.budget)
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
    return RECYCLE_EXIT if runner.memory_exhausted else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailgate.serve.workers",
                                     description="a processing worker of `mailgate serve` (started by it)")
    parser.add_argument("--config")
    args = parser.parse_args(argv)
    die_with_parent()  # also while stuck in C code, where the EOF of stdin is never read
    release_memory_promptly()
    config = config_module.load(args.config) if args.config else config_module.Config()
    configure_logging(config)
    reports = _Reports(sys.stdout.fileno())
    app = App(config, on_outbound_queued=reports.queued)
    return asyncio.run(_serve_child(app, reports))


if __name__ == "__main__":
    sys.exit(main())
