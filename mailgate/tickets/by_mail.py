"""A proven agent's mail (SPEC §11), applied by the pipeline in its transaction.

`prepare` (before the transaction, from the parsed mail alone): the proof
(mailgate.rules.agent), the new text with the quoted history cut as for customers, and the
commands at its top (mailgate.mail.commands).

`reply` (the mail refers to a ticket the agent may see): the text is a comment by
`agent:NAME` — public, or an internal note when the mail went to a desk's comment address
(`local+comment@`) or says `#internal` — and the commands change fields by the rules of
`ticket set`. A comment and changes together are one action: one mail per customer (the
change's event carries the comment). Whatever is wrong — a command, a value, a rule of the
ticket (closed is final), a read-only agent, nothing to apply — applies nothing at all: the
checks come before the first change, and the agent is mailed why (`agent_notice`).

Outcomes: `comment_added` (with or without changes), `ticket_changed` (changes, no
comment), `rejected_command` (nothing applied; the agent told why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import Session

from mailgate import desks
from mailgate.mail import commands as command_lines, quotes
from mailgate.mail.parse import ParsedMessage
from mailgate.rules import agent as agent_rule
from mailgate.tickets import service
from mailgate.tickets.events import Event


@dataclass
class AgentMail:
    """What a proven agent's mail says, worked out before the transaction."""

    proof: agent_rule.Proof
    commands: command_lines.Commands
    text: str  # the new text without the command lines
    internal: bool  # sent to a comment address, or #internal


@dataclass
class Decided:
    outcome: str
    ticket: object | None = None
    comment_id: int | None = None
    events: list[Event] = field(default_factory=list)
    error: str | None = None
    reason: str = ""  # for explain


def prepare(app, parsed: ParsedMessage, recipients: list[str]) -> AgentMail | None:
    """The agent's mail PARSED, when it is proven to be an agent's; else None."""
    proof = agent_rule.proven(app.config, app.signer, parsed, recipients)
    if proof is None:
        return None
    commands, text = command_lines.read(quotes.new_text(parsed.text, parsed.subject))
    the_desks = desks.of(app.config)
    to_comment_address = any(the_desks.is_comment_address(a) for a in (*recipients, *parsed.to, *parsed.cc))
    return AgentMail(proof, commands, text.strip(), internal=commands.internal or to_comment_address)


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


def refused(outcome: str, why: str, mail: AgentMail, parsed: ParsedMessage, desk: desks.Desk, ticket=None) -> Decided:
    """Nothing applied: the agent is told WHY, from DESK."""
    tell = Event("agent_notice", ticket.id if ticket is not None else None, data={
        "agent": mail.proof.agent.name, "why": why, "subject": parsed.subject, "message_id": parsed.message_id,
        "desk": desk.name})
    return Decided(outcome, ticket, events=[tell], error=why, reason=f"refused, agent:{mail.proof.agent.name} is told why: {why}")
