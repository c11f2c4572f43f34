"""Writing a rendered notification into the outbox, inside the caller's transaction.

Each row gets its VERP return path (it needs the row's id, hence the flush) and joins its
ticket's thread, so a reply that references its Message-ID finds the ticket even without the
signature check. A recipient who already got `outbound.max_per_recipient_per_hour` mails in
the last hour gets no more: the row is kept, `failed` with "rate limited", so a mail loop
stops and the operator sees why.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlmodel import Session, func, select

from mailgate.models import Outbound, Ticket
from mailgate.notify.render import Rendered
from mailgate.outbound import verp
from mailgate.tickets import service

log = logging.getLogger("mailgate.notify")

RATE_LIMITED = "rate limited"


def add(session: Session, app, *, ticket: Ticket | None, event: str, recipient: str,
        rendered: Rendered, now: datetime) -> Outbound:
    row = Outbound(
        ticket_id=ticket.id if ticket else None, event=event, recipient=recipient,
        subject=rendered.subject, message_id=rendered.message_id, message=rendered.message,
        created_at=now, next_attempt_at=now,
    )
    if _over_rate_limit(session, recipient, now, app.config.outbound.max_per_recipient_per_hour):
        row.status, row.last_error = "failed", RATE_LIMITED
    session.add(row)
    session.flush()
    row.envelope_sender = verp.address(app.signer, app.config.from_address, row.id)
    if ticket is not None:
        service.add_to_thread(session, ticket, rendered.message_id)
    return row


def _over_rate_limit(session: Session, recipient: str, now: datetime, limit: int) -> bool:
    if limit <= 0:
        return False
    recent = session.exec(
        select(func.count()).select_from(Outbound)
        .where(Outbound.recipient == recipient, Outbound.created_at >= now - timedelta(hours=1))
    ).one()
    if recent == limit:  # log when the limit is reached, not for every mail held back after it
        log.warning("recipient %s got %d notifications within an hour; holding back more", recipient, limit)
    return recent >= limit
