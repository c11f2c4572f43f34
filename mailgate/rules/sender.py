"""Who sent the message (SPEC §4.4): an active contact, authenticated when the policy says so,
and within the per-sender limit of new tickets."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session

from mailgate.config import PolicyConfig
from mailgate.contacts import find_contact
from mailgate.mail import authentication
from mailgate.mail.parse import ParsedMessage
from mailgate.models import Contact, Ticket

_TICKET = Ticket.__table__
_RECENT = sa.select(sa.func.count()).select_from(_TICKET).where(
    _TICKET.c.creator_id == sa.bindparam("creator"), _TICKET.c.created_at >= sa.bindparam("since"))


def active_contact(session: Session, address: str | None) -> Contact | None:
    """The active contact with the From ADDRESS, or None (an unknown sender)."""
    contact = find_contact(session, address) if address else None
    return contact if contact is not None and contact.active else None


def unauthenticated(policy: PolicyConfig, parsed: ParsedMessage) -> bool:
    """With `require_authenticated_sender`: no DMARC or aligned DKIM pass from the trusted MTA."""
    if not policy.require_authenticated_sender:
        return False
    return not authentication.authenticated(parsed.headers, parsed.from_address, policy.trusted_authserv_id)


def over_rate_limit(session: Session, policy: PolicyConfig, contact: Contact, now: datetime) -> bool:
    """CONTACT opened `max_new_tickets_per_sender_per_hour` tickets within the last hour."""
    limit = policy.max_new_tickets_per_sender_per_hour
    if limit <= 0:
        return False
    recent = session.connection().execute(_RECENT, {"creator": contact.id, "since": now - timedelta(hours=1)}).scalar()
    return recent >= limit
