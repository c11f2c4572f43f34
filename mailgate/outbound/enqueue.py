"""Writing rendered mail into the outbox (the transactional outbox of SPEC §7), inside the
caller's transaction.

Each row gets its VERP return path (it needs the row's id, hence the flush) and joins its
ticket's thread, so a reply that references its Message-ID finds the ticket even without the
signature check.

The loop guard (SPEC §5: it delays, never drops, and aims at loops, not at busy
organisations). A mail loop is an address that answers our notifications again and again —
an auto-responder that sends no Auto-Submitted, another ticket system: at least
`outbound.loop_replies_per_hour` of its messages became comments within the last hour, far
more than any person writes. Mail to such an address is paced: at most
`outbound.max_per_recipient_per_hour` an hour; the rest stays queued with its next attempt
set to its turn and the reason in `last_error` (`mailgate outbox list` shows both; `outbox
retry` lets them go now), and the first row held back is logged. Nothing is ever failed for
it, a busy organisation that merely receives a lot is never slowed, and a creator's
confirmation of a new ticket (which carries the key to reply with) is never held back, nor is
mail to an agent (SPEC §11: an agent who answers many tickets by mail is working, not looping).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlmodel import Session, func, select

from mailgate.models import Contact, Inbound, Outbound, Ticket, aware
from mailgate.outbound import verp
from mailgate.tickets import service

if TYPE_CHECKING:
    from mailgate.notify.render import Rendered

log = logging.getLogger("mailgate.notify")

WINDOW = timedelta(hours=1)
HELD_BACK = "held back by the loop guard"


def add(session: Session, app, *, ticket: Ticket | None, event: str, recipient: str,
        rendered: "Rendered", now: datetime) -> Outbound:
    return add_many(session, app, ticket=ticket, event=event, mails=[(recipient, rendered)], now=now)[0]


def add_many(session: Session, app, *, ticket: Ticket | None, event: str,
             mails: list[tuple[str, "Rendered"]], now: datetime) -> list[Outbound]:
    """One row per (recipient, rendered) of one event, with one loop-guard query and one flush
    for all of them. The recipients of one event are distinct."""
    if not mails:
        return []
    guarded = {recipient for recipient, _ in mails} - _never_held(session, ticket, event) - _agents(app.config)
    turns = _LoopGuard(session, app.config.outbound, now).turns(guarded)
    rows = []
    for recipient, rendered in mails:
        row = Outbound(
            ticket_id=ticket.id if ticket else None, event=event, recipient=recipient,
            subject=rendered.subject, message_id=rendered.message_id, message=rendered.message,
            created_at=now, next_attempt_at=now,
        )
        if recipient in turns:
            row.next_attempt_at, row.last_error = turns[recipient]
        rows.append(row)
    session.add_all(rows)
    session.flush()
    for row in rows:
        row.envelope_sender = verp.address(app.signer, app.config.from_address, row.id)
    if ticket is not None:
        service.add_many_to_thread(session, ticket, [rendered.message_id for _, rendered in mails])
    return rows


def _never_held(session: Session, ticket: Ticket | None, event: str) -> set[str]:
    """The creator's confirmation of a new ticket goes out at once, loop or not."""
    if ticket is None or event != "ticket_created":
        return set()
    creator = session.get(Contact, ticket.creator_id)
    return {creator.email} if creator else set()


def _agents(config) -> set[str]:
    return {a.email.lower() for a in config.agents if a.email}


class _LoopGuard:
    def __init__(self, session: Session, cfg, now: datetime):
        self.session, self.now = session, now
        self.replies, self.per_hour = cfg.loop_replies_per_hour, cfg.max_per_recipient_per_hour

    def turns(self, recipients: set[str]) -> dict[str, tuple[datetime, str]]:
        """For each of RECIPIENTS caught in a loop: when its mail may go, and why it waits."""
        if self.replies <= 0 or self.per_hour <= 0 or not recipients:
            return {}
        looping = self._looping(recipients)
        if not looping:
            return {}
        last = self._last_turns(set(looping))
        spacing = timedelta(hours=1) / self.per_hour
        turns = {}
        for recipient, replies in looping.items():
            turn = max(self.now, last[recipient] + spacing) if recipient in last else self.now
            why = (f"{HELD_BACK}: {replies} replies from this address within an hour look like a mail loop; "
                   f"it gets at most {self.per_hour} mails an hour")
            turns[recipient] = (turn, why)
        self._log_new(looping)
        return turns

    def _looping(self, recipients: set[str]) -> dict[str, int]:
        """Those of RECIPIENTS whose mail to us became comments `replies` times within the hour."""
        counts = self.session.exec(
            select(Inbound.from_address, func.count()).select_from(Inbound)
            .where(Inbound.from_address.in_(sorted(recipients)), Inbound.outcome == "comment_added",
                   Inbound.received_at >= self.now - WINDOW)
            .group_by(Inbound.from_address)
        ).all()
        return {address: n for address, n in counts if n >= self.replies}

    def _last_turns(self, recipients: set[str]) -> dict[str, datetime]:
        """The latest turn given to each of RECIPIENTS within the hour."""
        return {recipient: aware(turn) for recipient, turn in self.session.exec(
            select(Outbound.recipient, func.max(Outbound.next_attempt_at)).select_from(Outbound)
            .where(Outbound.recipient.in_(sorted(recipients)), Outbound.created_at >= self.now - WINDOW)
            .group_by(Outbound.recipient)
        ).all() if turn is not None}

    def _log_new(self, looping: dict[str, int]) -> None:
        """Log an address when its first mail is held back, not for every one after it."""
        already = set(self.session.exec(
            select(Outbound.recipient).where(Outbound.recipient.in_(sorted(looping)), Outbound.status == "queued",
                                             Outbound.last_error.startswith(HELD_BACK)).distinct()
        ).all())
        for recipient in sorted(set(looping) - already):
            log.warning("mail loop? %s answered %d notifications within an hour; mail to it is held back to %d "
                        "an hour (mailgate outbox list)", recipient, looping[recipient], self.per_hour)
