"""Mail to agents (SPEC §11): who of `[[agents]]` hears of an event on a ticket, and the mail.

An agent with an `email` and `notify = true` is told of
- `ticket_created`, and
- `comment_added` when a customer wrote the comment (internal notes have no event at all),
on the tickets of the desks they serve (`desks`, empty: all); a confidential ticket only when
the agent's region is its organisation's (guide §2.5); never of their own action (an agent's
forward that opened the ticket). The mail has the customer's text, the ticket's fields and
the commands of a reply, in the agent's language (else the desk's), from the ticket's desk,
with the agent's signed reply address (mailgate.notify.reply_address) in `Reply-To` and a
signed Message-ID, so that a reply finds its ticket. `agent_notice` tells a proven agent why
their mail was not applied, with the same `Reply-To`: a reply with the corrected commands is
proven like any other.
"""

from __future__ import annotations

import email.utils
from datetime import datetime

from sqlmodel import Session

from mailgate import desks
from mailgate.config import AgentConfig
from mailgate.models import PRIORITIES, STATUSES, TYPES, Comment, Ticket
from mailgate.notify import reply_address
from mailgate.notify.render import Headers, Rendered
from mailgate.outbound import enqueue
from mailgate.tickets import service
from mailgate.tickets.events import Event

COMMENT_TAG = desks.COMMENT_TAG


def mails(session: Session, app, mail, now: datetime, skip: set[str]) -> list[tuple[str, Rendered]]:
    """The agents' mails about MAIL's event (a compose.EventMail); none to an address in SKIP
    (already told as a contact)."""
    if not any(a.notify for a in app.config.agents) or not _agents_hear_of(session, mail.event):
        return []
    return [(agent.email.lower(), _render(app, mail, agent, now))
            for agent in told(session, app, mail.ticket, mail.event) if agent.email.lower() not in skip]


def told(session: Session, app, ticket: Ticket, event: Event) -> list[AgentConfig]:
    """The agents who hear of EVENT on TICKET (the event is one agents hear of)."""
    desk = desks.of(app.config).of_ticket(ticket)
    return [a for a in app.config.agents
            if a.notify and a.email and a.name != event.actor_agent and (not a.desks or desk.name in a.desks)
            and service.agent_may_see(session, ticket, a.region)]


def _agents_hear_of(session: Session, event: Event) -> bool:
    if event.kind == "ticket_created":
        return True
    if event.kind != "comment_added" or event.actor_contact_id is None:
        return False  # an agent's own comment, or not a comment
    comment = session.get(Comment, event.comment_id) if event.comment_id else None
    return comment is not None and not comment.internal


def _render(app, mail, agent: AgentConfig, now: datetime) -> Rendered:
    ticket, desk = mail.ticket, mail.desk
    address = agent.email.lower()
    previous = mail.previous_id(address)
    headers = Headers(
        subject=f"[{ticket.key}] {ticket.summary}", to_address=address, to_name=agent.name,
        message_id=app.signer.message_id(ticket.key), in_reply_to=previous or mail.root,
        references=[i for i in (mail.root, previous) if i],
        from_address=desk.from_address, from_name=desk.display_name,
        reply_to=reply_address.address(app.signer, agent, desk.addresses[0]),
    )
    context = {**mail.context, **_reply_context(desk), "recipient": {"name": agent.name, "email": address}}
    language = app.renderer.language(agent.language, desk.language)
    return app.renderer.mail(f"agent_{mail.event.kind}", (language,), context, headers, now, desk.templates_dir)


def _reply_context(desk: desks.Desk) -> dict:
    """What the mail says about answering it: the commands and the desk's comment address."""
    local, _, domain = desk.addresses[0].rpartition("@")
    return {"comment_address": f"{local}+{COMMENT_TAG}@{domain}",
            "slugs": {"status": list(STATUSES), "type": list(TYPES), "priority": list(PRIORITIES)}}


# --- why an agent's mail was not applied --------------------------------------------------------


def queue_notice(session: Session, app, event: Event, now: datetime) -> list[enqueue.Queued]:
    """`agent_notice`: tell the proven agent `event.data["agent"]` why their mail (subject,
    Message-ID in `data`) was not applied (`data["why"]`), from the desk it went to."""
    agent = next((a for a in app.config.agents if a.name == event.data["agent"] and a.email), None)
    if agent is None:
        return []
    the_desks = desks.of(app.config)
    desk = the_desks.named(event.data.get("desk")) or the_desks.default
    ticket = session.get(Ticket, event.ticket_id) if event.ticket_id else None
    original = event.data.get("message_id")
    headers = Headers(
        subject=f"{'[' + ticket.key + '] ' if ticket else ''}{_not_applied(agent, desk, app)}: {event.data.get('subject') or ''}",
        to_address=agent.email.lower(), to_name=agent.name,
        message_id=app.signer.message_id(ticket.key) if ticket else email.utils.make_msgid(
            "mg.agent", domain=app.config.message_id_domain),
        in_reply_to=original, references=[original] if original else [],
        from_address=desk.from_address, from_name=desk.display_name,
        # A reply with the corrected commands comes back proven, as to any agent mail.
        reply_to=reply_address.address(app.signer, agent, desk.addresses[0]),
    )
    context = {**_reply_context(desk), "why": event.data["why"], "subject": event.data.get("subject") or "",
               "ticket": {"key": ticket.key, "summary": ticket.summary} if ticket else None,
               "recipient": {"name": agent.name, "email": agent.email.lower()},
               "from_name": desk.display_name, "support_address": desk.from_address}
    language = app.renderer.language(agent.language, desk.language)
    rendered = app.renderer.mail(event.kind, (language,), context, headers, now, desk.templates_dir)
    return [enqueue.add(session, app, ticket=ticket, event=event.kind, recipient=agent.email.lower(),
                        rendered=rendered, now=now)]


def _not_applied(agent: AgentConfig, desk: desks.Desk, app) -> str:
    return "Nicht ausgeführt" if app.renderer.language(agent.language, desk.language) == "de" else "Not applied"
