"""Operations on tickets and comments, shared by the pipeline, the CLI and the HTTP API.

Each function works inside the caller's session (one transaction) and returns the events it
caused, for the notifications to join the same transaction.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, select

from mailgate.config import DEFAULT_DESK
from mailgate.db import insert_if_absent, insert_many_if_absent
from mailgate.mail import refs
from mailgate.mail.parse import ParsedAttachment
from mailgate.models import Attachment, Comment, Contact, Counter, Organisation, Subscription, ThreadMessage, Ticket
from mailgate.tickets.closing import confirms as closing_confirmed
from mailgate.tickets.events import Event

_COUNTER = Counter.__table__
_NEXT_NUMBER = (sa.update(_COUNTER).where(_COUNTER.c.name == sa.bindparam("counter"))
                .values(value=_COUNTER.c.value + 1).returning(_COUNTER.c.value))


def find_ticket(session: Session, key: str, *conditions) -> Ticket | None:
    """The ticket with KEY (any case, blanks around it ignored) that meets CONDITIONS, or None."""
    return session.exec(select(Ticket).where(Ticket.key == key.strip().upper(), *conditions)).first()


def may_see(ticket: Ticket, contact: Contact) -> bool:
    """SPEC §4.6: the creator, or a contact of the ticket's organisation while it is shared.
    The same rule decides who may comment by mail and who may switch notifications."""
    return contact.id == ticket.creator_id or (ticket.shared and contact.organisation_id == ticket.organisation_id)


def agent_may_see(session: Session, ticket: Ticket, region: str) -> bool:
    """Guide §2.5: a confidential ticket only for agents of its organisation's region."""
    if not ticket.confidential:
        return True
    organisation = session.get(Organisation, ticket.organisation_id)
    return bool(region) and organisation is not None and organisation.region == region


def allocate_key(session: Session, prefix: str) -> str:
    """The next ticket key of PREFIX (numbers per prefix, from 1). The counter row is locked
    until commit, so keys never repeat, with several instances on one database too; a
    rolled-back number leaves a gap."""
    name = f"ticket:{prefix.upper()}"
    number = session.connection().execute(_NEXT_NUMBER, {"counter": name}).scalar()
    if number is None:
        # The prefix's first ticket: of two instances starting it at once, one inserts, the
        # other waits for it (PostgreSQL) and then counts on from there.
        if insert_if_absent(session, Counter, name=name, value=1):
            number = 1
        else:
            number = session.connection().execute(_NEXT_NUMBER, {"counter": name}).scalar_one()
    return f"{prefix}-{number}"


def create_ticket(
    session: Session, *, key_prefix: str, creator: Contact, summary: str, description: str,
    now: datetime, follow_up_of: Ticket | None = None, desk: str = DEFAULT_DESK,
) -> tuple[Ticket, list[Event]]:
    ticket = Ticket(
        key=allocate_key(session, key_prefix), desk=desk, summary=summary, description=description,
        creator_id=creator.id, organisation_id=creator.organisation_id, shared=True,
        follow_up_of_id=follow_up_of.id if follow_up_of else None,
        created_at=now, updated_at=now, last_customer_feedback_at=now, status_changed_at=now,
    )
    session.add(ticket)
    session.flush()
    return ticket, [Event("ticket_created", ticket.id, actor_contact_id=creator.id)]


def add_comment(
    session: Session, ticket: Ticket, *, body: str, now: datetime, author: Contact | None = None,
    agent: str | None = None, internal: bool = False, inbound_id: int | None = None,
) -> tuple[Comment, list[Event]]:
    comment = Comment(
        ticket_id=ticket.id, author_contact_id=author.id if author else None, author_agent=agent,
        body=body, internal=internal, created_at=now, inbound_id=inbound_id,
    )
    session.add(comment)
    ticket.updated_at = now
    session.add(ticket)
    session.flush()
    if internal:
        return comment, []  # internal notes never reach a customer
    return comment, [Event("comment_added", ticket.id, author.id if author else None, comment.id, actor_agent=agent)]


def set_status(ticket: Ticket, status: str, now: datetime, actor_contact_id: int | None = None) -> list[Event]:
    """Change the status, remembering where clarification was asked from (SPEC §4.7)."""
    old = ticket.status
    if old == status:
        return []
    if status == "clarification":
        ticket.status_before_clarification = old
        ticket.reminders_sent = 0
    ticket.status = status
    ticket.status_changed_at = now
    ticket.updated_at = now
    return [Event("status_changed", ticket.id, actor_contact_id, old=old, new=status)]


def customer_feedback(ticket: Ticket, text: str, close_phrases, now: datetime, actor_id: int) -> list[Event]:
    """The status effect of a customer's comment of TEXT (its new text: SPEC §4.7) and the
    lifecycle reset (§6)."""
    ticket.last_customer_feedback_at = now
    ticket.reminders_sent = 0
    if ticket.status == "clarification":
        return set_status(ticket, ticket.status_before_clarification or "in_review", now, actor_id)
    if ticket.status == "resolved":
        closing = closing_confirmed(text, close_phrases)
        return set_status(ticket, "closed" if closing else "in_review", now, actor_id)
    return []


def store_attachments(
    session: Session, ticket: Ticket, attachments: list[ParsedAttachment], digests: list[str],
    comment: Comment | None = None,
) -> list[Attachment]:
    """Attachment rows for ATTACHMENTS, whose contents are already in the blob store under
    DIGESTS (written before the transaction: slow work stays outside it)."""
    rows = []
    for a, digest in zip(attachments, digests, strict=True):
        row = Attachment(
            ticket_id=ticket.id, comment_id=comment.id if comment else None, filename=a.filename,
            content_type=a.content_type, size=len(a.data), sha256=digest, inline=a.inline,
            content_id=a.content_id,
        )
        session.add(row)
        rows.append(row)
    return rows


def add_to_thread(session: Session, ticket: Ticket, message_id: str | None) -> None:
    """Remember a Message-ID as part of TICKET's thread (first ticket wins)."""
    add_many_to_thread(session, ticket, [message_id])


def add_many_to_thread(session: Session, ticket: Ticket, message_ids: list[str | None]) -> None:
    """`add_to_thread` for several Message-IDs, in one statement."""
    keys = dict.fromkeys(refs.id_hash(m) for m in message_ids if m)
    insert_many_if_absent(session, ThreadMessage, [{"id_hash": key, "ticket_id": ticket.id} for key in keys])


def add_participant(session: Session, ticket: Ticket, contact: Contact) -> None:
    existing = session.exec(
        select(Subscription).where(Subscription.ticket_id == ticket.id, Subscription.contact_id == contact.id)
    ).first()
    if existing is None:
        session.add(Subscription(ticket_id=ticket.id, contact_id=contact.id, notify=True, participant=True))


# --- agent actions (SPEC §1, guide §3) -------------------------------------------------------


class TicketError(ValueError):
    """An action the ticket's rules do not allow; the message says why."""


class TicketClosed(TicketError):
    """Closed is final: nothing changes a closed ticket."""


def agent_comment(session: Session, ticket: Ticket, agent: str, body: str, internal: bool, now: datetime):
    _check_open(ticket)
    if not body.strip():
        raise TicketError("the comment is empty")
    if not agent.strip():
        raise TicketError("an agent name is needed")
    return add_comment(session, ticket, body=body, now=now, agent=agent.strip(), internal=internal)


def agent_set(
    ticket: Ticket, now: datetime, *, status: str | None = None, type: str | None = None,
    priority: str | None = None, agent: str | None = None,
) -> list[Event]:
    """Change status, type and priority by the rules of the guide. One action is one event
    (SPEC §5: one notification per recipient), named after its weightiest change — status,
    then type, then priority — and carrying every change in `data["changes"]`."""
    from mailgate.models import PRIORITISED_TYPES

    check_set(ticket, status=status, type=type, priority=priority)
    changes: list[Event] = []
    if type and type != ticket.type:
        changes.append(Event("type_changed", ticket.id, old=ticket.type, new=type))
        ticket.type = type
        if type not in PRIORITISED_TYPES and ticket.priority:
            # a request has no priority; it goes with the type
            changes.append(Event("priority_changed", ticket.id, old=ticket.priority, new=None))
            ticket.priority = None
    if priority and priority != ticket.priority:
        changes.append(Event("priority_changed", ticket.id, old=ticket.priority, new=priority))
        ticket.priority = priority
    if status:
        changes += set_status(ticket, status, now)
    ticket.updated_at = now
    return [one_event(changes, agent)] if changes else []


def check_set(ticket: Ticket, *, status: str | None = None, type: str | None = None,
              priority: str | None = None) -> None:
    """The rules `agent_set` applies, checked without changing anything: TicketError names
    the first value or rule at fault."""
    from mailgate.models import PRIORITIES, PRIORITISED_TYPES, STATUSES, TYPES

    _check_open(ticket)
    _check_choice("status", status, STATUSES)
    _check_choice("type", type, TYPES)
    _check_choice("priority", priority, PRIORITIES)
    new_type = type or ticket.type
    if priority and new_type not in PRIORITISED_TYPES:
        raise TicketError(f"a priority belongs to incidents and defects, not to {new_type}")


_WEIGHT = {"status_changed": 0, "type_changed": 1, "priority_changed": 2}


def one_event(changes: list[Event], agent: str | None = None) -> Event:
    """CHANGES of one action as one event: the weightiest, listing them all (field, old, new)."""
    main = min(changes, key=lambda e: _WEIGHT[e.kind])
    main.data["changes"] = [{"field": e.kind.removesuffix("_changed"), "old": e.old, "new": e.new}
                            for e in sorted(changes, key=lambda e: _WEIGHT[e.kind])]
    if agent:
        main.data["agent"] = agent
        main.actor_agent = agent
    return main


def check_confidential(ticket: Ticket, organisation: Organisation) -> None:
    """A confidential ticket is seen only by agents of its organisation's region (guide §2.5):
    without a region nobody would see it again, the agent who set it included."""
    if not organisation.region:
        raise TicketError(f"organisation {organisation.name!r} has no region, so a confidential {ticket.key} "
                          f"would be visible to no agent; give it one first: mailgate org set "
                          f"{organisation.name!r} --region REGION")


def _check_open(ticket: Ticket) -> None:
    if ticket.status == "closed":
        raise TicketClosed(f"{ticket.key} is closed; closed is final (a reply opens a follow-up)")


def _check_choice(name: str, value: str | None, choices) -> None:
    if value is not None and value not in choices:
        raise TicketError(f"unknown {name} {value!r}; one of: {', '.join(choices)}")
