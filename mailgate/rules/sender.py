"""Who sent the message (SPEC §4.4): an active contact, authenticated when the policy says so,
and within the per-sender limit of new tickets."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import Session, func, select

from mailgate.config import PolicyConfig
from mailgate.contacts import find_contact
from mailgate.mail import authentication
from mailgate.mail.parse import ParsedMessage
from mailgate.models import Contact, Ticket


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
    recent = session.exec(
        select(func.count()).select_from(Ticket)
        .where(Ticket.creator_id == contact.id, Ticket.created_at >= now - timedelta(hours=1))
    ).one()
    return recent >= limit
