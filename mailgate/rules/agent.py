"""Is this mail a proven agent's? (SPEC §11)

Mail counts as an agent's only when its From is the `email` of an agent of `[[agents]]` and
one of these proves it:
- it was sent to that agent's signed reply address (mailgate.notify.reply_address), named by
  an envelope recipient or — for mail fetched over IMAP, which has no envelope — in To or
  Cc: the token is the secret, so where it is seen does not matter;
- the trusted MTA (`policy.trusted_authserv_id`) saw a DMARC pass for the From domain, or a
  DKIM pass aligned with it (mailgate.mail.authentication, as for
  `require_authenticated_sender`).
The From must be the agent's in both cases: a customer who got hold of the reply address
(an agent put them in Cc, they answered to all) writes as themselves, not as the agent.
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
AUTHENTICATED = "a DMARC or aligned DKIM pass from the trusted MTA"


@dataclass(frozen=True)
class Proof:
    agent: AgentConfig
    how: str  # REPLY_ADDRESS or AUTHENTICATED


def claimed(config: Config, parsed: ParsedMessage) -> AgentConfig | None:
    """The agent whose email the From is (proven or not)."""
    sender = (parsed.from_address or "").lower()
    return next((a for a in config.agents if a.email and a.email.lower() == sender), None) if sender else None


def proven(config: Config, signer: Signer, parsed: ParsedMessage, recipients: list[str]) -> Proof | None:
    """The proof that PARSED is an agent's, or None (then it is a customer's mail)."""
    agent = claimed(config, parsed)
    if agent is None:
        return None
    for address in (*recipients, *parsed.to, *parsed.cc):
        if reply_address.agent_of(signer, (agent,), address) is agent:
            return Proof(agent, REPLY_ADDRESS)
    if authentication.authenticated(parsed.headers, parsed.from_address, config.policy.trusted_authserv_id):
        return Proof(agent, AUTHENTICATED)
    return None
