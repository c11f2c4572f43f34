"""May an unknown sender be told how to get access? (SPEC §4.4)

The From header is whatever the sender wrote, so a notice to it could go to anyone: mailgate
would mail strangers on an attacker's behalf (backscatter). A notice goes only where all hold:

- the envelope sender vouches for the From address: it is the same address, or an address of
  the same organisational domain (a company's own bounce address, `bounces@mail.acme.example`
  for `alice@acme.example`; mailgate.mail.domains). A public suffix vouches for nobody.
- the trusted MTA (`policy.trusted_authserv_id`) did not see the sender fail DMARC or SPF;
- with `require_authenticated_sender`, it saw the sender pass (DMARC or aligned DKIM);
- the From is not an agent's address (SPEC §11): an agent has access, and the notice would
  tell them otherwise — nor would anyone who forges an agent's From get us to mail the agent.

Machine mail never gets here (it is `ignored_auto` first). The once-a-day rule per address and
the hourly cap in all are the notice's own (mailgate.notify.notices).
"""

from __future__ import annotations

from mailgate.config import AgentConfig, PolicyConfig
from mailgate.mail import authentication, domains
from mailgate.mail.parse import ParsedMessage


def why_not(policy: PolicyConfig, parsed: ParsedMessage, envelope_sender: str | None,
            agent: AgentConfig | None = None) -> str | None:
    """Why the sender of PARSED gets no notice; None when it may get one. AGENT: the agent
    whose address the From is, if any (mailgate.rules.agent.claimed)."""
    if not parsed.from_address:
        return "no notice: no From address"
    if agent is not None:
        return f"no notice: the From is agent {agent.name}'s address, and agents need no access"
    if not vouches(envelope_sender, parsed.from_address):
        return "no notice: the envelope sender does not vouch for the From address"
    if authentication.failed(parsed.headers, policy.trusted_authserv_id):
        return "no notice: the sender failed authentication (DMARC or SPF)"
    if policy.require_authenticated_sender and not authentication.authenticated(
            parsed.headers, parsed.from_address, policy.trusted_authserv_id):
        return "no notice: no DMARC or aligned DKIM pass from the trusted MTA"
    return None


def vouches(envelope_sender: str | None, from_address: str) -> bool:
    """The same address, or one of the same organisational domain."""
    if not envelope_sender or "@" not in envelope_sender:
        return False
    if envelope_sender.strip().lower() == from_address.strip().lower():
        return True
    return domains.same_organisation(envelope_sender.rpartition("@")[2], from_address.rpartition("@")[2])
