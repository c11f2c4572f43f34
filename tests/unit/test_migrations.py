"""Migrations: an empty database upgraded to head matches the models; HEAD is the newest."""

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel

import mailgate.models  # noqa: F401
from mailgate import migrate
from mailgate.db import Database


def test_head_constant_is_the_newest_migration():
    script = ScriptDirectory.from_config(migrate.alembic_config())
    assert script.get_current_head() == migrate.HEAD


def test_empty_database_upgraded_to_head_matches_the_models(empty_database_url):
    db = Database(empty_database_url)
    db.upgrade()
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, SQLModel.metadata)
    assert migrate.current(db.engine) == migrate.HEAD
    db.dispose()
    assert diff == []


def test_upgrade_is_idempotent_and_keeps_data(empty_database_url):
    db = Database(empty_database_url)
    db.upgrade()
    with db.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO organisation (name) VALUES ('Acme')"))
    migrate.upgrade(db.engine)
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM organisation")).scalar() == 1
        assert conn.execute(sa.text("SELECT value FROM counter WHERE name = 'ticket'")).scalar() == 0
    db.dispose()
