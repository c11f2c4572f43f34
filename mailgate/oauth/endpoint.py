"""Requests to an authorisation server's endpoints (RFC 6749 §5, RFC 8628 §3), with aiohttp.

An answer is sorted the way the callers act on it: a token (or device code) response; an
error the server means (`TokenRefused`: invalid_grant, invalid_client, access_denied, …,
which waiting does not cure); or `ServerUnavailable` (no connection, a timeout, a 5xx, a 429,
`temporarily_unavailable`, something that is not JSON), retried with backoff. Errors carry the
server's error code and description, never a token or the client secret.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import aiohttp

from mailgate.errors import Transient, first_line

TIMEOUT = aiohttp.ClientTimeout(total=30)
DEFAULT_EXPIRES_IN = 3600.0  # RFC 6749 §5.1 makes expires_in optional; an hour is the common lifetime
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
PASSING_ERRORS = ("temporarily_unavailable", "server_error")


class TokenError(Exception):
    """A token request that did not give a token."""


class TokenRefused(TokenError):
    """The server answered with an OAuth2 error (RFC 6749 §5.2)."""

    def __init__(self, error: str, description: str = ""):
        super().__init__(error, description)
        self.error = error
        self.description = " ".join(description.split())[:300]

    def __str__(self) -> str:
        return f"{self.error}: {self.description}" if self.description else self.error


class ServerUnavailable(TokenError, Transient):
    """The server could not be asked, or could not answer now."""


@dataclass(frozen=True)
class Tokens:
    """A successful token response (RFC 6749 §5.1)."""

    access_token: str
    expires_in: float
    refresh_token: str | None  # None: keep the one we have (the server did not rotate it)


async def token(url: str, form: dict[str, str]) -> Tokens:
    """Ask the token endpoint at URL for tokens (a refresh, or the end of a device grant)."""
    body = await post(url, form)
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise ServerUnavailable(f"authorisation server {url}: a token response without an access token")
    try:
        expires_in = float(body.get("expires_in") or DEFAULT_EXPIRES_IN)
    except (TypeError, ValueError):
        expires_in = DEFAULT_EXPIRES_IN
    refresh = body.get("refresh_token")
    return Tokens(access, expires_in, refresh if isinstance(refresh, str) and refresh else None)


async def post(url: str, form: dict[str, str]) -> dict:
    """POST FORM to URL; the JSON answer of a 200, else TokenRefused or ServerUnavailable."""
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            async with session.post(url, data=form, headers={"Accept": "application/json"}) as response:
                text = await response.text()
                status = response.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        raise ServerUnavailable(f"authorisation server {url}: {first_line(e, with_type=True)}") from None
    return _answer(url, status, text)


def _answer(url: str, status: int, text: str) -> dict:
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ServerUnavailable(f"authorisation server {url}: HTTP {status}, not a JSON object")
    if status == 200:
        return body
    error = body.get("error")
    if status >= 500 or status == 429 or not isinstance(error, str) or error in PASSING_ERRORS:
        raise ServerUnavailable(f"authorisation server {url}: HTTP {status} {error or ''}".rstrip())
    raise TokenRefused(error, str(body.get("error_description") or ""))

