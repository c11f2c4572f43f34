"""A proven agent's mail (SPEC §11), applied by the pipeline in its transaction.

`prepare` (before the transaction, from the parsed mail alone): the proof
(mailgate.rules.agent), the new text with the quoted history cut as for customers, the
commands at its top (mailgate.mail.commands), and a forwarded message in the whole text or
attached (mailgate.mail.forwards) with its attachments stored.

`reply` (the mail refers to a ticket the agent may see): the text is a comment by
`agent:NAME` — public, or an internal note when the mail went to a desk's comment address
(`local+comment@`) or says `#internal` — and the commands change fields by the rules of
`ticket set`. A comment and changes together are one action: one mail per customer (the
change's event carries the comment). Whatever is wrong — a command, a value, a rule of the
ticket (closed is final), a read-only agent, nothing to apply — applies nothing at all: the
checks come before the first change, and the agent is mailed why (`agent_notice`).

`forward` (the mail refers to no ticket): the forwarded customer's mail opens a ticket at the
desk it was sent to, for its sender when that is an active contact — creator, organisation,
the original's text and attachments, its To/Cc colleagues as participants — with the
agent's own text as an internal note and the commands as the ticket's first fields. The
ticket is the agent's action: no agent mail to them about it, while the customer gets the
usual `ticket_created` mail. A sender who is no active contact, or a mail that forwards
nothing, opens nothing, and only the agent is told why.

Outcomes: `comment_added` (with or without changes), `ticket_changed` (changes, no
comment), `ticket_created` (a forward), `rejected_command` / `rejected_forward` (nothing
applied; the agent told why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import Session

from sqlmodel import select

from mailgate import desks
from mailgate.mail import commands as command_lines, forwards, quotes, subjects
from mailgate.mail.parse import Limits, ParsedMessage
from mailgate.models import Contact, Ticket
from mailgate.rules import agent as agent_rule, sender
from mailgate.tickets import service
from mailgate.tickets.events import Event


@dataclass
class AgentMail:
    """What a proven agent's mail says, worked out before the transaction."""

    proof: agent_rule.Proof
    commands: command_lines.Commands
    text: str  # the new text without the command lines
    internal: bool  # sent to a comment address, or #internal
    forward: forwards.Forward | None = None  # the customer's mail it forwards, if any
    forward_digests: list[str] = field(default_factory=list)  # of an attached original's attachments


@dataclass
class Decided:
    outcome: str
    ticket: object | None = None
    comment_id: int | None = None
    events: list[Event] = field(default_factory=list)
    error: str | None = None
    reason: str = ""  # for explain


def prepare(app, parsed: ParsedMessage, recipients: list[str], limits: Limits, blobs) -> AgentMail | None:
    """The agent's mail PARSED, when it is proven to be an agent's; else None. Attachments
    of an attached original go into BLOBS now, outside the transaction."""
    proof = agent_rule.proven(app.config, app.signer, parsed, recipients)
    if proof is None:
        return None
    commands, text = command_lines.read(quotes.new_text(parsed.text, parsed.subject))
    the_desks = desks.of(app.config)
    to_comment_address = any(the_desks.is_comment_address(a) for a in (*recipients, *parsed.to, *parsed.cc))
    mail = AgentMail(proof, commands, text.strip(), internal=commands.internal or to_comment_address)
    # A forward is looked for in the whole text: quote stripping may take an Outlook forward
    # for history. The commands are at the top of both.
    mail.forward = forwards.find(parsed, command_lines.read(parsed.text)[1], limits)
    if mail.forward is not None and mail.forward.attached_index is not None:
        mail.forward_digests = [blobs.put(a.data) for a in mail.forward.attachments]
    return mail


def reply(session: Session, mail: AgentMail, parsed: ParsedMessage, ticket, now: datetime,
          inbound_id: int, attachments: tuple[list, list[str]], desk: desks.Desk) -> Decided:
    """MAIL answers TICKET: a comment and the commands' changes, or nothing and a notice."""
    agent, commands = mail.proof.agent, mail.commands
    if why := _why_not(session, mail, ticket):
        return refused("rejected_command", why, mail, parsed, desk, ticket)
    try:
        service.check_set(ticket, **commands.fields)  # every rule before the first change
        comment, events = _comment(session, mail, parsed, ticket, now, inbound_id, attachments)
        changes = service.agent_set(ticket, now, agent=agent.name, **commands.fields) if commands.fields else []
    except service.TicketError as e:
        return refused("rejected_command", str(e), mail, parsed, desk, ticket)
    session.add(ticket)
    service.add_to_thread(session, ticket, parsed.message_id)
    if changes and comment is not None and not comment.internal:
        changes[0].comment_id = comment.id  # one action, one mail per customer: the comment goes with it
        events = []
    done = ", ".join(f"{c['field']} {c['old'] or '-'} → {c['new'] or '-'}" for c in changes[0].data["changes"]) if changes else ""
    if comment is None:
        return Decided("ticket_changed", ticket, events=changes, reason=f"{ticket.key}: {done} by agent:{agent.name}")
    what = "an internal note" if comment.internal else "a public comment"
    return Decided("comment_added", ticket, comment.id, events + changes,
                   reason=f"{what} on {ticket.key} by agent:{agent.name}" + (f"; {done}" if done else ""))


def _why_not(session: Session, mail: AgentMail, ticket) -> str | None:
    """Why MAIL may not act on TICKET at all, before its commands are looked at."""
    agent, commands = mail.proof.agent, mail.commands
    if not service.agent_may_see(session, ticket, agent.region):
        return f"{ticket.key} is confidential: only agents of its organisation's region see it"
    if agent.read_only:
        return f"agent {agent.name} may read, not change (read_only in [[agents]])"
    if commands.problems:
        return "; ".join(commands.problems)
    if not mail.text and not commands.fields:
        return ("nothing to apply: #internal needs a note on the lines below it" if commands.internal
                else "nothing to apply: no text above the quoted mail and no command")
    return None


def _comment(session: Session, mail: AgentMail, parsed: ParsedMessage, ticket, now: datetime, inbound_id: int,
             attachments: tuple[list, list[str]]):
    """The agent's comment (None without text) and its events."""
    if not mail.text:
        return None, []
    comment, events = service.agent_comment(session, ticket, mail.proof.agent.name, mail.text, mail.internal, now)
    comment.inbound_id = inbound_id
    comment.full_body = parsed.text  # what the cut took stays reachable, as for customers
    service.store_attachments(session, ticket, *attachments, comment)
    return comment, events


def forward(session: Session, mail: AgentMail, parsed: ParsedMessage, now: datetime, inbound_id: int,
            attachments: tuple[list, list[str]], desk: desks.Desk, prefixes: tuple[str, ...]) -> Decided:
    """MAIL refers to no ticket: open one for the customer whose mail it forwards."""
    agent, original = mail.proof.agent, mail.forward
    if why := _why_no_ticket(session, mail):
        return refused("rejected_forward", why, mail, parsed, desk)
    contact = sender.active_contact(session, original.sender_address)
    try:
        service.check_set(Ticket(type="request", status="opened"), **mail.commands.fields)
    except service.TicketError as e:
        return refused("rejected_forward", str(e), mail, parsed, desk)
    ticket, events = service.create_ticket(
        session, key_prefix=desk.key_prefix, desk=desk.name, creator=contact, now=now, description=original.text,
        summary=subjects.summary(original.subject or parsed.subject, prefixes))
    events[0].actor_agent = agent.name  # the agent's action: not mailed to them
    if mail.commands.fields:  # the ticket's first fields: its ticket_created mail shows them
        service.agent_set(ticket, now, agent=agent.name, **mail.commands.fields)
    theirs, ours = _split_attachments(mail, attachments)
    service.store_attachments(session, ticket, *theirs)
    for colleague in _colleagues(session, original, contact):
        service.add_participant(session, ticket, colleague)
    service.add_many_to_thread(session, ticket, [original.message_id, parsed.message_id])
    if original.note:
        note, _ = service.agent_comment(session, ticket, agent.name, original.note, True, now)
        note.inbound_id, note.full_body = inbound_id, parsed.text
        service.store_attachments(session, ticket, *ours, note)
    else:
        service.store_attachments(session, ticket, *ours)
    return Decided("ticket_created", ticket, events=events,
                   reason=f"a forward of {contact.email}'s mail by agent:{agent.name}: a new ticket {ticket.key} "
                          f"for them at desk {desk.name}" + (", the agent's text an internal note" if original.note else ""))


def _why_no_ticket(session: Session, mail: AgentMail) -> str | None:
    """Why MAIL, which refers to no ticket, opens none."""
    agent, original = mail.proof.agent, mail.forward
    if original is None:
        return ("it refers to no ticket (no key in the subject, no reference to a ticket's mail) and forwards "
                "no message (inline, or attached): nothing was opened")
    if agent.read_only:
        return f"agent {agent.name} may read, not change (read_only in [[agents]])"
    if mail.commands.problems:
        return "; ".join(mail.commands.problems)
    if not original.sender_address:
        return (f"the forwarded message names no sender address (From: {original.sender_name or 'nothing'}): "
                "nothing was opened")
    if sender.active_contact(session, original.sender_address) is None:
        return (f"{original.sender_address} is not an active contact, so no ticket was opened for them; add them "
                f"(mailgate contact add {original.sender_address} --name NAME --org ORG) and forward the mail again")
    return None


def _split_attachments(mail: AgentMail, attachments: tuple[list, list[str]]):
    """(the original's attachments, the agent's own) as (attachments, digests) pairs. Inline,
    the forwarding mail's attachments are the original's; attached, the rest are the agent's."""
    files, digests = attachments
    index = mail.forward.attached_index
    if index is None:
        return (files, digests), ([], [])
    rest = [i for i in range(len(files)) if i != index]
    return (mail.forward.attachments, mail.forward_digests), ([files[i] for i in rest], [digests[i] for i in rest])


def _colleagues(session: Session, original: forwards.Forward, creator: Contact) -> list[Contact]:
    """Active contacts of the creator's organisation the original went to too (SPEC §4.8)."""
    addresses = {a for a in (*original.to, *original.cc) if a != creator.email}
    if not addresses:
        return []
    return list(session.exec(select(Contact).where(
        Contact.email.in_(sorted(addresses)), Contact.active.is_(True), Contact.organisation_id == creator.organisation_id)))


def refused(outcome: str, why: str, mail: AgentMail, parsed: ParsedMessage, desk: desks.Desk, ticket=None) -> Decided:
    """Nothing applied: the agent is told WHY, from DESK."""
    tell = Event("agent_notice", ticket.id if ticket is not None else None, data={
        "agent": mail.proof.agent.name, "why": why, "subject": parsed.subject, "message_id": parsed.message_id,
        "desk": desk.name})
    return Decided(outcome, ticket, events=[tell], error=why, reason=f"refused, agent:{mail.proof.agent.name} is told why: {why}")
