"""mailgate.db: which transactions wait for the disk (issue 16)."""

from __future__ import annotations

import sqlalchemy as sa

from mailgate.db import Database


def _waits_for_the_disk(session) -> bool:
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        return conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL; NORMAL is 1
    return conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"


def test_only_the_senders_bookkeeping_commits_without_waiting_for_the_disk(database_url):
    db = Database(database_url)
    try:
        for _ in range(2):  # the same pooled connection, switched back and forth
            with db.session() as s:
                assert _waits_for_the_disk(s)
            with db.session(durable=False) as s:
                assert not _waits_for_the_disk(s)
                s.execute(sa.text("SELECT 1"))
            with db.session() as s:
                assert _waits_for_the_disk(s)
            with db.read_session() as s:
                assert _waits_for_the_disk(s)
    finally:
        db.dispose()


def test_a_pooled_test_database_comes_back_as_its_template_was(pg_template_name):
    """tests/support.PgPool: the PostgreSQL pass hands each test a used database put back as its
    template was — a row a test left behind, or a sequence it moved, would leak into the next."""
    import pytest

    from tests.support import PgPool, pg_url

    if pg_template_name is None:
        pytest.skip("PostgreSQL only")
    pool = PgPool()
    name = pool.take(pg_template_name)
    engine = sa.create_engine(pg_url(name), poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO organisation (name) VALUES ('Left behind')"))
            moved = conn.execute(sa.text("SELECT nextval(pg_get_serial_sequence('organisation', 'id'))")).scalar()
        pool.give_back(name, pg_template_name)
        assert pool.take(pg_template_name) == name  # used again, not a new copy
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM organisation")).scalar() == 0
            assert conn.execute(sa.text("SELECT nextval(pg_get_serial_sequence('organisation', 'id'))")).scalar() < moved
            conn.execute(sa.text("ALTER TABLE organisation ADD COLUMN stray integer"))
        pool.give_back(name, pg_template_name)  # a changed schema cannot be put back: dropped
        fresh = pool.take(pg_template_name)
        assert fresh != name
        pool.give_back(fresh, pg_template_name)
    finally:
        engine.dispose()
        pool.drop_all()
