"""Was the sender's domain authenticated? (SPEC §4.4 `require_authenticated_sender`)

Only `Authentication-Results` headers of the configured authserv-id — the operator's own MTA,
which removes forged ones at the border — are believed; the authres package parses them.
A message passes with DMARC pass for its From domain, or a DKIM pass whose signing domain
(header.d) is aligned with the From domain (relaxed alignment: the same domain, or one a
subdomain of the other).
"""

from __future__ import annotations

import logging
from email.message import Message

import authres

log = logging.getLogger(__name__)


def authenticated(headers: Message, from_address: str | None, trusted_authserv_id: str) -> bool:
    if not from_address or "@" not in from_address:
        return False
    domain = from_address.rpartition("@")[2].lower()
    for value in headers.get_all("Authentication-Results") or []:
        results = _parse(str(value))
        if results is None or (results.authserv_id or "").lower() != trusted_authserv_id.lower():
            continue
        if any(_passes(r, domain) for r in results.results):
            return True
    return False


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
        return header_from is None or _aligned(header_from, from_domain)
    if result.method == "dkim":
        signer = _property(result, "header", "d")
        return signer is not None and _aligned(signer, from_domain)
    return False


def _property(result, ptype: str, name: str) -> str | None:
    for p in result.properties:
        if p.type == ptype and p.name == name:
            return str(p.value).lower().strip()
    return None


def _aligned(a: str, b: str) -> bool:
    return a == b or a.endswith("." + b) or b.endswith("." + a)
