"""The outbox table as the sender sees it: claim due rows, record what became of each.

Claiming gives a batch of rows a lease (claimed_until) and an owner token (claimed_by) in one
short transaction. On PostgreSQL the row is picked with FOR UPDATE SKIP LOCKED, so senders of
several instances claiming at the same moment take different rows instead of waiting on each
other; on SQLite the transaction holds the database's write lock (BEGIN IMMEDIATE, see
mailgate.db), which serialises claims. A result is recorded only while the lease is still
the claimer's own; a sender that died leaves a lease that expires, and the row is due again.

All functions block; the sender calls them through `run_blocking`.

The sender's bookkeeping — claims, leases, results — is committed without waiting for the disk
(`Database.session(durable=False)`): on SQLite a transaction with fsync per notification
sent held the write lock the processing of mail waits for (issue 16). A crash of the process
loses none of it; a power cut may lose the last results, and those notifications are sent
again — as after a crash between sending and recording, which no ordering avoids.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
import tenacity
from sqlmodel import func, or_, select

from mailgate.core.aio import wait_seconds
from mailgate.config import OutboundConfig
from mailgate.db import Database
from mailgate.models import Outbound, aware

# A claim lasts for this many relay commands' worth of timeouts (connect, EHLO, STARTTLS,
# AUTH, MAIL, RCPT, DATA, the end of data): a lease shorter than one slow delivery would let
# a second sender send the message again.
LEASE_TIMEOUTS = 8


@dataclass(frozen=True)
class Claimed:
    id: int
    recipient: str
    envelope_sender: str
    message: bytes
    attempts: int
    created_at: datetime
    owner: str


def owner_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_seconds(cfg: OutboundConfig) -> float:
    return cfg.timeout_seconds * LEASE_TIMEOUTS + 30


def claim_due(db: Database, now: datetime, lease: float, fallback_sender: str, limit: int = 1) -> list[Claimed]:
    """Lease up to LIMIT of the most overdue rows that nobody holds, all in one transaction
    and under one owner token (a claim per row cost a transaction per mail); [] when nothing
    is due."""
    query = (
        select(Outbound)
        .where(Outbound.status == "queued", Outbound.next_attempt_at <= now,
               or_(Outbound.claimed_until.is_(None), Outbound.claimed_until < now))
        .order_by(Outbound.next_attempt_at, Outbound.id).limit(limit)
    )
    if not db.is_sqlite:
        query = query.with_for_update(skip_locked=True)
    owner = owner_token()
    with db.session(durable=False) as session:
        rows = session.exec(query).all()
        for row in rows:
            row.claimed_until, row.claimed_by = now + timedelta(seconds=lease), owner
            session.add(row)
        return [Claimed(row.id, row.recipient, row.envelope_sender or fallback_sender, row.message,
                        row.attempts, aware(row.created_at), owner) for row in rows]


def renew(db: Database, claims: list[Claimed], until: datetime) -> list[Claimed]:
    """Extend the leases of CLAIMS (one owner's) to UNTIL; returns those still held."""
    if not claims:
        return []
    ids = [c.id for c in claims]
    with db.session(durable=False) as session:
        session.execute(sa.update(Outbound).where(*_held(ids, claims[0].owner)).values(claimed_until=until))
        held = set(session.exec(select(Outbound.id).where(*_held(ids, claims[0].owner))).all())
    return [c for c in claims if c.id in held]


def mark_sent(db: Database, claim: Claimed, now: datetime) -> bool:
    return _finish(db, claim, status="sent", sent_at=now, last_error=None, attempts=claim.attempts + 1)


def mark_failed(db: Database, claim: Claimed, error: str) -> bool:
    return _finish(db, claim, status="failed", last_error=error, attempts=claim.attempts + 1)


def defer(db: Database, claim: Claimed, error: str, next_attempt_at: datetime) -> bool:
    return _finish(db, claim, last_error=error, next_attempt_at=next_attempt_at, attempts=claim.attempts + 1)


def release(db: Database, claims: list[Claimed]) -> int:
    """Give rows of one owner back untried (a shutdown or an outage before their turn)."""
    if not claims:
        return 0
    with db.session(durable=False) as session:
        result = session.execute(
            sa.update(Outbound).where(*_held([c.id for c in claims], claims[0].owner))
            .values(claimed_until=None, claimed_by=None)
        )
        return result.rowcount


def _finish(db: Database, claim: Claimed, **values) -> bool:
    """Record a result, only while CLAIM's lease is still ours; False when it was lost."""
    with db.session(durable=False) as session:
        result = session.execute(
            sa.update(Outbound).where(*_held([claim.id], claim.owner))
            .values(claimed_until=None, claimed_by=None, **values)
        )
        return result.rowcount == 1


def _held(ids: list[int], owner: str) -> tuple:
    """The conditions for rows IDS still leased to OWNER."""
    return Outbound.id.in_(ids), Outbound.claimed_by == owner, Outbound.status == "queued"


def release_dead_claims(db: Database, now: datetime) -> int:
    """Give back at once the leases of senders on this host whose process is gone (a crash),
    instead of waiting for them to run out; a live process's lease is left alone."""
    host = socket.gethostname()
    with db.session(durable=False) as session:
        held = session.exec(
            select(Outbound).where(Outbound.status == "queued", Outbound.claimed_until >= now,
                                   Outbound.claimed_by.like(f"{host}:%"))
        ).all()
        dead = [row for row in held if _owner_is_dead(row.claimed_by, host)]
        for row in dead:
            row.claimed_until = row.claimed_by = None
            session.add(row)
        return len(dead)


def _owner_is_dead(owner: str, host: str) -> bool:
    """Whether OWNER (an owner_token) names a process of HOST that no longer runs."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


def expire(db: Database, now: datetime, max_age_hours: float) -> int:
    """Fail queued rows older than the maximum age that no sender holds (SPEC §7)."""
    cutoff = now - timedelta(hours=max_age_hours)
    with db.session(durable=False) as session:
        rows = session.exec(
            select(Outbound).where(Outbound.status == "queued", Outbound.created_at < cutoff,
                                   or_(Outbound.claimed_until.is_(None), Outbound.claimed_until < now))
        ).all()
        for row in rows:
            row.status = "failed"
            row.last_error = f"not delivered within {max_age_hours:g} h" + (f": {row.last_error}" if row.last_error else "")
            row.claimed_until = row.claimed_by = None
            session.add(row)
        return len(rows)


class NotRetryable(ValueError):
    """An outbound row that `outbox retry` cannot make due (unknown, sent or bounced)."""


def make_due(db: Database, now: datetime, row_id: int | None = None) -> int:
    """`mailgate outbox retry`: make queued rows due now — ROW_ID, or every queued row when it
    is None; a lease a sender holds is left alone (that row is being tried right now).

    A `failed` row named by its id is queued again with a fresh age: created_at becomes now,
    so it gets the whole `max_age_hours` once more (a failed row is old, or failed by a 5xx,
    and the operator who retries it has fixed the cause). `--all` touches no failed row: a
    mass retry of failures would resend what a relay refused on purpose. Sent and bounced
    rows are final (a bounce means the address refused it)."""
    with db.session() as session:
        if row_id is None:
            result = session.execute(
                sa.update(Outbound).where(Outbound.status == "queued").values(next_attempt_at=now))
            return result.rowcount
        row = session.get(Outbound, row_id)
        if row is None:
            raise NotRetryable(f"no outbound message {row_id}")
        if row.status in ("sent", "bounced"):
            raise NotRetryable(f"outbound {row_id} is {row.status}; nothing to retry")
        if row.status == "failed":
            row.status, row.created_at, row.claimed_until, row.claimed_by = "queued", now, None, None
        row.next_attempt_at = now
        session.add(row)
        return 1


def next_due(db: Database, now: datetime) -> datetime | None:
    """When a queued row can next be claimed: its next attempt, or, for a row another sender
    holds (or a crashed one left), the end of that lease. Waiting on a held row's
    next_attempt_at instead would make the sender spin until the lease runs out."""
    queued = Outbound.status == "queued"
    free = or_(Outbound.claimed_until.is_(None), Outbound.claimed_until < now)
    with db.session() as session:
        unheld = session.exec(select(func.min(Outbound.next_attempt_at)).where(queued, free)).one()
        held = session.exec(select(func.min(Outbound.claimed_until)).where(queued, ~free)).one()
    times = [aware(t) for t in (unheld, held) if t is not None]
    return min(times) if times else None


def retry_at(claim: Claimed, cfg: OutboundConfig, now: datetime) -> datetime | None:
    """When to try CLAIM again after its failed attempt: exponential backoff with jitter, never
    past the maximum age; None when that age is reached (the row is failed instead)."""
    deadline = claim.created_at + timedelta(hours=cfg.max_age_hours)
    if now >= deadline:
        return None
    return min(now + timedelta(seconds=backoff(claim.attempts + 1, cfg)), deadline)


def backoff(attempt: int, cfg: OutboundConfig) -> float:
    """Seconds to wait after failed attempt number ATTEMPT (1, 2, …)."""
    wait = tenacity.wait_exponential_jitter(
        multiplier=cfg.retry_initial_seconds, max=cfg.retry_max_seconds, jitter=cfg.retry_initial_seconds / 2,
    )
    return wait_seconds(wait, attempt)

