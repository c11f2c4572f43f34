"""Was the sender's domain authenticated? (SPEC §4.4 `require_authenticated_sender`)

Only `Authentication-Results` headers of the configured authserv-id — the operator's own MTA,
which removes forged ones at the border — are believed; the authres package parses them.
A message passes with DMARC pass for its From domain — the result must name it (`header.from`);
one that names no domain proves nothing —, or a DKIM pass whose signing domain (header.d) is
aligned with the From domain: relaxed alignment, the same organisational domain (the public
suffix list, mailgate.mail.domains), so a signature of a public suffix (co.uk, github.io) or
of another organisation under one never counts.

`failed` tells whether those results show the sender failing (DMARC or SPF fail): such mail
gets no notice from us (mailgate.rules.notice).
"""

from __future__ import annotations

import logging
from email.message import Message

import authres

from mailgate.mail import domains

log = logging.getLogger(__name__)


def authenticated(headers: Message, from_address: str | None, trusted_authserv_id: str) -> bool:
    if not from_address or "@" not in from_address:
        return False
    domain = domains.normal(from_address.rpartition("@")[2])
    return any(_passes(r, domain) for r in _trusted_results(headers, trusted_authserv_id))


def failed(headers: Message, trusted_authserv_id: str) -> bool:
    """Whether the trusted MTA saw the sender fail DMARC or SPF."""
    return any(r.result == "fail" and r.method in ("dmarc", "spf") for r in _trusted_results(headers, trusted_authserv_id))


def _trusted_results(headers: Message, trusted_authserv_id: str) -> list:
    if not trusted_authserv_id:
        return []
    found = []
    for value in headers.get_all("Authentication-Results") or []:
        results = _parse(str(value))
        if results is not None and (results.authserv_id or "").lower() == trusted_authserv_id.lower():
            found.extend(results.results)
    return found


def _parse(value: str):
    try:
        return authres.AuthenticationResultsHeader.parse_value(" ".join(value.split()))
    except Exception:  # a malformed header proves nothing
        return None


def _passes(result, from_domain: str) -> bool:
    if result.result != "pass":
        return False
    if result.method == "dmarc":
        header_from = _property(result, "header", "from")
        return header_from is not None and domains.normal(header_from) == from_domain
    if result.method == "dkim":
        signer = _property(result, "header", "d")
        return signer is not None and domains.same_organisation(signer, from_domain)
    return False


def _property(result, ptype: str, name: str) -> str | None:
    for p in result.properties:
        if p.type == ptype and p.name == name:
            return str(p.value).lower().strip()
    return None

