"""An agent's action on a ticket (SPEC §1, guide §3), as the CLI and the HTTP API both do it:
the change and the notifications it causes, in the caller's one transaction. A rule the
action breaks raises `service.TicketError` and nothing is changed."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from mailgate import notify
from mailgate.models import Comment, Organisation, Ticket, utcnow
from mailgate.tickets import service


def comment(session: Session, app, ticket: Ticket, agent: str, body: str, internal: bool = False,
            now: datetime | None = None) -> Comment:
    """AGENT comments on TICKET (an internal note with INTERNAL: no customer hears of it)."""
    added, events = service.agent_comment(session, ticket, agent, body, internal, now or utcnow())
    notify.queue(session, app, events)
    return added


def set_fields(session: Session, app, ticket: Ticket, *, status: str | None = None, type: str | None = None,
               priority: str | None = None, confidential: bool | None = None, agent: str | None = None,
               now: datetime | None = None) -> None:
    """Change TICKET's status, type, priority (by the guide's rules) and confidential flag, as
    AGENT: one notification per recipient however many fields change."""
    if confidential:
        service.check_confidential(ticket, session.get(Organisation, ticket.organisation_id))
    if status or type or priority:
        events = service.agent_set(ticket, now or utcnow(), status=status, type=type, priority=priority, agent=agent)
    else:
        events = []
    if confidential is not None:
        ticket.confidential = confidential
    session.add(ticket)
    notify.queue(session, app, events)
