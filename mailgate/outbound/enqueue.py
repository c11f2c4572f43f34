"""Writing rendered mail into the outbox (the transactional outbox of SPEC §7), inside the
caller's transaction.

Each row gets its VERP return path (it needs the row's id, hence the flush) and joins its
ticket's thread, so a reply that references its Message-ID finds the ticket even without the
signature check. A recipient who already got `outbound.max_per_recipient_per_hour` mails in
the last hour gets no more: the row is kept, `failed` with "rate limited", so a mail loop
stops and the operator sees why.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlmodel import Session, func, select

from mailgate.models import Outbound, Ticket
from mailgate.outbound import verp
from mailgate.tickets import service

if TYPE_CHECKING:
    from mailgate.notify.render import Rendered

log = logging.getLogger("mailgate.notify")

RATE_LIMITED = "rate limited"


def add(session: Session, app, *, ticket: Ticket | None, event: str, recipient: str,
        rendered: "Rendered", now: datetime) -> Outbound:
    return add_many(session, app, ticket=ticket, event=event, mails=[(recipient, rendered)], now=now)[0]


def add_many(session: Session, app, *, ticket: Ticket | None, event: str,
             mails: list[tuple[str, "Rendered"]], now: datetime) -> list[Outbound]:
    """One row per (recipient, rendered) of one event, with one rate-limit query and one flush
    for all of them. The recipients of one event are distinct."""
    if not mails:
        return []
    limit = app.config.outbound.max_per_recipient_per_hour
    held_back = _over_rate_limit(session, {recipient for recipient, _ in mails}, now, limit)
    rows = []
    for recipient, rendered in mails:
        row = Outbound(
            ticket_id=ticket.id if ticket else None, event=event, recipient=recipient,
            subject=rendered.subject, message_id=rendered.message_id, message=rendered.message,
            created_at=now, next_attempt_at=now,
        )
        if recipient in held_back:
            row.status, row.last_error = "failed", RATE_LIMITED
        rows.append(row)
    session.add_all(rows)
    session.flush()
    for row in rows:
        row.envelope_sender = verp.address(app.signer, app.config.from_address, row.id)
    if ticket is not None:
        service.add_many_to_thread(session, ticket, [rendered.message_id for _, rendered in mails])
    return rows


def _over_rate_limit(session: Session, recipients: set[str], now: datetime, limit: int) -> set[str]:
    """Those of RECIPIENTS who already got LIMIT mails within the last hour."""
    if limit <= 0 or not recipients:
        return set()
    counts = dict(session.exec(
        select(Outbound.recipient, func.count()).select_from(Outbound)
        .where(Outbound.recipient.in_(sorted(recipients)), Outbound.created_at >= now - timedelta(hours=1))
        .group_by(Outbound.recipient)
    ).all())
    over = set()
    for recipient in recipients:
        recent = counts.get(recipient, 0)
        if recent == limit:  # log when the limit is reached, not for every mail held back after it
            log.warning("recipient %s got %d notifications within an hour; holding back more", recipient, limit)
        if recent >= limit:
            over.add(recipient)
    return over
