"""Everything a running mailgate needs, built once from the config and handed around."""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from mailgate import config as config_module
from mailgate.blobs import BlobStore
from mailgate.config import Config
from mailgate.db import Database
from mailgate.signing import Signer, load_secret
from mailgate.spool import Spool

log = logging.getLogger("mailgate")

# Sections that take effect only at start: they name sockets, files and the database.
RESTART_ONLY = ("database", "storage", "smtp", "http", "imap", "security", "processing")


def configure_logging(config: Config) -> None:
    """One line per record to stderr (the journal), at the configured level; the same for
    the daemon, its worker processes and the commands."""
    logging.basicConfig(level=config.logging.level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


@dataclass
class App:
    config: Config
    # Called, from any thread, after a transaction that queued outbound mail commits: the
    # daemon's sender sets it to wake itself instead of waiting for its next poll.
    on_outbound_queued: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @cached_property
    def db(self) -> Database:
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

    @cached_property
    def renderer(self):
        from mailgate.notify.render import Renderer

        return Renderer(self.config)

    @cached_property
    def metrics(self):
        from mailgate.metrics import Metrics

        return Metrics(self)

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
        self.__dict__.pop("renderer", None)  # recompiled at first use
        logging.getLogger().setLevel(self.config.logging.level.upper())
        log.info("reloaded %s", old.source or "the embedded defaults")
        return True

    def warm_up(self) -> "App":
        """Do at start what the first message would otherwise do inside its transaction (which,
        on SQLite, holds the write lock): import the processing and notification modules, load
        the secret, compile the templates and run the email package's header machinery once."""
        from datetime import datetime, timezone

        import mailgate.mail.parse  # noqa: F401
        import mailgate.notify  # noqa: F401
        import mailgate.pipeline  # noqa: F401
        from mailgate.notify.render import Headers

        signer = self.signer
        renderer = self.renderer
        renderer.warm_up()
        renderer.mail("unknown_sender_notice", ("en",), {"address": "warm-up@example.com"},
                      Headers(subject="warm-up", to_address="warm-up@example.com", to_name="Wärm Up",
                              message_id=signer.message_id("SD-0")),
                      datetime.now(timezone.utc))
        return self

    def prepare(self) -> "App":
        """Create the state directories and bring the schema up to date."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.spool.ensure()
        self.config.attachments_dir.mkdir(parents=True, exist_ok=True)
        self.db.upgrade()
        return self
