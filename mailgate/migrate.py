"""Schema migrations with Alembic, applied programmatically (`mailgate db upgrade`, and at start).

Every command that touches the database calls `upgrade` first (SPEC §9); when the schema is
already at HEAD it costs one query, not Alembic's start-up (`tests/test_migrations.py`
checks HEAD against the newest migration).
"""

from __future__ import annotations

import logging
from pathlib import Path

from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"
HEAD = "0005"

logging.getLogger("alembic").setLevel(logging.WARNING)


def alembic_config(engine: sa.Engine | None = None) -> "AlembicConfig":
    from alembic.config import Config as AlembicConfig  # Alembic only when there is work for it

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def current(engine: sa.Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    except sa.exc.ProgrammingError:  # PostgreSQL: no such table yet
        return None
    except sa.exc.OperationalError as e:  # SQLite says "no such table" this way
        if "no such table" in str(e):
            return None
        raise


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    if revision == "head" and current(engine) == HEAD:
        return
    from alembic import command

    command.upgrade(alembic_config(engine), revision)
