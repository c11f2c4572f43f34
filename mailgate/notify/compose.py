"""One ticket event's notification, rendered for each recipient: the template's variables and
the headers that thread it (SPEC §5).

In-Reply-To/References point at the ticket's first inbound Message-ID and at the previous
notification this recipient got for the ticket, so mail clients group the conversation.
The mail leaves from the ticket's desk (SPEC §11): its address and name, its templates, and
its language for a recipient whose own mailgate does not speak.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, select

from mailgate import desks
from mailgate.tickets.events import Event
from mailgate.models import Comment, Contact, Inbound, Organisation, Outbound, Ticket, aware
from mailgate.notify import tokens
from mailgate.notify.recipients import Recipient
from mailgate.notify.render import Headers, Rendered

MAX_TEXT = 20000  # characters of a description or comment quoted in a mail

# Column lookups in SQLAlchemy Core: nothing here needs an ORM object (issue 16).
_INBOUND, _OUTBOUND, _COMMENT = Inbound.__table__, Outbound.__table__, Comment.__table__
_FIRST_INBOUND = (sa.select(_INBOUND.c.message_id)
                  .where(_INBOUND.c.ticket_id == sa.bindparam("ticket"), _INBOUND.c.message_id.is_not(None))
                  .order_by(_INBOUND.c.id).limit(1))
_PREVIOUS = (sa.select(_OUTBOUND.c.recipient, _OUTBOUND.c.message_id)
             .where(_OUTBOUND.c.ticket_id == sa.bindparam("ticket")).order_by(_OUTBOUND.c.id.desc()))
_ORGANISATION_NAME = sa.select(Organisation.__table__.c.name).where(Organisation.__table__.c.id == sa.bindparam("org"))
_COMMENT_OF = (sa.select(_COMMENT.c.body, _COMMENT.c.author_contact_id, _COMMENT.c.author_agent)
               .where(_COMMENT.c.id == sa.bindparam("comment")))


class EventMail:
    """What every recipient's mail about EVENT shares, worked out once."""

    def __init__(self, session: Session, app, ticket: Ticket, event: Event):
        self.session, self.app, self.ticket, self.event = session, app, ticket, event
        self.desk = desks.of(app.config).of_ticket(ticket)
        self.context = _event_context(session, app, ticket, event, self.desk)
        self.root = _first_inbound_id(session, ticket)
        self._previous: dict[str, str] | None = None

    def previous_id(self, recipient: str) -> str | None:
        """The last notification RECIPIENT got for the ticket (one query for all recipients;
        the recipients of one event are distinct, so it does not change while rendering it)."""
        if self._previous is None:
            self._previous = {}
            for address, message_id in self.session.connection().execute(_PREVIOUS, {"ticket": self.ticket.id}):
                self._previous.setdefault(address, message_id)
        return self._previous.get(recipient)

    def render(self, recipient: Recipient, now: datetime) -> Rendered:
        contact, ticket = recipient.contact, self.ticket
        link = _link(self.app, ticket, contact)
        previous = self.previous_id(contact.email)
        headers = Headers(
            subject=f"[{ticket.key}] {ticket.summary}", to_address=contact.email, to_name=contact.name,
            message_id=self.app.signer.message_id(ticket.key), in_reply_to=previous or self.root,
            references=[i for i in (self.root, previous) if i], unsubscribe_url=link,
            from_address=self.desk.from_address, from_name=self.desk.display_name,
        )
        context = {
            **self.context, "recipient": {"name": contact.name, "email": contact.email},
            "reason": recipient.reason, "notify_on": recipient.notify_on, "link": link,
        }
        language = self.app.renderer.language(contact.language, self.desk.language)
        return self.app.renderer.mail(self.event.kind, (language,), context, headers, now, self.desk.templates_dir)


def _event_context(session: Session, app, ticket: Ticket, event: Event, desk: desks.Desk) -> dict:
    cfg = app.config
    creator = session.get(Contact, ticket.creator_id)
    origin = session.get(Ticket, ticket.follow_up_of_id) if ticket.follow_up_of_id else None
    return {
        "ticket": {
            "key": ticket.key, "summary": ticket.summary, "type": ticket.type, "status": ticket.status,
            "priority": ticket.priority, "description": _clip(ticket.description),
            "creator": creator.name if creator else "", "creator_email": creator.email if creator else "",
            "confidential": ticket.confidential,
            "organisation": session.connection().execute(_ORGANISATION_NAME, {"org": ticket.organisation_id}).scalar(),
            "follow_up_of": {"key": origin.key, "summary": origin.summary} if origin else None,
        },
        "event": {"kind": event.kind, "old": event.old, "new": event.new, "data": event.data},
        "changes": _changes(event), "agent": event.data.get("agent"),
        "question": _question(session, ticket) if _asks(ticket, event) else None,
        "comment": _comment(session, event.comment_id),
        "support_address": desk.from_address, "from_name": desk.display_name, "desk": desk.name,
        "lifecycle": {"resolved_close_days": _days(cfg.lifecycle.resolved_close_days),
                      "clarification_close_days": _days(cfg.lifecycle.clarification_close_days)},
    }


def _changes(event: Event) -> list[dict]:
    """The fields one action changed (tickets.service.one_event), or this event's own one."""
    if "changes" in event.data:
        return event.data["changes"]
    if event.kind.endswith("_changed"):
        return [{"field": event.kind.removesuffix("_changed"), "old": event.old, "new": event.new}]
    return []


def _asks(ticket: Ticket, event: Event) -> bool:
    """Whether the mail waits for the customer's answer: a reminder, or clarification asked."""
    return event.kind == "reminder" or (event.kind == "status_changed" and event.new == "clarification")


def _question(session: Session, ticket: Ticket) -> dict | None:
    """The question the ticket waits on: an agent's last public comment before the status
    became clarification (status_changed_at is that moment while it stays there)."""
    comment = session.exec(
        select(Comment).where(Comment.ticket_id == ticket.id, Comment.author_agent.is_not(None),
                              Comment.internal.is_(False), Comment.created_at <= ticket.status_changed_at)
        .order_by(Comment.created_at.desc(), Comment.id.desc()).limit(1)
    ).first()
    if comment is None:
        return None
    return {"author": comment.author_agent, "body": _clip(comment.body), "date": aware(comment.created_at).date().isoformat()}


def _comment(session: Session, comment_id: int | None) -> dict | None:
    comment = session.connection().execute(_COMMENT_OF, {"comment": comment_id}).first() if comment_id else None
    if comment is None:
        return None
    author = session.get(Contact, comment.author_contact_id) if comment.author_contact_id else None
    return {"author": author.name if author else (comment.author_agent or ""), "body": _clip(comment.body),
            "author_email": author.email if author else None}


def _first_inbound_id(session: Session, ticket: Ticket) -> str | None:
    session.flush()  # the inbound record of this very message may be the first
    return session.connection().execute(_FIRST_INBOUND, {"ticket": ticket.id}).scalar()


def _link(app, ticket: Ticket, contact: Contact) -> str | None:
    base = app.config.http.public_url
    if not base:
        return None
    return tokens.url(base, tokens.make(app.signer, ticket.id, contact.id))


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT].rstrip() + " […]"


def _days(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
