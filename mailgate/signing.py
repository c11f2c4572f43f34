"""HMAC signatures for what mailgate hands out: Message-IDs of its mail and notification links.

A Message-ID mailgate generates looks like <mg.SD-42.5f1c2a9e.7d3f...@domain>: the ticket key,
a random nonce and an HMAC over both. A reply that references it can be verified instead of
trusted (SPEC §4.5). The secret comes from `[security] secret`, or is generated once and kept
in <state_dir>/secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from pathlib import Path

from mailgate.core.durable import create_file

SIG_LEN = 20  # hex characters: 80 bits


def load_secret(configured: str, state_dir: Path) -> bytes:
    """The configured secret, else the one kept in the state directory (made on first use)."""
    if configured:
        return configured.encode()
    path = Path(state_dir) / "secret"
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode()
    # When two processes start at once, one secret wins and both use it.
    return value if create_file(path, value, 0o600) else path.read_bytes().strip()


class Signer:
    def __init__(self, secret: bytes, domain: str):
        self.secret = secret
        self.domain = domain
        self._pattern = re.compile(
            r"^<?mg\.([A-Za-z0-9]+-\d+)\.([0-9a-f]{8,32})\.([0-9a-f]{%d})@([^>]+)>?$" % SIG_LEN
        )

    def sign(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()[:SIG_LEN]

    def verify(self, text: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(text), signature)

    def message_id(self, key: str) -> str:
        """A new signed Message-ID (with angle brackets) for mail about ticket KEY."""
        nonce = secrets.token_hex(8)
        return f"<mg.{key}.{nonce}.{self.sign(f'mg.{key}.{nonce}')}@{self.domain}>"

    def ticket_of(self, message_id: str) -> str | None:
        """The ticket key of a Message-ID mailgate signed, or None (not ours, or forged)."""
        m = self._pattern.match(message_id.strip())
        if not m:
            return None
        key, nonce, sig, _domain = m.groups()
        return key if self.verify(f"mg.{key}.{nonce}", sig) else None
