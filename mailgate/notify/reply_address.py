"""The signed per-agent reply address (SPEC §11): `support+agent-<token>@example.com`.

The mail mailgate sends an agent carries it in `Reply-To`; mail that arrives at it from the
agent's own address is the agent's (mailgate.rules.agent). The token is an HMAC (the app's
Signer, keyed with `[security] secret`) over a purpose, the agent's name and the agent's
email: it cannot be forged, it shows nothing readable (not the name, not the address), and it
stops working when the agent's email changes or the secret does. Lower-case hex, because
mail systems may change the case of a local part. To tell which agent an address belongs to,
each configured agent's token is computed and compared in constant time (agents are few).
"""

from __future__ import annotations

import hmac

from mailgate.config import AgentConfig
from mailgate.mail.addresses import tag_of
from mailgate.signing import Signer

TAG = "agent"


def address(signer: Signer, agent: AgentConfig, desk_address: str) -> str:
    """AGENT's reply address at DESK_ADDRESS (a desk's address, so it comes back to mailgate)."""
    local, _, domain = desk_address.lower().rpartition("@")
    return f"{local.split('+', 1)[0]}+{TAG}-{_token(signer, agent)}@{domain}"


def agent_of(signer: Signer, agents: tuple[AgentConfig, ...], address: str) -> AgentConfig | None:
    """The agent whose reply address ADDRESS is (any desk's), when its token is genuine."""
    return first_owner(signer, agents, (address,))


def first_owner(signer: Signer, agents: tuple[AgentConfig, ...], addresses) -> AgentConfig | None:
    """The agent of the first of ADDRESSES that is a genuine reply address. The tokens are
    computed once, not once per address: To and Cc are the sender's to fill."""
    tokens = None
    for address in addresses:
        kind, _, token = tag_of(address).partition("-")
        if kind != TAG or not token:
            continue
        tokens = tokens or [(_token(signer, agent), agent) for agent in agents if agent.email]
        for genuine, agent in tokens:
            if hmac.compare_digest(genuine, token):
                return agent
    return None


def _token(signer: Signer, agent: AgentConfig) -> str:
    return signer.sign(f"agent-reply\n{agent.name}\n{agent.email.lower()}")
