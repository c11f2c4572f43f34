"""Signed notification links: no login, yet good for one contact and one ticket only.

A token is `<base64url("TICKET_ID:CONTACT_ID")>.<hmac>`: opaque — it names rows by their ids,
so a link shows neither the contact's address nor the ticket — and the HMAC (the app's
Signer, keyed with `[security] secret`) covers the purpose and both ids, so a token cannot be
forged, nor turned into one for another contact, another ticket or another purpose.
"""

from __future__ import annotations

import base64
import binascii
import re

from mailgate.signing import Signer

NOTIFICATIONS = "notifications"  # the purpose of the on/off link and List-Unsubscribe
_TOKEN = re.compile(r"^([A-Za-z0-9_-]{4,64})\.([0-9a-f]{8,64})$")
_IDS = re.compile(r"^([1-9][0-9]{0,18}):([1-9][0-9]{0,18})$")


def make(signer: Signer, ticket_id: int, contact_id: int, purpose: str = NOTIFICATIONS) -> str:
    payload = base64.urlsafe_b64encode(f"{ticket_id}:{contact_id}".encode()).decode().rstrip("=")
    return f"{payload}.{signer.sign(_signed_text(purpose, ticket_id, contact_id))}"


def read(signer: Signer, token: str, purpose: str = NOTIFICATIONS) -> tuple[int, int] | None:
    """(ticket id, contact id) of a genuine token for PURPOSE, else None."""
    m = _TOKEN.match(token or "")
    if not m:
        return None
    try:
        ids = _IDS.match(base64.urlsafe_b64decode(m.group(1) + "=" * (-len(m.group(1)) % 4)).decode("ascii"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if ids is None:
        return None
    ticket_id, contact_id = int(ids.group(1)), int(ids.group(2))
    if not signer.verify(_signed_text(purpose, ticket_id, contact_id), m.group(2)):
        return None
    return ticket_id, contact_id


def url(base: str, token: str) -> str:
    return f"{base.rstrip('/')}/notifications/{token}"


def _signed_text(purpose: str, ticket_id: int, contact_id: int) -> str:
    return f"link\n{purpose}\n{ticket_id}\n{contact_id}"
