"""The OAuth2 accounts of one process (`app.oauth`): a Keeper each, their schedule in the
daemon, and what `oauth status`, /healthz and /metrics say about them.
"""

from __future__ import annotations

import asyncio

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mailgate.oauth import providers
from mailgate.oauth.refresher import Keeper
from mailgate.oauth.store import TokenRecord, TokenStore


class Accounts:
    def __init__(self, app):
        self.keepers = {name: Keeper(app, account) for name, account in providers.accounts(app.config).items()}
        self._tasks: list[asyncio.Task] = []

    def get(self, name: str) -> Keeper | None:
        return self.keepers.get(name)

    @property
    def relay(self) -> Keeper | None:
        return self.keepers.get(providers.RELAY)

    def start(self, stopping: asyncio.Event) -> None:
        """The daemon: each account refreshes on its own schedule (not only when it logs in)."""
        self._tasks = [asyncio.create_task(k.run(stopping), name=f"oauth {k.name}") for k in self.keepers.values()]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def health(self) -> dict[str, dict]:
        """/healthz: per account, "ok", "no token", "refresh failed" or "unreachable", and when."""
        return {name: {"oauth": k.health, **_times(k.record)} for name, k in self.keepers.items()}

    def collect(self):
        """Prometheus: refresh failures by account and kind, seconds until each token expires."""
        failures = CounterMetricFamily("mailgate_oauth_refresh_failures",
                                       "OAuth2 token refreshes that failed, by account and kind (refused, unavailable)",
                                       labels=["account", "kind"])
        expiry = GaugeMetricFamily("mailgate_oauth_token_expiry_seconds",
                                   "Seconds until the account's access token expires (negative: expired)",
                                   labels=["account"])
        for name, keeper in self.keepers.items():
            for kind in ("refused", "unavailable"):
                failures.add_metric([name, kind], keeper.failures[kind])
            if keeper.record is not None and keeper.record.expires_at:
                expiry.add_metric([name], round(keeper.record.seconds_left(), 1))
        yield failures
        yield expiry


def status(config) -> list[dict]:
    """`mailgate oauth status`: every OAuth2 account as its token file says (blocking)."""
    rows = []
    for name in providers.accounts(config):
        record = TokenStore(config.state_dir, name).read()
        # A refresh token the server refused is no token any more: a new login is needed.
        rows.append({"name": name, "has_token": record is not None and not record.refused, **_times(record)})
    return rows


def _times(record: TokenRecord | None) -> dict:
    return {"expires_at": record.expires_at if record else None,
            "last_refresh": record.last_refresh if record else None,
            "last_error": record.last_error if record else None}
