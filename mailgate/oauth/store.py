"""The token files: one per OAuth2 account under <state_dir>/oauth/ (SPEC §10).

`<name>.json` holds the refresh token (the one secret that outlives a restart), the current
access token and what `oauth status` shows. It is mode 0600 in a 0700 directory and is only
ever replaced whole — written to a temporary file, fsynced, renamed over the old one, the
directory fsynced — so a crash leaves the old token or the new one, never half of either: a
rotated refresh token is kept the moment it arrives, before anything uses it.

Several processes (the daemon, `outbox flush`, `oauth login`, other instances on one state
directory) share the files. Whoever refreshes holds `<name>.lock` (flock) and reads the file
again after taking it: another process may have refreshed meanwhile, and a refresh token that
was rotated away must not be used again.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

from mailgate.core import durable

LOCK_TIMEOUT_SECONDS = 120.0  # longer than one token request can take (its timeout is 30 s)


class LockTimeout(Exception):
    """Another process held the account's lock for too long."""


@dataclass(frozen=True)
class TokenRecord:
    refresh_token: str
    access_token: str = ""
    expires_at: str | None = None  # of the access token, ISO 8601
    last_refresh: str | None = None  # when the access token was issued
    last_error: str | None = None  # the last failed refresh, without any token
    refused: bool = False  # the authorisation server refused this refresh token: a new login is needed
    alerted: bool = False  # the operator was mailed about this failure

    def seconds_left(self, now: float | None = None) -> float:
        """Seconds until the access token expires; 0 without one."""
        if not self.access_token or not self.expires_at:
            return 0.0
        return datetime.fromisoformat(self.expires_at).timestamp() - (now or time.time())

    def lifetime(self) -> float:
        """Seconds the current access token was issued for (0 when unknown)."""
        if not self.expires_at or not self.last_refresh:
            return 0.0
        return (datetime.fromisoformat(self.expires_at) - datetime.fromisoformat(self.last_refresh)).total_seconds()

    def with_tokens(self, access_token: str, expires_in: float, refresh_token: str | None) -> "TokenRecord":
        """After a successful token response: the failure is over, a rotated refresh token replaces
        the old one (one that was not rotated stays)."""
        now = datetime.now(timezone.utc).replace(microsecond=0)
        return TokenRecord(refresh_token=refresh_token or self.refresh_token, access_token=access_token,
                           expires_at=(now + timedelta(seconds=expires_in)).isoformat(), last_refresh=now.isoformat())

    def without_access_token(self) -> "TokenRecord":
        return dataclasses.replace(self, access_token="", expires_at=None)

    def failed(self, error: str, refused: bool) -> "TokenRecord":
        # The episode (and its one operator mail) lasts until a refresh succeeds.
        return dataclasses.replace(self, last_error=error, refused=refused)


class TokenStore:
    """The token file and lock of one account."""

    def __init__(self, state_dir: Path, name: str):
        self.dir = Path(state_dir) / "oauth"
        stem = quote(name, safe="@.-_+")  # a mailbox name is free text; a file name is not
        self.path = self.dir / f"{stem}.json"
        self.lock_path = self.dir / f"{stem}.lock"

    # --- reading and writing (blocking: call them off the event loop) -------------------

    def read(self) -> TokenRecord | None:
        """The stored record; None when there is none (no login yet)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        known = {f.name for f in dataclasses.fields(TokenRecord)}
        return TokenRecord(**{k: v for k, v in data.items() if k in known})

    def write(self, record: TokenRecord) -> None:
        """Replace the record durably: tmp + fsync + rename, then the directory."""
        self._ensure_dir()
        durable.write_file(self.path, [json.dumps(dataclasses.asdict(record), indent=1).encode()], mode=0o600)

    def changed_since(self, record: TokenRecord | None) -> bool:
        """True when the file now holds another refresh token than RECORD (a new login)."""
        current = self.read()
        return current is not None and (record is None or current.refresh_token != record.refresh_token)

    def _ensure_dir(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    # --- the lock ------------------------------------------------------------------------

    def lock(self, timeout: float = LOCK_TIMEOUT_SECONDS) -> "Lock":
        """Take the account's lock (blocking, up to TIMEOUT seconds); release() it after."""
        self._ensure_dir()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return Lock(fd)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise LockTimeout(f"{self.lock_path} held by another process for {timeout:.0f}s") from None
                time.sleep(0.05)


class Lock:
    def __init__(self, fd: int):
        self.fd = fd

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
