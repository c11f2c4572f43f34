"""Alembic environment: runs against the engine mailgate hands over (see mailgate.migrate)."""

from alembic import context
from sqlmodel import SQLModel

import mailgate.models  # noqa: F401  (registers the tables on SQLModel.metadata)

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # `alembic` run by hand for a new revision: MAILGATE_CONFIG names the DB
    from mailgate import config as mg_config
    from mailgate.db import Database

    engine = Database(mg_config.load().database_url).engine

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=engine.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
