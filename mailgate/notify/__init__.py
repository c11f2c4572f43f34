"""Notifications: who hears of which event (SPEC §5), rendered into the outbox.

`queue` is called inside the transaction that caused the events, so the outbound rows exist
exactly when the change does (a transactional outbox). The sender (`mailgate.outbound`)
delivers them later; when the transaction commits it is woken, if it runs in this process.

    recipients.py     the rules of §5: who is told
    agents.py         which agents are told, and what (SPEC §11)
    reply_address.py  the agents' signed reply addresses
    compose.py        template variables and threading headers of one ticket mail
    render.py         Jinja2 templates → a message whose headers no customer text can touch
    notices.py        the once-a-day notice to unknown senders (§4.4)
    subscriptions.py  turning notifications on and off
    tokens.py         the signed links for that
The rows themselves are written by `mailgate.outbound.enqueue`.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session

from mailgate.models import Ticket, utcnow
from mailgate.notify import agents, compose, notices
from mailgate.notify.recipients import recipients
from mailgate.outbound import enqueue


def queue(session: Session, app, events) -> list[enqueue.Queued]:
    """Write the outbound messages EVENTS cause; returns them."""
    now = utcnow()
    rows: list[enqueue.Queued] = []
    for event in events:
        if event.kind == "unknown_sender_notice":
            rows += notices.queue(session, app, event, now)
        elif event.kind == "agent_notice":
            rows += agents.queue_notice(session, app, event, now)
        else:
            rows += _ticket_event(session, app, event, now)
    if rows:
        _wake_sender_after_commit(session, app)
    return rows


def _ticket_event(session: Session, app, event, now) -> list[enqueue.Queued]:
    ticket = session.get(Ticket, event.ticket_id)
    if ticket is None:
        return []
    mail = compose.EventMail(session, app, ticket, event)
    mails = [(recipient.contact.email, mail.render(recipient, now))
             for recipient in recipients(session, ticket, event)]
    mails += agents.mails(session, app, mail, now, skip={address for address, _ in mails})
    return enqueue.add_many(session, app, ticket=ticket, event=event.kind, mails=mails, now=now)


def _wake_sender_after_commit(session: Session, app) -> None:
    hook = app.on_outbound_queued
    if hook is not None:
        sa.event.listen(session, "after_commit", lambda _session: hook(), once=True)
