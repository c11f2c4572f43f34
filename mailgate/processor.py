"""The loop around the pipeline: claim from the spool, process, retry, quarantine.

A stage that fails for a passing reason (the database is unreachable or locked) keeps the
message and tries again with backoff, logging the outage once. A message whose processing
raises anything else is put back with its attempt counted; after `processing.max_attempts`
it is quarantined — kept, listed by `mailgate inbox list`, reprocessable — so one bad
message never blocks the ones behind it. (Mailman's core/runner.py, in small.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Callable

import sqlalchemy as sa
import tenacity

from mailgate.aio import wait_any
from mailgate.app import App
from mailgate.db import run_blocking
from mailgate.pipeline import Deferred, Pipeline, Result
from mailgate.spool import Claim

log = logging.getLogger("mailgate.processor")

ORPHAN_SCAN_SECONDS = 60
# A message in hand when its worker process died this often is quarantined unparsed (only with
# [processing] processes > 1, where the daemon sees a worker die; see mailgate.workers).
MAX_DEATHS = 3
# A reply whose ticket is not found while older mail is still in the spool waits for it at
# most this many times (each until the next pass over the spool, a second at most when idle).
MAX_DEFERRALS = 20


class Transient(Exception):
    """Processing could not happen now; the message is kept and tried again later."""


def is_transient(error: BaseException) -> bool:
    # OperationalError: the server went away, SQLite is locked, a connection failed.
    # DBAPIError with connection_invalidated: the pool lost its connection mid-statement.
    return isinstance(error, sa.exc.OperationalError) or (
        isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated
    ) or isinstance(error, sa.exc.TimeoutError)


class Processor:
    def __init__(self, app: App, pipeline: Pipeline | None = None,
                 in_hand: Callable[[str, bool], None] | None = None):
        self.app = app
        self.in_hand = in_hand  # (spool_id, True) when claimed, (spool_id, False) when let go
        self.spool = app.spool
        self.pipeline = pipeline or Pipeline(app)
        self.max_attempts = app.config.processing.max_attempts
        self.wake = asyncio.Event()
        self._isolation = _Isolation()
        self._outage = False

    def on_spooled(self) -> None:
        """A message is in the spool (the listener and the mailboxes call this)."""
        self.wake.set()

    # --- one message (blocking; also used by `mailgate deliver`) -----------------------

    def handle(self, claim: Claim, may_defer: bool = False) -> Result | None:
        """Process a claimed message. Returns its result, or None when it was put back to be
        tried again; raises Transient (the claim kept) when the database is unavailable.
        MAY_DEFER lets a reply whose ticket is not found yet wait for older spooled mail."""
        if claim.envelope.deaths >= MAX_DEATHS:
            # Not parsed again: parsing may be what kills the process.
            return self._quarantine(claim, f"a processing worker process died {claim.envelope.deaths} times "
                                           "with this message in hand", parse=False)
        older_first = (lambda: claim.envelope.deferrals < MAX_DEFERRALS
                       and self.spool.has_older(claim.spool_id)) if may_defer else None
        try:
            result = self.pipeline.process(claim.spool_id, claim.envelope, claim.raw, older_first)
        except Deferred:
            claim.envelope.deferrals += 1
            self.spool.release(claim, count_attempt=False, rewrite=True)
            return None
        except Exception as e:
            if is_transient(e):
                raise Transient(str(e).splitlines()[0]) from e
            return self._failed(claim, e)
        self.spool.done(claim)
        return result

    def _failed(self, claim: Claim, error: Exception) -> Result | None:
        attempts = claim.envelope.attempts + 1
        text = f"{type(error).__name__}: {error}"
        log.error("processing failed (attempt %d of %d) spool_id=%s: %s",
                  attempts, self.max_attempts, claim.spool_id, text.splitlines()[0][:300])
        if attempts < self.max_attempts:
            self.spool.release(claim)
            return None
        claim.envelope.attempts = attempts
        return self._quarantine(claim, text)

    def _quarantine(self, claim: Claim, text: str, parse: bool = True) -> Result:
        try:
            result = self.pipeline.quarantine(claim.spool_id, claim.envelope, claim.raw, text, parse)
        except Exception as e:
            if is_transient(e):
                raise Transient(str(e).splitlines()[0]) from e
            raise
        self.spool.done(claim)
        return result

    # --- the daemon's loop -------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Process spooled messages until STOPPING is set, then finish the one in hand."""
        try:
            recovered = await run_blocking(self.spool.recover)
        except Exception as e:  # the orphan scan tries again later
            log.error("cannot recover messages left in progress: %s", _one_line(e))
            recovered = 0
        if recovered:
            log.warning("recovered %d message(s) left in progress by an earlier run", recovered)
        workers = [asyncio.create_task(self._worker(stopping)) for _ in range(self.app.config.processing.workers)]
        scan = asyncio.create_task(self._orphan_scan(stopping))
        await asyncio.gather(*workers)
        scan.cancel()

    async def _worker(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                handled = await self._drain(stopping)
            except Exception as e:  # the spool itself is failing (directory gone, I/O error)
                log.error("cannot read the spool: %s", _one_line(e))
                handled = 0
            if not handled:
                self.wake.clear()
                await wait_any(stopping, self.wake, timeout=1.0)

    async def _drain(self, stopping: asyncio.Event) -> int:
        handled = 0
        for spool_id in await run_blocking(self.spool.waiting):
            if stopping.is_set():
                break
            claim = await run_blocking(self.spool.claim, spool_id)
            if claim is None:
                continue
            try:
                async with self._isolation.slot(alone=claim.envelope.deaths > 0):
                    with self._in_hand(spool_id):
                        if await self._handle_with_retry(claim, stopping) is None:
                            continue  # put back (deferred, or failed once): not done, so no hurry
            except Exception as e:
                # Not even quarantining worked. The worker must live on for the messages behind
                # this one; the message stays in cur/, where the orphan scan finds it again.
                log.error("processing spool_id=%s failed, left in the spool: %s", spool_id, _one_line(e))
                log.debug("processing spool_id=%s failed", spool_id, exc_info=True)
                claim.close()
            handled += 1
        return handled

    @contextlib.contextmanager
    def _in_hand(self, spool_id: str):
        """Tell IN_HAND while a message is being worked (not while it waits its turn)."""
        if self.in_hand:
            self.in_hand(spool_id, True)
        try:
            yield
        finally:
            if self.in_hand:
                self.in_hand(spool_id, False)

    async def _handle_with_retry(self, claim: Claim, stopping: asyncio.Event) -> Result | None:
        """Handle CLAIM, waiting out a database outage — but not a shutdown: then the message
        goes back to the spool (no attempt counted) for the next start. None when it was put
        back."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(Transient),
            stop=lambda state: stopping.is_set(),
            wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=30),
            sleep=lambda seconds: wait_any(stopping, timeout=seconds),
            before_sleep=self._outage_started,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    result = await run_blocking(self.handle, claim, True)
        except Transient:  # stopping during an outage
            await run_blocking(self.spool.release, claim, False)
            return None
        except asyncio.CancelledError:
            await run_blocking(self.spool.release, claim, False)
            raise
        if self._outage:
            self._outage = False
            log.warning("database reachable again; processing resumed")
        return result

    def _outage_started(self, state: tenacity.RetryCallState) -> None:
        if not self._outage:  # an outage is logged once, not once per try
            self._outage = True
            log.error("database unavailable, messages stay in the spool: %s", state.outcome.exception())

    async def _orphan_scan(self, stopping: asyncio.Event) -> None:
        """Pick up messages a crashed `mailgate deliver` left in cur/."""
        while not stopping.is_set():
            await wait_any(stopping, timeout=ORPHAN_SCAN_SECONDS)
            if stopping.is_set():
                break
            try:
                recovered = await run_blocking(self.spool.recover, ORPHAN_SCAN_SECONDS)
            except Exception as e:
                log.error("cannot scan the spool for orphaned messages: %s", _one_line(e))
                continue
            if recovered:
                log.warning("recovered %d message(s) left in progress by a process that died", recovered)
                self.wake.set()


class _Isolation:
    """A message that was in hand when a worker process died is processed alone in its process:
    if it kills the process again, it takes no innocent neighbour along (which would otherwise
    collect deaths too, claimed next to it time after time). Other messages wait meanwhile."""

    def __init__(self):
        self._changed = asyncio.Condition()
        self._running = 0
        self._alone = False
        self._waiting_alone = 0

    @contextlib.asynccontextmanager
    async def slot(self, alone: bool):
        async with self._changed:
            if alone:
                self._waiting_alone += 1
                await self._changed.wait_for(lambda: not self._alone and self._running == 0)
                self._waiting_alone -= 1
                self._alone = True
            else:
                await self._changed.wait_for(lambda: not self._alone and not self._waiting_alone)
            self._running += 1
        try:
            yield
        finally:
            async with self._changed:
                self._running -= 1
                if alone:
                    self._alone = False
                self._changed.notify_all()


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}"
