"""Turning notifications for a ticket on or off (SPEC §5): the CLI, the signed links and the
agent API all come here.

An explicit choice is a Subscription row; without one the default of §5 holds (on for the
creator, off for everybody else). Only a contact who may see the ticket can make a choice —
otherwise a link or command could subscribe a stranger to a confidential ticket's mail.
"""

from __future__ import annotations

from sqlmodel import Session, select

from mailgate.models import Contact, Subscription, Ticket
from mailgate.notify.recipients import notify_on
from mailgate.tickets import service


class NotAllowed(ValueError):
    """The contact may not see the ticket, so has no notifications to switch."""


def is_on(session: Session, ticket: Ticket, contact: Contact) -> bool:
    return notify_on(ticket, contact, _choice(session, ticket, contact))


def set_notify(session: Session, ticket: Ticket, contact: Contact, on: bool) -> Subscription:
    """Record CONTACT's choice for TICKET; idempotent."""
    if not service.may_see(ticket, contact):
        raise NotAllowed(f"{contact.email} cannot see ticket {ticket.key}")
    choice = _choice(session, ticket, contact)
    if choice is None:
        choice = Subscription(ticket_id=ticket.id, contact_id=contact.id, notify=on, participant=False)
    choice.notify = on
    session.add(choice)
    session.flush()
    return choice


def _choice(session: Session, ticket: Ticket, contact: Contact) -> Subscription | None:
    return session.exec(
        select(Subscription).where(Subscription.ticket_id == ticket.id, Subscription.contact_id == contact.id)
    ).first()
