"""The loop around the pipeline (Mailman's core/runner.py, in small): claim a message from the
spool, decide what becomes of it, settle it.

`Runner.handle` is the one place that decides a claimed message's `Disposition`, and the one
catch-all around processing; `Spool.settle` is the one place that applies it:

    processed and committed (whatever the outcome)          → DONE
    a reply whose ticket may still wait in the spool        → DEFER (older mail goes first)
    the database is away or locked                          → WAIT (the daemon's loop keeps the
                                                               claim and waits the outage out)
    anything else raised                                    → RETRY, and after
                                                               `processing.max_attempts` failures
                                                               quarantined (kept, listed,
                                                               reprocessable) → DONE
    in hand at MAX_DEATHS deaths of its worker process      → quarantined unparsed → DONE
    over its budget (MemoryError here; out of time: the     → quarantined unparsed at once → DONE,
      pool or `deliver` stopped its process, `over_budget`)    but → ALONE when other messages were
                                                               worked beside it (it may have been
                                                               their fault): next time it is
                                                               worked alone
    not even the quarantine could be recorded               → LEAVE (the orphan scan retries)

So one bad message never blocks the ones behind it, and none is silently dropped.
`run_once` is the loop's body without the loop, for tests and commands (Mailman's
make_testable_runner); `run` is the daemon's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Callable

import tenacity

from mailgate.app import App
from mailgate.core.aio import OutageLog, wait_any, wait_seconds
from mailgate.core.pipeline import Deferred, Pipeline, Result
from mailgate.core.spool import Claim, Disposition
from mailgate.db import run_blocking
from mailgate.errors import first_line, is_transient

log = logging.getLogger("mailgate.runner")

ORPHAN_SCAN_SECONDS = 60
# A message in hand when its worker process died this often is quarantined unparsed (with
# worker processes, where the daemon sees a worker die; see mailgate.serve.workers).
MAX_DEATHS = 3
# A reply whose ticket is not found while older mail is still in the spool waits for it at
# most this many times (each until the next pass over the spool, a second at most when idle).
MAX_DEFERRALS = 20
_OUTAGE_BACKOFF = tenacity.wait_exponential_jitter(multiplier=0.5, max=30)


@dataclass
class Handled:
    """What `Runner.handle` decided about one claimed message."""

    disposition: Disposition
    result: Result | None = None  # the pipeline's result, when DONE
    error: str | None = None  # why not, otherwise


class Runner:
    def __init__(self, app: App, pipeline: Pipeline | None = None,
                 on_claim: Callable[[str, bool], None] | None = None,
                 on_memory_exhausted: Callable[[], None] | None = None):
        self.app = app
        self.spool = app.spool
        self.pipeline = pipeline or Pipeline(app)
        # (spool_id, True) when a message is taken into work, (spool_id, False) when let go:
        # a worker process reports this to the daemon, which counts deaths against it.
        self.on_claim = on_claim
        # A worker under a memory limit that ran out of memory has a heap that may no longer
        # take a message of the size allowed (freed memory stays fragmented): told so, it
        # ends after the message in hand and the daemon starts a fresh one.
        self.on_memory_exhausted = on_memory_exhausted
        self.memory_exhausted = False
        self.handled = 0  # messages taken into work by this runner (a fresh worker has taken none)
        self.wake = asyncio.Event()
        self._isolation = _Isolation()
        self._outage = OutageLog(log)

    def on_spooled(self) -> None:
        """A message is in the spool (the listener and the mailboxes call this)."""
        self.wake.set()

    def warm_up(self) -> "Runner":
        """Do at start what the first message would otherwise do inside its transaction (which,
        on SQLite, holds the write lock): import the parsing and notification modules, load the
        secret, compile the templates, read the public suffix list and run the email package's
        header machinery once."""
        from mailgate.mail import domains
        from mailgate.models import utcnow
        from mailgate.notify.render import Headers

        domains.organisational("warm-up.example.co.uk")  # builds the public suffix trie
        renderer = self.app.renderer
        renderer.warm_up()
        renderer.mail("unknown_sender_notice", ("en",), {"address": "warm-up@example.com"},
                      Headers(subject="warm-up", to_address="warm-up@example.com", to_name="Wärm Up",
                              message_id=self.app.signer.message_id("SD-0")),
                      utcnow())
        return self

    # --- one message (blocking) ----------------------------------------------------------

    def handle(self, claim: Claim, may_defer: bool = False,
               in_company: Callable[[], bool] = lambda: False) -> Handled:
        """Decide what becomes of CLAIM; never raises. MAY_DEFER lets a reply whose ticket is
        not found yet wait for older spooled mail (the daemon's loop; the pipe path has none).
        IN_COMPANY tells, afterwards, whether other messages were worked beside it."""
        if claim.envelope.deaths >= MAX_DEATHS:
            # Not parsed again: parsing may be what kills the process.
            return self._quarantine(claim, f"a processing worker process died {claim.envelope.deaths} times "
                                           "with this message in hand")
        worked_others = self.handled > 0
        self.handled += 1
        try:
            result = self.pipeline.process(claim.spool_id, claim.envelope, claim.raw,
                                           self._older_first(claim) if may_defer else None)
        except Deferred:
            return Handled(Disposition.DEFER)
        except MemoryError:
            self.memory_exhausted = True
            # A worker that worked other messages before may have lost the room to them
            # (fragmentation): with a fresh worker coming, the message gets one more try there.
            recycled = worked_others and self.on_memory_exhausted is not None
            return self.over_budget(claim, "over the processing budget: out of memory", in_company() or recycled)
        except Exception as e:
            if is_transient(e):
                return Handled(Disposition.WAIT, error=first_line(e))
            return self._failed(claim, e)
        return Handled(Disposition.DONE, result)

    def over_budget(self, claim: Claim, why: str, in_company: bool = False) -> Handled:
        """CLAIM blew its budget (WHY). Worked beside other messages, the budget may have been
        eaten by them: back, to be worked alone. Alone, it is quarantined at once, unparsed —
        parsing may be what blows it."""
        if in_company and not claim.envelope.alone:
            log.warning("spool_id=%s %s beside other messages (or after them, in one worker); it is worked "
                        "alone next", claim.spool_id, why)
            return Handled(Disposition.ALONE, error=why)
        log.error("spool_id=%s %s; quarantined", claim.spool_id, why)
        return self._quarantine(claim, why)

    def _older_first(self, claim: Claim) -> Callable[[], bool]:
        return lambda: claim.envelope.deferrals < MAX_DEFERRALS and self.spool.has_older(claim.spool_id)

    def _failed(self, claim: Claim, error: Exception) -> Handled:
        attempts = claim.envelope.attempts + 1
        text = f"{type(error).__name__}: {error}"
        log.error("processing failed (attempt %d of %d) spool_id=%s: %s",
                  attempts, self.app.config.processing.max_attempts, claim.spool_id, first_line(error, with_type=True))
        if attempts < self.app.config.processing.max_attempts:
            return Handled(Disposition.RETRY, error=text)
        claim.envelope.attempts = attempts
        return self._quarantine(claim, text)

    def _quarantine(self, claim: Claim, text: str) -> Handled:
        try:
            result = self.pipeline.quarantine(claim.spool_id, claim.envelope, claim.raw, text)
        except Exception as e:
            if is_transient(e):
                return Handled(Disposition.WAIT, error=first_line(e))
            log.error("cannot quarantine spool_id=%s, left in the spool: %s", claim.spool_id,
                      first_line(e, with_type=True))
            log.debug("quarantining spool_id=%s failed", claim.spool_id, exc_info=True)
            return Handled(Disposition.LEAVE, error=first_line(e, with_type=True))
        return Handled(Disposition.DONE, result)

    def run_once(self, may_defer: bool = False) -> list[tuple[str, Handled]]:
        """Handle and settle each message waiting in the spool now, once: the loop's body
        without the loop (tests, and commands that drain the spool)."""
        done = []
        for spool_id in self.spool.waiting():
            claim = self.spool.claim(spool_id)
            if claim is None:
                continue
            handled = self.handle(claim, may_defer)
            self.spool.settle(claim, handled.disposition)
            done.append((spool_id, handled))
        return done

    # --- the daemon's loop -------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Process spooled messages until STOPPING is set, then finish the ones in hand."""
        try:
            recovered = await run_blocking(self.spool.recover)
        except Exception as e:  # the orphan scan tries again later
            log.error("cannot recover messages left in progress: %s", first_line(e, with_type=True))
            recovered = 0
        if recovered:
            log.warning("recovered %d message(s) left in progress by an earlier run", recovered)
        lanes = [asyncio.create_task(self._lane(stopping)) for _ in range(self.app.config.processing.threads)]
        scan = asyncio.create_task(self._orphan_scan(stopping))
        await asyncio.gather(*lanes)
        scan.cancel()

    async def _lane(self, stopping: asyncio.Event) -> None:
        """One of `processing.threads` claims worked at the same time."""
        while not stopping.is_set():
            try:
                handled = await self._drain(stopping)
            except MemoryError:  # a message could not even be read in: it is back in the spool
                log.error("out of memory reading a message from the spool; it waits for a process with room")
                self.memory_exhausted, handled = True, 0
            except Exception as e:  # the spool itself is failing (directory gone, I/O error)
                log.error("cannot read the spool: %s", first_line(e, with_type=True))
                handled = 0
            if self.memory_exhausted and self.on_memory_exhausted is not None:
                self.on_memory_exhausted()
                return
            if not handled:
                self.wake.clear()
                await wait_any(stopping, self.wake, timeout=1.0)

    async def _drain(self, stopping: asyncio.Event) -> int:
        """Claim, handle and settle what waits; the number of messages done."""
        done = 0
        for spool_id in await run_blocking(self.spool.waiting):
            if stopping.is_set() or (self.memory_exhausted and self.on_memory_exhausted is not None):
                break  # out of memory: the rest is for the fresh worker
            claim = await run_blocking(self.spool.claim, spool_id)
            if claim is None:
                continue
            async with self._isolation.slot(alone=claim.envelope.alone) as slot:
                with self._claimed(spool_id):
                    try:
                        handled = await self._handle_waiting_out_outages(claim, stopping, slot)
                    except asyncio.CancelledError:
                        await run_blocking(self.spool.settle, claim, Disposition.WAIT)
                        raise
                    await run_blocking(self.spool.settle, claim, handled.disposition)
            done += handled.disposition is Disposition.DONE  # put back: not done, so no hurry
        return done

    @contextlib.contextmanager
    def _claimed(self, spool_id: str):
        """Tell ON_CLAIM while a message is being worked (not while it waits its turn)."""
        if self.on_claim:
            self.on_claim(spool_id, True)
        try:
            yield
        finally:
            if self.on_claim:
                self.on_claim(spool_id, False)

    async def _handle_waiting_out_outages(self, claim: Claim, stopping: asyncio.Event, slot: "_Slot") -> Handled:
        """Handle CLAIM, keeping it through a database outage — but not through a shutdown:
        then it goes back uncounted (WAIT) for the next start."""
        while True:
            handled = await run_blocking(self.handle, claim, True, lambda: slot.shared)
            if handled.disposition is not Disposition.WAIT:
                self._outage.recovered("database reachable again after {seconds:.0f}s; processing resumed")
                return handled
            if stopping.is_set():
                return handled
            self._outage.failed(f"database unavailable, messages stay in the spool: {handled.error}")
            await wait_any(stopping, timeout=wait_seconds(_OUTAGE_BACKOFF, self._outage.failures))

    async def _orphan_scan(self, stopping: asyncio.Event) -> None:
        """Pick up messages a crashed `mailgate deliver` left in cur/."""
        while not stopping.is_set():
            await wait_any(stopping, timeout=ORPHAN_SCAN_SECONDS)
            if stopping.is_set():
                break
            try:
                recovered = await run_blocking(self.spool.recover, ORPHAN_SCAN_SECONDS)
            except Exception as e:
                log.error("cannot scan the spool for orphaned messages: %s", first_line(e, with_type=True))
                continue
            if recovered:
                log.warning("recovered %d message(s) left in progress by a process that died", recovered)
                self.wake.set()


class _Slot:
    """One message's turn; SHARED once another message was worked beside it."""

    shared = False


class _Isolation:
    """A message that was in hand when a worker process died, or that overran its budget beside
    other messages, is processed alone in its process: if it kills the process (or eats the
    budget) again, it takes no innocent neighbour along (which would otherwise collect deaths
    too, claimed next to it time after time). Other messages wait meanwhile."""

    def __init__(self):
        self._changed = asyncio.Condition()
        self._running: set[_Slot] = set()
        self._alone = False
        self._waiting_alone = 0

    @contextlib.asynccontextmanager
    async def slot(self, alone: bool):
        slot = _Slot()
        async with self._changed:
            if alone:
                self._waiting_alone += 1
                await self._changed.wait_for(lambda: not self._alone and not self._running)
                self._waiting_alone -= 1
                self._alone = True
            else:
                await self._changed.wait_for(lambda: not self._alone and not self._waiting_alone)
            for other in self._running:
                other.shared = slot.shared = True
            self._running.add(slot)
        try:
            yield slot
        finally:
            async with self._changed:
                self._running.discard(slot)
                if alone:
                    self._alone = False
                self._changed.notify_all()
