"""The JSON shapes of SPEC §9, shared by the CLI and the HTTP API.

Contacts appear as bare lower-case addresses, agents as `agent:NAME`, organisations by name,
times as ISO 8601 with a UTC offset.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, select

from mailgate.models import aware, Attachment, Comment, Contact, Inbound, Organisation, Outbound, Subscription, Ticket


def iso(value: datetime | None) -> str | None:
    return None if value is None else aware(value).isoformat()


class Names:
    """Id → name lookups, cached for one rendering."""

    def __init__(self, session: Session):
        self.session = session
        self._contacts: dict[int, str] = {}
        self._orgs: dict[int, str] = {}
        self._tickets: dict[int, str] = {}

    def contact(self, contact_id: int | None) -> str | None:
        if contact_id is None:
            return None
        if contact_id not in self._contacts:
            self._contacts[contact_id] = self.session.get(Contact, contact_id).email
        return self._contacts[contact_id]

    def organisation(self, org_id: int) -> str:
        if org_id not in self._orgs:
            self._orgs[org_id] = self.session.get(Organisation, org_id).name
        return self._orgs[org_id]

    def ticket(self, ticket_id: int | None) -> str | None:
        if ticket_id is None:
            return None
        if ticket_id not in self._tickets:
            self._tickets[ticket_id] = self.session.get(Ticket, ticket_id).key
        return self._tickets[ticket_id]


def ticket_summary(t: Ticket, names: Names) -> dict:
    return {
        "key": t.key, "summary": t.summary, "type": t.type, "status": t.status,
        "creator": names.contact(t.creator_id), "organisation": names.organisation(t.organisation_id),
    }


def attachment(a: Attachment) -> dict:
    return {"filename": a.filename, "content_type": a.content_type, "size": a.size,
            "sha256": a.sha256, "inline": a.inline}


def ticket_detail(t: Ticket, names: Names, include_internal: bool = True) -> dict:
    session = names.session
    attachments = list(session.exec(select(Attachment).where(Attachment.ticket_id == t.id).order_by(Attachment.id)))
    comments = list(session.exec(select(Comment).where(Comment.ticket_id == t.id).order_by(Comment.created_at, Comment.id)))
    subscriptions = list(session.exec(select(Subscription).where(Subscription.ticket_id == t.id).order_by(Subscription.id)))
    return {
        "key": t.key, "type": t.type, "status": t.status, "priority": t.priority,
        "summary": t.summary, "description": t.description,
        "creator": names.contact(t.creator_id), "organisation": names.organisation(t.organisation_id),
        "shared": t.shared, "confidential": t.confidential,
        "follow_up_of": names.ticket(t.follow_up_of_id),
        "created_at": iso(t.created_at), "updated_at": iso(t.updated_at),
        "comments": [
            {
                "author": f"agent:{c.author_agent}" if c.author_agent else names.contact(c.author_contact_id),
                "body": c.body, "full_body": c.body if c.full_body is None else c.full_body,
                "internal": c.internal, "created_at": iso(c.created_at),
                "attachments": [attachment(a) for a in attachments if a.comment_id == c.id],
            }
            for c in comments if include_internal or not c.internal
        ],
        "attachments": [attachment(a) for a in attachments if a.comment_id is None],
        "subscriptions": [{"contact": names.contact(s.contact_id), "notify": s.notify} for s in subscriptions],
    }


def inbound(i: Inbound, names: Names) -> dict:
    return {
        "id": i.id, "message_id": i.message_id, "sender": i.from_address or i.envelope_sender,
        "outcome": i.outcome, "ticket": names.ticket(i.ticket_id), "received_at": iso(i.received_at),
        "error": i.error,
    }


def outbound(o: Outbound, names: Names) -> dict:
    return {
        "id": o.id, "ticket": names.ticket(o.ticket_id), "event": o.event, "to": o.recipient,
        "subject": o.subject, "status": o.status, "attempts": o.attempts,
        "next_attempt_at": iso(o.next_attempt_at) if o.status == "queued" else None, "last_error": o.last_error,
    }
