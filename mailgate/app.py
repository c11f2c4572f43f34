"""Everything a running mailgate needs, built once from the config and handed around: the
database, the spool, the blob store, the signer, the templates and the metrics. Each is made
at first use, so a command pays only for what it touches."""

from __future__ import annotations

import dataclasses
import logging
import sys
from functools import cached_property
from typing import TYPE_CHECKING, Callable

from mailgate import config as config_module
from mailgate.blobs import BlobStore
from mailgate.config import Config
from mailgate.core.spool import Spool
from mailgate.signing import Signer, load_secret

if TYPE_CHECKING:
    from mailgate.db import Database

log = logging.getLogger("mailgate")

# Sections that take effect only at start: they name sockets, files and the database.
RESTART_ONLY = ("database", "storage", "smtp", "http", "imap", "security", "processing")


def configure_logging(config: Config) -> None:
    """One line per record to stderr (the journal), at the configured level; the same for
    the daemon, its worker processes and the commands."""
    logging.basicConfig(level=config.logging.level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


class App:
    def __init__(self, config: Config, on_outbound_queued: Callable[[], None] | None = None):
        self.config = config
        self._metrics = None
        # Called, from any thread, after a transaction that queued outbound mail commits: the
        # daemon's sender sets it to wake itself instead of waiting for its next poll.
        self.on_outbound_queued = on_outbound_queued
        self._renderer = None

    @cached_property
    def db(self) -> "Database":
        from mailgate.db import Database  # SQLAlchemy: only for what touches the database

        return Database(self.config.database_url)

    @cached_property
    def spool(self) -> Spool:
        return Spool(self.config.spool_dir)

    @cached_property
    def blobs(self) -> BlobStore:
        return BlobStore(self.config.attachments_dir)

    @cached_property
    def signer(self) -> Signer:
        secret = load_secret(self.config.security.secret, self.config.state_dir)
        return Signer(secret, self.config.message_id_domain)

    @property
    def renderer(self):
        if self._renderer is None:
            from mailgate.notify.render import Renderer

            self._renderer = Renderer(self.config)
        return self._renderer

    @cached_property
    def oauth(self):
        """The OAuth2 accounts (SPEC §10): a current access token for each, on request."""
        from mailgate.oauth.accounts import Accounts

        return Accounts(self)

    @property
    def metrics(self):
        if self._metrics is None:
            from mailgate.metrics import Metrics

            self._metrics = Metrics(self)
        return self._metrics

    @property
    def database_opened(self) -> bool:
        """Whether anything used the database yet (a command that did not needs no dispose)."""
        return "db" in self.__dict__

    def close(self) -> None:
        if self.database_opened:
            self.db.dispose()

    def reload(self) -> bool:
        """SIGHUP: read the config file again and take what can change without a restart;
        recompile the templates. False when the new file is refused (the old config stays)."""
        old = self.config
        try:
            new = config_module.load(old.source) if old.source else old
        except config_module.ConfigError as e:
            log.error("reload refused, keeping the running config: %s", e)
            return False
        kept = {name: getattr(old, name) for name in RESTART_ONLY}
        for name, value in kept.items():
            if getattr(new, name) != value:
                log.warning("reload: [%s] changed; it takes effect at the next restart", name)
        self.config = dataclasses.replace(new, **kept)
        self._renderer = None  # recompiled at first use
        logging.getLogger().setLevel(self.config.logging.level.upper())
        log.info("reloaded %s", old.source or "the embedded defaults")
        return True

    def prepare(self) -> "App":
        """Create the state directories and bring the schema up to date."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.spool.ensure()
        self.config.attachments_dir.mkdir(parents=True, exist_ok=True)
        self.db.upgrade()
        return self
