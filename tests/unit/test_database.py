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
