"""How a delivery attempt failed, as the retry rules of SPEC §7 need to know it.

Like aiosmtplib's own errors, each carries the SMTP code and text; `str()` is the server's
reply ("550 5.1.1 no such user"), which is what `last_error` keeps.
"""

from __future__ import annotations


class DeliveryError(Exception):
    def __init__(self, code: int | None, text: str):
        super().__init__(code, text)
        self.code = code
        self.text = " ".join(str(text).split())[:1000]

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.code else self.text


class TemporaryFailure(DeliveryError):
    """4xx, a timeout, a lost connection: retried with backoff until the maximum age."""


class PermanentFailure(DeliveryError):
    """5xx: this message will never be accepted; failed at once."""


class Outage(TemporaryFailure):
    """The relay (or the Maildir) cannot take any message now; every other would fail alike,
    so the sender stops its pass and logs the outage once."""
