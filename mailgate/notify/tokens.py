"""Signed notification links: no login, yet good for one contact and one ticket only.

A token is `<base64url(purpose, key, email)>.<hmac>`; the HMAC (the app's Signer, keyed with
`[security] secret`) covers all three, so a token cannot be forged, nor turned into one for
another contact, another ticket or another purpose.
"""

from __future__ import annotations

import base64
import binascii
import re

from mailgate.signing import Signer

NOTIFICATIONS = "notifications"  # the purpose of the on/off link and List-Unsubscribe
_TOKEN = re.compile(r"^([A-Za-z0-9_-]{4,800})\.([0-9a-f]{8,64})$")


def make(signer: Signer, key: str, email: str, purpose: str = NOTIFICATIONS) -> str:
    payload = _b64(f"{key}\n{email.lower()}")
    return f"{payload}.{signer.sign(_signed_text(purpose, key, email.lower()))}"


def read(signer: Signer, token: str, purpose: str = NOTIFICATIONS) -> tuple[str, str] | None:
    """(ticket key, contact email) of a genuine token for PURPOSE, else None."""
    m = _TOKEN.match(token or "")
    if not m:
        return None
    try:
        key, _, email = _unb64(m.group(1)).partition("\n")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if not key or not email or not signer.verify(_signed_text(purpose, key, email), m.group(2)):
        return None
    return key, email


def url(base: str, token: str) -> str:
    return f"{base.rstrip('/')}/notifications/{token}"


def _signed_text(purpose: str, key: str, email: str) -> str:
    return f"link\n{purpose}\n{key}\n{email}"


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
