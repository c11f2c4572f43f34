"""`mailgate oauth login NAME`: the device authorisation grant (RFC 8628), no browser on the server.

The server gives a user code and a verification URL; whoever may sign in to the mailbox opens
the URL anywhere, enters the code and consents, while we poll the token endpoint — at the
interval the server asked for, 5 s slower after each `slow_down`, until the code expires. The
refresh token that comes back is stored at once (store.py); it is never printed or logged.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

from mailgate.oauth import endpoint
from mailgate.oauth.endpoint import ServerUnavailable, TokenRefused, Tokens
from mailgate.oauth.providers import Account
from mailgate.oauth.store import TokenRecord, TokenStore

SLOW_DOWN_SECONDS = 5.0  # RFC 8628 §3.5: added to the interval at each slow_down
DEFAULT_INTERVAL = 5.0
REFUSED = ("access_denied", "authorization_declined")  # the latter is Microsoft's word for it
EXPIRED = ("expired_token", "code_expired")


class LoginFailed(Exception):
    """The grant was refused or expired, or the server would not start one."""


@dataclass(frozen=True)
class DeviceCode:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


async def start(account: Account) -> DeviceCode:
    """Ask the device authorisation endpoint for a user code."""
    try:
        body = await endpoint.post(account.device_url, account.form(scope=account.scope))
    except (TokenRefused, ServerUnavailable) as e:
        raise LoginFailed(f"the device authorisation endpoint refused: {e}") from None
    try:
        return DeviceCode(
            device_code=body["device_code"], user_code=body["user_code"],
            # Google says verification_url, RFC 8628 verification_uri
            verification_uri=body.get("verification_uri") or body["verification_url"],
            verification_uri_complete=body.get("verification_uri_complete"),
            expires_in=float(body.get("expires_in") or 600), interval=float(body.get("interval") or DEFAULT_INTERVAL),
        )
    except (KeyError, TypeError, ValueError):
        raise LoginFailed(f"{account.device_url}: not a device authorisation response") from None


async def wait_for_grant(account: Account, code: DeviceCode, slow_down: float = SLOW_DOWN_SECONDS) -> Tokens:
    """Poll the token endpoint until the user has signed in (or refused, or the code expired)."""
    deadline = time.monotonic() + code.expires_in
    interval = code.interval
    form = account.form(grant_type=endpoint.DEVICE_GRANT, device_code=code.device_code)
    while True:
        await asyncio.sleep(interval)
        if time.monotonic() > deadline:
            raise LoginFailed("the code expired before the sign-in was completed")
        try:
            return await endpoint.token(account.token_url, form)
        except ServerUnavailable:
            continue  # a passing fault of the server: the code is still good until it expires
        except TokenRefused as e:
            if e.error == "slow_down":
                interval += slow_down
            elif e.error != "authorization_pending":
                raise LoginFailed(_refusal(e)) from None


def _refusal(e: TokenRefused) -> str:
    if e.error in REFUSED:
        return f"the sign-in was refused ({e})"
    if e.error in EXPIRED:
        return f"the code expired before the sign-in was completed ({e})"
    return f"the token endpoint refused: {e}"


async def login(account: Account, store: TokenStore, say: Callable[[str], None]) -> TokenRecord:
    """The whole grant: show SAY the URL and code, wait, store the tokens; the stored record."""
    code = await start(account)
    say(f"To let mailgate use {account.username} ({account.name}), open {code.verification_uri}")
    say(f"and enter the code {code.user_code}")
    if code.verification_uri_complete:
        say(f"(or open {code.verification_uri_complete}, which carries the code)")
    say(f"Waiting up to {code.expires_in / 60:.0f} minutes for the sign-in ...")
    return await store_tokens(store, await wait_for_grant(account, code))


async def store_tokens(store: TokenStore, tokens: Tokens) -> TokenRecord:
    """Keep the tokens of a completed sign-in, in place of whatever was stored."""
    if tokens.refresh_token is None:
        raise LoginFailed("the server gave no refresh token (the scope needs offline access)")
    record = TokenRecord(refresh_token=tokens.refresh_token).with_tokens(tokens.access_token, tokens.expires_in, None)
    await asyncio.to_thread(_replace, store, record)
    return record


def _replace(store: TokenStore, record: TokenRecord) -> None:
    """A new login replaces whatever was stored, under the lock a refreshing daemon holds."""
    lock = store.lock()
    try:
        store.write(record)
    finally:
        lock.release()
