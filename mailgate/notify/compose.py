"""One ticket event's notification, rendered for each recipient: the template's variables and
the headers that thread it (SPEC §5).

In-Reply-To/References point at the ticket's first inbound Message-ID and at the previous
notification this recipient got for the ticket, so mail clients group the conversation.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, select

from mailgate.tickets.events import Event
from mailgate.models import Comment, Contact, Inbound, Organisation, Outbound, Ticket
from mailgate.notify import tokens
from mailgate.notify.recipients import Recipient
from mailgate.notify.render import Headers, Rendered

MAX_TEXT = 20000  # characters of a description or comment quoted in a mail


class EventMail:
    """What every recipient's mail about EVENT shares, worked out once."""

    def __init__(self, session: Session, app, ticket: Ticket, event: Event):
        self.session, self.app, self.ticket, self.event = session, app, ticket, event
        self.context = _event_context(session, app, ticket, event)
        self.root = _first_inbound_id(session, ticket)
        self._previous: dict[str, str] | None = None

    def previous_id(self, recipient: str) -> str | None:
        """The last notification RECIPIENT got for the ticket (one query for all recipients;
        the recipients of one event are distinct, so it does not change while rendering it)."""
        if self._previous is None:
            self._previous = {}
            for address, message_id in self.session.exec(
                select(Outbound.recipient, Outbound.message_id).where(Outbound.ticket_id == self.ticket.id)
                .order_by(Outbound.id.desc())
            ):
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
        )
        context = {
            **self.context, "recipient": {"name": contact.name, "email": contact.email},
            "reason": recipient.reason, "notify_on": recipient.notify_on, "link": link,
        }
        language = self.app.renderer.language(contact.language)
        return self.app.renderer.mail(self.event.kind, (language,), context, headers, now)


def _event_context(session: Session, app, ticket: Ticket, event: Event) -> dict:
    cfg = app.config
    creator = session.get(Contact, ticket.creator_id)
    return {
        "ticket": {
            "key": ticket.key, "summary": ticket.summary, "type": ticket.type, "status": ticket.status,
            "priority": ticket.priority, "description": _clip(ticket.description),
            "creator": creator.name if creator else "",
            "organisation": session.get(Organisation, ticket.organisation_id).name,
        },
        "event": {"kind": event.kind, "old": event.old, "new": event.new, "data": event.data},
        "comment": _comment(session, event.comment_id),
        "support_address": cfg.from_address, "from_name": cfg.outbound.from_name,
        "lifecycle": {"resolved_close_days": _days(cfg.lifecycle.resolved_close_days),
                      "clarification_close_days": _days(cfg.lifecycle.clarification_close_days)},
    }


def _comment(session: Session, comment_id: int | None) -> dict | None:
    comment = session.get(Comment, comment_id) if comment_id else None
    if comment is None:
        return None
    author = session.get(Contact, comment.author_contact_id) if comment.author_contact_id else None
    return {"author": author.name if author else (comment.author_agent or ""), "body": _clip(comment.body)}


def _first_inbound_id(session: Session, ticket: Ticket) -> str | None:
    return session.exec(
        select(Inbound.message_id).where(Inbound.ticket_id == ticket.id, Inbound.message_id.is_not(None))
        .order_by(Inbound.id).limit(1)
    ).first()


def _link(app, ticket: Ticket, contact: Contact) -> str | None:
    base = app.config.http.public_url
    if not base:
        return None
    return tokens.url(base, tokens.make(app.signer, ticket.key, contact.email))


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT].rstrip() + " […]"


def _days(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
