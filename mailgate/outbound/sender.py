"""The sender: empties the outbox (SPEC §7) inside `serve`, and once for `outbox flush`.

A pass fails rows past the maximum age, then claims due rows in batches (one transaction
each; a lease of two deliveries' worth, renewed while the batch is worked) and hands them one
by one to the transport — the relay, or the outbox Maildir when no relay is configured:
    delivered              → sent
    PermanentFailure (5xx) → failed, the reply kept in last_error
    TemporaryFailure (4xx) → queued again with backoff and jitter, failed after max_age_hours
    Outage                 → the same for this row; the pass ends, the outage is logged once
Between passes the sender sleeps until woken (a transaction queued mail), until the next
row falls due, or for `outbound.poll_seconds` — during an outage for the backoff instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa

from mailgate.core.aio import OutageLog, wait_any
from mailgate.app import App
from mailgate.db import run_blocking
from mailgate.errors import first_line, is_transient
from mailgate.models import utcnow
from mailgate.outbound import claims
from mailgate.outbound.errors import Outage, PermanentFailure, TemporaryFailure
from mailgate.outbound.maildir import MaildirTransport
from mailgate.outbound.relay import Relay

log = logging.getLogger("mailgate.outbound")

MIN_PAUSE_SECONDS = 0.05
CLAIM_BATCH = 20  # rows leased in one transaction


@dataclass
class SendReport:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    expired: int = 0
    outage: str | None = None


class Sender:
    def __init__(self, app: App):
        self.app = app
        self.cfg = app.config.outbound
        self.db = app.db
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._relay_outage = OutageLog(log)  # the relay (or the Maildir) cannot take mail
        self._database_outage = OutageLog(log)  # the outbox itself cannot be read

    # --- entry points ------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Send due mail until STOPPING is set; the message in hand is finished first."""
        self._loop = asyncio.get_running_loop()
        await self._take_back_dead_claims()
        while not stopping.is_set():
            self._wake.clear()
            try:
                await self._pass(stopping)
                self._database_outage.recovered("outbox reachable again after {seconds:.0f}s; sending resumed")
            except Exception as e:  # the database is away, or a bug: never end the loop
                self._pass_failed(e)
            await self._pause(stopping)

    async def flush(self) -> SendReport:
        """One pass: send what is due now, then return (`mailgate outbox flush`)."""
        await self._take_back_dead_claims()
        return await self._pass(asyncio.Event())

    def wake_threadsafe(self) -> None:
        """Wake the sender from any thread (the processor's, after a commit)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _take_back_dead_claims(self) -> None:
        try:
            count = await run_blocking(claims.release_dead_claims, self.db, utcnow())
        except sa.exc.SQLAlchemyError as e:  # the database is away: leases run out by themselves
            self._pass_failed(e)
            return
        if count:
            log.warning("took back %d message(s) a crashed sender on this host had claimed", count)

    # --- one pass ----------------------------------------------------------------------

    async def _pass(self, stopping: asyncio.Event) -> SendReport:
        report = SendReport()
        report.expired = await run_blocking(claims.expire, self.db, utcnow(), self.cfg.max_age_hours)
        transport = self._transport()
        try:
            while not stopping.is_set():
                claimed_at = time.monotonic()
                batch = await run_blocking(
                    claims.claim_due, self.db, utcnow(), 2 * self._lease, self.app.config.from_address, CLAIM_BATCH,
                )
                if not batch or not await self._deliver_batch(transport, batch, claimed_at, report, stopping):
                    break
        finally:
            await transport.close()
        return report

    async def _deliver_batch(self, transport, batch: list[claims.Claimed], claimed_at: float,
                             report: SendReport, stopping: asyncio.Event) -> bool:
        """Deliver a claimed batch in order, renewing its lease whenever less than one
        delivery's worth is left; rows not reached (shutdown, outage) are given back at once.
        False when the pass should end."""
        held_until = claimed_at + 2 * self._lease
        pending = list(batch)
        try:
            while pending and not stopping.is_set():
                if held_until - time.monotonic() < self._lease:
                    renewed_at = time.monotonic()
                    pending = await run_blocking(
                        claims.renew, self.db, pending, utcnow() + timedelta(seconds=2 * self._lease))
                    held_until = renewed_at + 2 * self._lease
                    continue
                claim = pending.pop(0)
                if not await self._deliver(transport, claim, report):
                    return False
            return not stopping.is_set()
        finally:
            if pending:
                await run_blocking(claims.release, self.db, pending)

    @property
    def _lease(self) -> float:
        return claims.lease_seconds(self.cfg)

    async def _deliver(self, transport, claim: claims.Claimed, report: SendReport) -> bool:
        """Deliver one claimed row and record the result; False when the pass should end."""
        started = time.monotonic()
        try:
            await transport.send(claim.id, claim.envelope_sender, claim.recipient, claim.message)
        except asyncio.CancelledError:
            await run_blocking(claims.release, self.db, [claim])  # shutdown: let the next run have it
            raise
        except PermanentFailure as e:
            self.app.metrics.send_failed(permanent=True)
            await self._record(claims.mark_failed, claim, str(e))
            report.failed += 1
            self._log(claim, "failed", started, e)
            return True
        except TemporaryFailure as e:
            self.app.metrics.send_failed(permanent=False)
            status = await self._retry_later(claim, e)
            report.deferred += status == "deferred"
            report.failed += status == "failed"
            self._log(claim, status, started, e)
            if isinstance(e, Outage):
                self._outage_started(transport, e)
                report.outage = str(e)
                return False
            return True
        await self._record(claims.mark_sent, claim, utcnow())
        report.sent += 1
        self._log(claim, "sent", started)
        self._outage_over(transport)
        return True

    async def _retry_later(self, claim: claims.Claimed, error: TemporaryFailure) -> str:
        when = claims.retry_at(claim, self.cfg, utcnow())
        if when is None:
            await self._record(claims.mark_failed, claim, f"not delivered within {self.cfg.max_age_hours:g} h: {error}")
            return "failed"
        await self._record(claims.defer, claim, str(error), when)
        return "deferred"

    async def _record(self, mark, claim: claims.Claimed, *args) -> None:
        if not await run_blocking(mark, self.db, claim, *args):
            log.warning("outbound id=%d: lease lost before the result was recorded (another sender took it)", claim.id)

    def _transport(self):
        if self.cfg.relay_host:
            return Relay(self.cfg, self.app.oauth.relay)
        return MaildirTransport(self.app.config.state_dir / "outbox")

    # --- waiting -----------------------------------------------------------------------

    async def _pause(self, stopping: asyncio.Event) -> None:
        if self._relay_outage.down:  # woken or not, the relay needs its rest
            await wait_any(stopping, timeout=claims.backoff(self._relay_outage.failures, self.cfg))
            return
        await wait_any(stopping, self._wake, timeout=await self._until_due())

    async def _until_due(self) -> float:
        try:
            due = await run_blocking(claims.next_due, self.db, utcnow())
        except sa.exc.SQLAlchemyError:
            return self.cfg.poll_seconds
        if due is None:
            return self.cfg.poll_seconds
        # The floor keeps a row that another instance claims first from making us spin.
        return min(max((due - utcnow()).total_seconds(), MIN_PAUSE_SECONDS), self.cfg.poll_seconds)

    # --- logging: one line per message, an outage once ---------------------------------

    def _log(self, claim: claims.Claimed, status: str, started: float, error: Exception | None = None) -> None:
        quiet = isinstance(error, Outage) and self._relay_outage.down
        log.log(logging.DEBUG if quiet else logging.INFO, "outbound id=%d to=%s status=%s ms=%.0f%s",
                claim.id, claim.recipient, status, (time.monotonic() - started) * 1000,
                f" error={error}" if error else "")

    def _outage_started(self, transport, error: Outage) -> None:
        self._relay_outage.failed(f"{transport.name} unavailable: {error}; mail stays queued and is retried")

    def _outage_over(self, transport) -> None:
        self._relay_outage.recovered(f"{transport.name} reachable again after {{seconds:.0f}}s; sending resumed")

    def _pass_failed(self, error: Exception) -> None:
        if not is_transient(error):
            log.exception("sender pass failed; trying again")  # a bug: every time, with its traceback
            return
        self._database_outage.failed(f"outbox unreachable (database): {first_line(error)}; retrying")
