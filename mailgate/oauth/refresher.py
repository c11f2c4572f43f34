"""Access tokens that are always current, for a mailbox or the relay (SPEC §10).

A `Keeper` per OAuth2 account hands out an access token (`token()`), refreshes it when a
server refused it (`renew()`), and in the daemon refreshes it on its own schedule (`run()`),
some minutes before it expires, so an IDLE that lasts for hours always has a fresh token for
its next login. Every refresh happens under the account's file lock, after reading the token
file again, and a rotated refresh token is written (fsynced) before anything uses it.

A refused refresh (the refresh token was revoked, expired, or the consent withdrawn) starts a
failure episode: logged once, counted, shown by `health`, mailed once to the operator; the
account then waits for a new `mailgate oauth login` (the token file changes, noticed within a
second) and tries the old token again only every few minutes. An authorisation server that
cannot be reached is an outage, retried with backoff and never mailed about.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter

import tenacity

from mailgate.core.aio import wait_any, wait_seconds
from mailgate.db import run_blocking
from mailgate.errors import first_line
from mailgate.oauth import alert, endpoint
from mailgate.oauth.endpoint import ServerUnavailable, TokenError, TokenRefused
from mailgate.oauth.providers import Account
from mailgate.oauth.store import LockTimeout, TokenRecord, TokenStore

log = logging.getLogger("mailgate.oauth")

REFRESH_AHEAD_SECONDS = 300.0  # refresh this long before expiry (a quarter of the lifetime, if shorter)
RETRY_REFUSED_SECONDS = 300.0  # a refused refresh token is tried again this seldom
WATCH_SECONDS = 1.0  # how soon a new login is noticed while the account waits for one
MAX_SLEEP_SECONDS = 60.0  # the schedule looks at the file at least this often
_BACKOFF = tenacity.wait_exponential_jitter(initial=1, max=60, jitter=1)

OK, NO_TOKEN, REFRESH_FAILED, UNREACHABLE = "ok", "no token", "refresh failed", "unreachable"


class NeedsLogin(TokenError):
    """No usable refresh token: someone must run `mailgate oauth login NAME`."""


class Keeper:
    """One OAuth2 account in this process."""

    def __init__(self, app, account: Account):
        self.app = app
        self.account = account
        self.store = TokenStore(app.config.state_dir, account.name)
        self.record: TokenRecord | None = None  # as last read or written
        self.problem: str | None = None  # NO_TOKEN, REFRESH_FAILED or UNREACHABLE while it lasts
        self.failures: Counter[str] = Counter()  # refused, unavailable
        self.renewed = asyncio.Event()  # set when the account works again after a problem
        self._troubled = asyncio.Event()  # set when a problem starts: the schedule watches from then on
        self._lock = asyncio.Lock()  # one refresh at a time within this process
        self._refused_at: float | None = None  # monotonic; when this process last had a refusal

    @property
    def name(self) -> str:
        return self.account.name

    @property
    def health(self) -> str:
        if self.record is None and self.problem is None:
            return NO_TOKEN
        return self.problem or OK

    # --- tokens for the IMAP poller and the relay -----------------------------------------

    async def token(self) -> str:
        """A current access token: the stored one while it is fresh, else a refreshed one. While
        the authorisation server refuses or cannot be reached, the one in hand until it expires."""
        record = await self._read()
        if record is not None and not record.refused and self._fresh(record):
            return record.access_token
        if record is not None and record.refused and self._refused_recently():
            return self._still_valid(record)
        return await self._refresh(stale=record.access_token if record else None)

    async def renew(self, rejected: str) -> str:
        """The server refused REJECTED before its time (revoked, or expired early): a new one."""
        log.info("OAuth2 %s: the server refused the access token; refreshing it", self.name)
        return await self._refresh(stale=rejected, rejected=True)

    async def _refresh(self, stale: str | None, rejected: bool = False) -> str:
        async with self._lock:
            try:
                lock = await run_blocking(self.store.lock)
            except LockTimeout as e:
                raise ServerUnavailable(str(e)) from None
            try:
                record = await self._read()  # again, under the lock: another process may have refreshed
                if record is None:
                    self._trouble(NO_TOKEN)
                    raise NeedsLogin(f"no OAuth2 token yet: run `mailgate oauth login {self.name}`")
                if record.access_token != stale and not record.refused and self._fresh(record):
                    return record.access_token
                if rejected and record.access_token == stale:
                    record = record.without_access_token()  # never handed out again
                if record.refused and self._refused_recently():
                    return self._still_valid(record)
                return await self._exchange(record)
            finally:
                lock.release()

    async def _exchange(self, record: TokenRecord) -> str:
        """The refresh grant (RFC 6749 §6); the new tokens are stored before they are used."""
        form = self.account.form(grant_type="refresh_token", refresh_token=record.refresh_token)
        if self.account.scope and self.account.provider != "google":  # Google keeps the granted scope
            form["scope"] = self.account.scope
        try:
            tokens = await endpoint.token(self.account.token_url, form)
        except TokenRefused as e:
            await self._refused(record, e)
            return self._still_valid(self.record)
        except ServerUnavailable as e:
            await self._unreachable(record, e)
            if record.seconds_left() > 0:
                return record.access_token
            raise
        await self._write(record.with_tokens(tokens.access_token, tokens.expires_in, tokens.refresh_token))
        self._working_again()
        return self.record.access_token

    # --- failures -----------------------------------------------------------------------

    async def _refused(self, record: TokenRecord, error: TokenRefused) -> None:
        self.failures["refused"] += 1
        self._refused_at = time.monotonic()
        failed = record.failed(f"refresh refused: {error}", refused=True)
        first = self.problem != REFRESH_FAILED
        if first:
            log.error("OAuth2 %s: the authorisation server refused the refresh token (%s); %s stops until "
                      "`mailgate oauth login %s`", self.name, error, _what(self.account), self.name)
        if not failed.alerted and await self._alert(str(error)):
            failed = dataclasses.replace(failed, alerted=True)
        await self._write(failed)
        if first:
            self._trouble(REFRESH_FAILED)

    async def _alert(self, error: str) -> bool:
        """Mail the operator; False when that could not be done now (tried at the next refusal)."""
        address = self.app.config.operations.alert_address
        if not address:
            log.warning("OAuth2 %s: no [operations] alert_address is set; nobody is mailed", self.name)
            return True
        try:
            row = await run_blocking(alert.queue, self.app, self.account, error)
        except Exception as e:  # the database is away: the next refusal tries again
            log.error("OAuth2 %s: could not queue the mail to %s: %s", self.name, address, first_line(e))
            return False
        log.info("OAuth2 %s: operator mail to %s queued (outbound id=%d)", self.name, address, row)
        return True

    async def _unreachable(self, record: TokenRecord, error: ServerUnavailable) -> None:
        self.failures["unavailable"] += 1
        if self.problem in (None, NO_TOKEN):
            self._trouble(UNREACHABLE)
            log.error("OAuth2 %s: authorisation server unreachable (%s); retrying", self.name, error)
        await self._write(record.failed(f"authorisation server unreachable: {error}", refused=record.refused))

    def _trouble(self, problem: str) -> None:
        self.problem = problem
        self._troubled.set()  # wherever it was noticed (a login, the relay), the schedule looks now

    def _working_again(self) -> None:
        if self.problem is None:
            return
        if self.problem != NO_TOKEN:
            log.warning("OAuth2 %s: the account works again", self.name)
        self.problem, self._refused_at = None, None
        self.renewed.set()  # a mailbox waiting for this tries again at once

    def _refused_recently(self) -> bool:
        return self._refused_at is not None and time.monotonic() - self._refused_at < RETRY_REFUSED_SECONDS

    def _still_valid(self, record: TokenRecord) -> str:
        """After a refusal the access token in hand still works until it expires."""
        if record.seconds_left() > 0:
            return record.access_token
        raise NeedsLogin(f"OAuth2 {record.last_error}; run `mailgate oauth login {self.name}`")

    # --- the schedule (in the daemon) -----------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Refresh ahead of expiry until STOPPING; watch for a new login while one is needed."""
        outages = 0
        while not stopping.is_set():
            try:
                await self.token()
            except TokenError:
                pass  # the state says what is wrong; the pause below says when to look again
            except Exception:  # a bug: logged with its traceback, and the schedule goes on
                log.exception("OAuth2 %s: refresh failed", self.name)
            outages = outages + 1 if self.problem == UNREACHABLE else 0
            self._troubled.clear()
            await wait_any(stopping, self._troubled, timeout=self._pause(outages))

    def _pause(self, outages: int) -> float:
        record = self.record
        if outages:
            return wait_seconds(_BACKOFF, outages)
        if record is None or record.refused or self.problem in (REFRESH_FAILED, NO_TOKEN):
            return WATCH_SECONDS
        return min(max(record.seconds_left() - self._ahead(record), 0.0), MAX_SLEEP_SECONDS)

    # --- the file -------------------------------------------------------------------------

    async def _read(self) -> TokenRecord | None:
        record = await run_blocking(self.store.read)
        if self.problem is not None and record is not None and not record.refused and (
                self.record is None or record.refresh_token != self.record.refresh_token):
            self._working_again()  # a new login (or another process's refresh) ends the episode
        self.record = record
        return record

    async def _write(self, record: TokenRecord) -> None:
        await run_blocking(self.store.write, record)
        self.record = record

    def _fresh(self, record: TokenRecord) -> bool:
        return record.seconds_left() > self._ahead(record)

    @staticmethod
    def _ahead(record: TokenRecord) -> float:
        return min(REFRESH_AHEAD_SECONDS, record.lifetime() / 4)


def _what(account: Account) -> str:
    return "fetching from this mailbox" if account.used_for == "imap" else "sending through the relay"

