"""Which ticket a message answers (SPEC §4.5) and whether its sender may see it (§4.6).

The key in the subject (`[SD-42]` or a bare `SD-42`) comes first, then the Message-IDs in
In-Reply-To and References, newest first: one that mailgate signed names its ticket by
itself (the signature is verified, never trusted), any other is looked up in the tickets'
threads. The first ticket found decides; one the sender may not see counts as none.
"""

from __future__ import annotations

from typing import Iterator

from sqlmodel import Session

from mailgate.mail import refs
from mailgate.mail.parse import ParsedMessage
from mailgate.models import Contact, ThreadMessage, Ticket
from mailgate.signing import Signer
from mailgate.tickets import service


def referenced_ticket(session: Session, signer: Signer, key_prefixes: tuple[str, ...], parsed: ParsedMessage,
                      contact: Contact) -> Ticket | None:
    """The first referenced ticket that exists, if CONTACT may see it; else None."""
    for ticket in _references(session, signer, key_prefixes, parsed):
        return ticket if service.may_see(ticket, contact) else None
    return None


def first_referenced(session: Session, signer: Signer, key_prefixes: tuple[str, ...],
                     parsed: ParsedMessage) -> Ticket | None:
    """The first referenced ticket that exists, whoever may see it (an agent's mail: the
    agent's region decides, mailgate.tickets.by_mail)."""
    return next(_references(session, signer, key_prefixes, parsed), None)


def may_answer_a_ticket(parsed: ParsedMessage, key_prefixes: tuple[str, ...]) -> bool:
    """Whether PARSED names a ticket at all (a key or a thread reference): only such a message
    can become a comment, so only its quoted history is worth stripping."""
    return bool(parsed.in_reply_to or parsed.references or refs.keys_in_subject(parsed.subject, key_prefixes))


def _references(session: Session, signer: Signer, key_prefixes: tuple[str, ...], parsed: ParsedMessage) -> Iterator[Ticket]:
    for key in refs.keys_in_subject(parsed.subject, key_prefixes):
        if ticket := service.find_ticket(session, key):
            yield ticket
    for message_id in [*reversed(parsed.in_reply_to), *reversed(parsed.references)]:
        if ticket := _thread_ticket(session, signer, message_id):
            yield ticket


def _thread_ticket(session: Session, signer: Signer, message_id: str) -> Ticket | None:
    signed_key = signer.ticket_of(message_id)
    if signed_key is not None:
        return service.find_ticket(session, signed_key)
    thread = session.get(ThreadMessage, refs.id_hash(message_id))
    return session.get(Ticket, thread.ticket_id) if thread else None
