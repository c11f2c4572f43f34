"""The database: engine, sessions, schema upgrades, and the one place blocking work leaves the loop.

SQLite (the embedded default) runs in WAL mode with synchronous=FULL so a committed
transaction survives a power cut; PostgreSQL goes through psycopg 3. All database work is
synchronous SQLAlchemy; async code hands it to a thread with `run_blocking`, so the event
loop never waits on disk or network.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

T = TypeVar("T")

_upgraded: set[str] = set()
_upgrade_lock = threading.Lock()


class Database:
    """An engine plus the session factory every module uses."""

    def __init__(self, url: str):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = _engine(url)

    @contextlib.contextmanager
    def session(self, durable: bool = True) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back when it raises.

        Not DURABLE: its commit does not wait for the disk (SQLite: synchronous=NORMAL for it;
        PostgreSQL: synchronous_commit off). A crash of the process loses nothing either way;
        a power cut may lose such a transaction while keeping everything before it. For the
        sender's bookkeeping only (claims, results): one lost is a notification sent again."""
        with Session(self.engine if durable else self._relaxed_engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextlib.contextmanager
    def rolled_back(self) -> Iterator[Session]:
        """A transaction that is always rolled back: a dry run writes as usual and leaves
        nothing (`mailgate explain`)."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
            finally:
                session.rollback()

    @contextlib.contextmanager
    def read_session(self) -> Iterator[Session]:
        """A transaction that only reads. On SQLite it starts with a plain (deferred) BEGIN, so
        it does not take the write lock and does not queue behind writers (WAL readers see the
        last commit). Anything that may write must use `session()`: a flush here raises."""
        with Session(self._read_engine, expire_on_commit=False) as session:
            sa.event.listen(session, "before_flush", _refuse_flush)
            try:
                yield session
                session.commit()  # nothing to write; ends the read transaction
            except BaseException:
                session.rollback()
                raise

    @functools.cached_property
    def _relaxed_engine(self) -> sa.Engine:
        return self.engine.execution_options(mailgate_relaxed=True)

    @functools.cached_property
    def _read_engine(self) -> sa.Engine:
        # Same pool and listeners; the option tells the SQLite "begin" listener to defer.
        return self.engine.execution_options(mailgate_read_only=True)

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (once per process and URL)."""
        with _upgrade_lock:
            if self.url in _upgraded:
                return
            from mailgate import migrate

            migrate.upgrade(self.engine)
            _upgraded.add(self.url)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def _engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; take the write lock up front
        # instead, so two writers queue on busy_timeout rather than fail on upgrade.
        # Database.read_session's transactions only read: a plain BEGIN, no write lock.
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    engine = sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    event.listen(engine, "begin", _postgresql_begin)
    return engine


def _sqlite_begin(conn) -> None:
    options = conn.get_execution_options()
    synchronous = "NORMAL" if options.get("mailgate_relaxed") else "FULL"
    info = conn.connection.info  # the pooled DBAPI connection's: the setting stays with it
    if info.get("synchronous") != synchronous:  # a statement only when it changes
        conn.exec_driver_sql(f"PRAGMA synchronous={synchronous}")
        info["synchronous"] = synchronous
    conn.exec_driver_sql("BEGIN" if options.get("mailgate_read_only", False) else "BEGIN IMMEDIATE")


def _postgresql_begin(conn) -> None:
    if conn.get_execution_options().get("mailgate_relaxed"):
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")


def _refuse_flush(session, _flush_context, _instances) -> None:
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("Database.read_session() is read-only; use Database.session() to write")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _engine)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    _record.info["synchronous"] = "FULL"  # changed per transaction where it may be: _sqlite_begin
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def insert_if_absent(session: Session, model, **values) -> bool:
    """INSERT a row of MODEL unless its primary key exists (ON CONFLICT DO NOTHING, which
    SQLite and PostgreSQL both speak); True when this call inserted it. Unlike a savepoint
    around a failing INSERT it costs one statement, and on PostgreSQL a concurrent
    inserter's row is waited for, so exactly one of two racing transactions wins."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    table = model.__table__
    # RETURNING, not rowcount: psycopg reports -1 for an INSERT … ON CONFLICT.
    statement = insert(table).values(**values).on_conflict_do_nothing().returning(*table.primary_key.columns)
    return session.connection().execute(statement).first() is not None


def insert_many_if_absent(session: Session, model, rows: list[dict]) -> None:
    """INSERT ROWS of MODEL in one statement, skipping those whose primary key exists (ON
    CONFLICT DO NOTHING), with SQLAlchemy Core: nothing is read back."""
    if not rows:
        return
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.connection().execute(insert(model.__table__).on_conflict_do_nothing(), rows)


async def run_blocking(func: Callable[..., T], *args, **kwargs) -> T:
    """Run blocking work (database, fsync, parsing) in a worker thread."""
    return await asyncio.to_thread(functools.partial(func, *args, **kwargs))
