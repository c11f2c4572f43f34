"""Is this mail a proven agent's? (SPEC §11)

Mail counts as an agent's only when one of these proves it:
- it was sent to the agent's signed reply address (mailgate.notify.reply_address), named by
  an envelope recipient or — for mail fetched over IMAP, which has no envelope — in To or
  Cc: the token is the secret, so where it is seen does not matter. The address is the proof
  (SPEC §11), so the agent may write from another address of theirs (an alias, a phone) —
  unless the mail is plainly someone else's: its From is another agent's address or a
  contact's (a customer whom the agent put in Cc answering to all writes as themselves), or
  it answers the agent's own mail to all (the agent's address is among its To/Cc: whoever
  the agent copied in, a colleague or a supplier, is not the agent). Whether the From is a
  contact needs the database: the pipeline asks, in its transaction (`Proof.unless_contact`);
- its From is the agent's `email` and the trusted MTA (`policy.trusted_authserv_id`) saw a
  DMARC pass for the From domain, or a DKIM pass aligned with it
  (mailgate.mail.authentication, as for `require_authenticated_sender`).
Anything else from an agent's address is a customer's mail like any other: a forged From
cannot resolve a ticket.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.config import AgentConfig, Config
from mailgate.mail import authentication
from mailgate.mail.parse import ParsedMessage
from mailgate.notify import reply_address
from mailgate.signing import Signer

REPLY_ADDRESS = "sent to the agent's signed reply address"
REPLY_ADDRESS_OTHER_FROM = "sent to the agent's signed reply address, from another address of theirs"
AUTHENTICATED = "a DMARC or aligned DKIM pass from the trusted MTA"


@dataclass(frozen=True)
class Proof:
    agent: AgentConfig
    how: str  # REPLY_ADDRESS, REPLY_ADDRESS_OTHER_FROM or AUTHENTICATED
    # The From is not the agent's email: the proof holds only while it is no contact's
    # (active or not), which the pipeline checks in its transaction.
    unless_contact: bool = False


def claimed(config: Config, parsed: ParsedMessage) -> AgentConfig | None:
    """The agent whose email the From is (proven or not)."""
    sender = (parsed.from_address or "").lower()
    return next((a for a in config.agents if a.email and a.email.lower() == sender), None) if sender else None


def proven(config: Config, signer: Signer, parsed: ParsedMessage, recipients: list[str]) -> Proof | None:
    """The proof that PARSED is an agent's, or None (then it is a customer's mail)."""
    addresses = (*recipients, *parsed.to, *parsed.cc)
    agent = claimed(config, parsed)
    if agent is not None:  # an agent's From: that agent's proof, or none at all
        if reply_address.first_owner(signer, (agent,), addresses) is agent:
            return Proof(agent, REPLY_ADDRESS)
        if authentication.authenticated(parsed.headers, parsed.from_address, config.policy.trusted_authserv_id):
            return Proof(agent, AUTHENTICATED)
        return None
    owner = reply_address.first_owner(signer, tuple(config.agents), addresses)
    if owner is None or not parsed.from_address or _answers_the_agent(owner, parsed):
        return None
    return Proof(owner, REPLY_ADDRESS_OTHER_FROM, unless_contact=True)


def _answers_the_agent(agent: AgentConfig, parsed: ParsedMessage) -> bool:
    """Someone answering the agent's mail to all: the agent's own address is a recipient."""
    return agent.email.lower() in {a.lower() for a in (*parsed.to, *parsed.cc)}
