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
        assert conn.execute(sa.text("SELECT count(*) FROM counter")).scalar() == 0  # one per prefix, at first use
    db.dispose()


def test_desks_migration_counts_each_prefix_on_from_its_highest_number(empty_database_url):
    """0005: tickets of the default desk, and one counter per key prefix that goes on from the
    highest number the prefix has (the one counter before it; an old prefix too)."""
    from mailgate.tickets import service

    db = Database(empty_database_url)
    migrate.upgrade(db.engine, "0004")
    with db.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO organisation (name) VALUES ('Acme')"))
        conn.execute(sa.text("INSERT INTO contact (email, name, organisation_id, language, active) "
                             "VALUES ('alice@acme.example', 'Alice', 1, 'en', true)"))
        for key in ("OLD-7", "SD-8", "SD-9"):  # the prefix changed from OLD to SD at 8
            conn.execute(sa.text(
                "INSERT INTO ticket (key, type, status, summary, description, creator_id, organisation_id, shared, "
                "confidential, created_at, updated_at, last_customer_feedback_at, status_changed_at, reminders_sent) "
                "VALUES (:key, 'request', 'opened', 's', '', 1, 1, true, false, :t, :t, :t, :t, 0)"),
                {"key": key, "t": "2026-12-01 00:00:00"})
        conn.execute(sa.text("UPDATE counter SET value = 10 WHERE name = 'ticket'"))  # SD-10 was rolled back
    db.upgrade()
    with db.engine.connect() as conn:
        counters = dict(conn.execute(sa.text("SELECT name, value FROM counter")).all())
        desks_of = set(conn.execute(sa.text("SELECT desk FROM ticket")).scalars())
    assert counters == {"ticket:OLD": 7, "ticket:SD": 10} and desks_of == {"default"}
    with db.session() as s:
        assert [service.allocate_key(s, p) for p in ("SD", "OLD", "BILL", "BILL")] == ["SD-11", "OLD-8", "BILL-1", "BILL-2"]
    db.dispose()
