"""Who hears of an event on a ticket: the rules of SPEC §5 (guide §2.7).

- the creator: every event, unless they turned notifications off for the ticket;
- other contacts of the ticket's organisation, while the ticket is shared: `ticket_created`,
  and later events only when they turned notifications on (Cc'd participants start with on);
- never the contact whose own comment or action caused the event, never an inactive contact;
- internal comments reach nobody.

Each recipient comes with the reason they are told, which the mail's footer names.

The lookups read columns with SQLAlchemy Core, not ORM objects (a notification is written
for each message processed: issue 16); a contact other than the creator is a row with the
Contact's attribute names.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import Session

from mailgate.tickets.events import Event
from mailgate.models import Comment, Contact, Subscription, Ticket

_CONTACT = Contact.__table__
_MEMBERS = (sa.select(_CONTACT).where(_CONTACT.c.organisation_id == sa.bindparam("org"),
                                      _CONTACT.c.id != sa.bindparam("creator")).order_by(_CONTACT.c.id))
_CHOICES = sa.select(Subscription.__table__.c.contact_id, Subscription.__table__.c.notify).where(
    Subscription.__table__.c.ticket_id == sa.bindparam("ticket"))
_INTERNAL = sa.select(Comment.__table__.c.internal).where(Comment.__table__.c.id == sa.bindparam("comment"))

CREATOR, MEMBER, SUBSCRIBED = "creator", "member", "subscribed"


@dataclass(frozen=True)
class Recipient:
    contact: Contact
    reason: str  # CREATOR, MEMBER (ticket_created to the organisation) or SUBSCRIBED
    notify_on: bool  # the contact's current on/off state for the ticket (for the footer link)


def recipients(session: Session, ticket: Ticket, event: Event) -> list[Recipient]:
    """The contacts EVENT on TICKET is mailed to, creator first, each once."""
    if _is_internal_comment(session, event):
        return []
    choices = _choices(session, ticket)
    found = []
    for contact in _candidates(session, ticket):
        if not contact.active or contact.id == _excluded_actor(event):
            continue
        reason = _reason(ticket, event, contact, choices.get(contact.id))
        if reason:
            found.append(Recipient(contact, reason, notify_on(ticket, contact, choices.get(contact.id))))
    return found


def notify_on(ticket: Ticket, contact: Contact, choice: Subscription | None) -> bool:
    """Whether CONTACT hears of later events on TICKET: an explicit choice, else on for the
    creator and off for everybody else."""
    if choice is not None:
        return choice.notify
    return contact.id == ticket.creator_id


def _reason(ticket: Ticket, event: Event, contact: Contact, choice: Subscription | None) -> str | None:
    on = notify_on(ticket, contact, choice)
    if contact.id == ticket.creator_id:
        return CREATOR if on else None
    if event.kind == "ticket_created":
        # Organisation members hear of a new shared ticket unless they said no beforehand.
        return MEMBER if choice is None or choice.notify else None
    return SUBSCRIBED if on else None


def _excluded_actor(event: Event) -> int | None:
    # The creator's own new ticket is the one action they are told about: the confirmation
    # carries the key (and the Message-ID) their replies thread by. Everything else a contact
    # did themselves — a comment, the reopening it caused — they already know.
    return None if event.kind == "ticket_created" else event.actor_contact_id


def _candidates(session: Session, ticket: Ticket) -> list[Contact]:
    creator = session.get(Contact, ticket.creator_id)
    members = []
    if ticket.shared:
        members = session.connection().execute(
            _MEMBERS, {"org": ticket.organisation_id, "creator": ticket.creator_id}).all()
    return [c for c in [creator, *members] if c is not None]


def _choices(session: Session, ticket: Ticket) -> dict[int, Subscription]:
    """Each explicit choice (a row with `notify`) by contact id."""
    session.flush()  # a participant added in this transaction has a choice too
    return {row.contact_id: row for row in session.connection().execute(_CHOICES, {"ticket": ticket.id})}


def _is_internal_comment(session: Session, event: Event) -> bool:
    # tickets.service emits no event for internal notes; this is the second lock on that door.
    if event.kind != "comment_added" or event.comment_id is None:
        return False
    session.flush()
    internal = session.connection().execute(_INTERNAL, {"comment": event.comment_id}).scalar()
    return internal is None or internal
