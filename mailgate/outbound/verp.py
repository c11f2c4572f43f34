"""VERP return paths: each outbound message leaves with its own envelope sender,
`<local>+bounce-<outbound id>-<signature>@<domain>` of the from address, so a bounce —
however broken its report — names the row it is about. The signature (a short HMAC) keeps
strangers from marking arbitrary rows bounced by writing to made-up addresses.
"""

from __future__ import annotations

import hmac
import re

from mailgate.signing import Signer

TAG = "bounce"
SIG_LEN = 10  # hex characters: 40 bits, plenty to stop guessing, short enough for a local part
_PATTERN = re.compile(r"\+" + TAG + r"-(\d{1,18})-([0-9a-f]{%d})@" % SIG_LEN)


def address(signer: Signer, from_address: str, outbound_id: int) -> str:
    local, _, domain = from_address.rpartition("@")
    return f"{local.split('+', 1)[0]}+{TAG}-{outbound_id}-{_signature(signer, outbound_id)}@{domain}"


def outbound_id(signer: Signer, recipient: str) -> int | None:
    """The outbound id a VERP address stands for, when it is genuine; else None."""
    m = _PATTERN.search((recipient or "").strip().strip("<>").lower())
    if not m:
        return None
    number = int(m.group(1))
    return number if hmac.compare_digest(_signature(signer, number), m.group(2)) else None


def _signature(signer: Signer, outbound_id: int) -> str:
    return signer.sign(f"verp:{outbound_id}")[:SIG_LEN]

