"""Writing rendered mail into the outbox (the transactional outbox of SPEC §7), inside the
caller's transaction.

Each row gets its VERP return path (it needs the row's id, hence the flush) and joins its
ticket's thread, so a reply that references its Message-ID finds the ticket even without the
signature check.

The loop guard (SPEC §5: it delays, never drops, and aims at loops, not at busy
organisations). A mail loop is an address that answers our notifications about a ticket again
and again — an auto-responder that sends no Auto-Submitted, another ticket system: at least
`outbound.loop_replies_per_hour` of its messages became comments on that one ticket within the
last hour, far more than any person writes there. (A loop goes round one conversation, and so
one ticket; a customer who answers on many tickets — or a test suite playing one — is busy, not
looping.) Mail about that ticket to such an address is paced: at most
`outbound.max_per_recipient_per_hour` an hour; the rest stays queued with its next attempt
set to its turn and the reason in `last_error` (`mailgate outbox list` shows both; `outbox
retry` lets them go now), and the first row held back is logged. Nothing is ever failed for
it, a busy organisation that merely receives a lot is never slowed, and a creator's
confirmation of a new ticket (which carries the key to reply with) is never held back, nor is
mail to an agent (SPEC §11: an agent who answers many tickets by mail is working, not looping).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlmodel import Session, func, select

from mailgate.models import Inbound, Outbound, Ticket, aware
from mailgate.outbound import verp
from mailgate.tickets import service

if TYPE_CHECKING:
    from mailgate.notify.render import Rendered

log = logging.getLogger("mailgate.notify")

WINDOW = timedelta(hours=1)
HELD_BACK = "held back by the loop guard"
_OUTBOUND = Outbound.__table__
# One INSERT … VALUES (…), (…) … RETURNING id for all rows of an event, ids in row order.
_INSERT = sa.insert(_OUTBOUND).returning(_OUTBOUND.c.id, sort_by_parameter_order=True)
_SET_ENVELOPE_SENDER = (sa.update(_OUTBOUND).where(_OUTBOUND.c.id == sa.bindparam("row_id"))
                        .values(envelope_sender=sa.bindparam("verp")))


@dataclass(frozen=True)
class Queued:
    """An outbound row just written, as its callers report it."""

    id: int
    event: str
    recipient: str
    message_id: str


def add(session: Session, app, *, ticket: Ticket | None, event: str, recipient: str,
        rendered: "Rendered", now: datetime) -> Queued:
    return add_many(session, app, ticket=ticket, event=event, mails=[(recipient, rendered)], now=now)[0]


def add_many(session: Session, app, *, ticket: Ticket | None, event: str,
             mails: list[tuple[str, "Rendered"]], now: datetime) -> list[Queued]:
    """One row per (recipient, rendered) of one event: the rows in one INSERT (SQLAlchemy Core,
    not the ORM: nothing here is read back as an object), their VERP return paths in one
    UPDATE, their Message-IDs into the ticket's thread in one INSERT, and one loop-guard query
    for all of them. The recipients of one event are distinct."""
    if not mails:
        return []
    # A ticket just opened has no replies yet, so nobody can be looping on it: its mail (the
    # creator's confirmation above all) is never held, and the guard's query is not even asked.
    guarded = set() if event == "ticket_created" else {recipient for recipient, _ in mails} - _agents(app.config)
    turns = _LoopGuard(session, app.config.outbound, now).turns(guarded, ticket)
    values = []
    for recipient, rendered in mails:
        next_attempt_at, last_error = turns.get(recipient, (now, None))
        values.append(dict(
            ticket_id=ticket.id if ticket else None, event=event, recipient=recipient, subject=rendered.subject,
            message_id=rendered.message_id, message=rendered.message, status="queued", attempts=0,
            created_at=now, next_attempt_at=next_attempt_at, last_error=last_error,
        ))
    session.flush()  # what the ORM holds goes first (the ticket the rows point to)
    connection = session.connection()
    ids = connection.execute(_INSERT, values).scalars().all()
    connection.execute(_SET_ENVELOPE_SENDER, [{"row_id": i, "verp": verp.address(app.signer, app.config.from_address, i)}
                                              for i in ids])
    if ticket is not None:
        service.add_many_to_thread(session, ticket, [v["message_id"] for v in values])
    return [Queued(i, event, v["recipient"], v["message_id"]) for i, v in zip(ids, values)]


def _agents(config) -> set[str]:
    return {a.email.lower() for a in config.agents if a.email}


class _LoopGuard:
    def __init__(self, session: Session, cfg, now: datetime):
        self.session, self.now = session, now
        self.replies, self.per_hour = cfg.loop_replies_per_hour, cfg.max_per_recipient_per_hour

    def turns(self, recipients: set[str], ticket: Ticket | None) -> dict[str, tuple[datetime, str]]:
        """For each of RECIPIENTS caught in a loop on TICKET: when its mail may go, and why it
        waits. Mail about no ticket is never held (the unknown-sender notice has its own limits)."""
        if self.replies <= 0 or self.per_hour <= 0 or not recipients or ticket is None or ticket.id is None:
            return {}
        looping = self._looping(recipients, ticket.id)
        if not looping:
            return {}
        last = self._last_turns(set(looping), ticket.id)
        spacing = timedelta(hours=1) / self.per_hour
        turns = {}
        for recipient, replies in looping.items():
            turn = max(self.now, last[recipient] + spacing) if recipient in last else self.now
            why = (f"{HELD_BACK}: {replies} replies from this address on {ticket.key} within an hour look like "
                   f"a mail loop; it gets at most {self.per_hour} mails an hour about it")
            turns[recipient] = (turn, why)
        self._log_new(looping, ticket)
        return turns

    def _looping(self, recipients: set[str], ticket_id: int) -> dict[str, int]:
        """Those of RECIPIENTS whose mail to us became comments on TICKET_ID `replies` times
        within the hour."""
        counts = self.session.exec(
            select(Inbound.from_address, func.count()).select_from(Inbound)
            .where(Inbound.from_address.in_(sorted(recipients)), Inbound.outcome == "comment_added",
                   Inbound.ticket_id == ticket_id, Inbound.received_at >= self.now - WINDOW)
            .group_by(Inbound.from_address)
        ).all()
        return {address: n for address, n in counts if n >= self.replies}

    def _last_turns(self, recipients: set[str], ticket_id: int) -> dict[str, datetime]:
        """The latest turn given to each of RECIPIENTS for mail about TICKET_ID within the hour."""
        return {recipient: aware(turn) for recipient, turn in self.session.exec(
            select(Outbound.recipient, func.max(Outbound.next_attempt_at)).select_from(Outbound)
            .where(Outbound.recipient.in_(sorted(recipients)), Outbound.ticket_id == ticket_id,
                   Outbound.created_at >= self.now - WINDOW)
            .group_by(Outbound.recipient)
        ).all() if turn is not None}

    def _log_new(self, looping: dict[str, int], ticket: Ticket) -> None:
        """Log an address when its first mail is held back, not for every one after it."""
        already = set(self.session.exec(
            select(Outbound.recipient).where(Outbound.recipient.in_(sorted(looping)), Outbound.status == "queued",
                                             Outbound.last_error.startswith(HELD_BACK)).distinct()
        ).all())
        for recipient in sorted(set(looping) - already):
            log.warning("mail loop? %s answered %d notifications about %s within an hour; mail to it about %s is "
                        "held back to %d an hour (mailgate outbox list)", recipient, looping[recipient], ticket.key,
                        ticket.key, self.per_hour)
