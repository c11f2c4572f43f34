"""One taxonomy of failures, shared by every part of mailgate.

A failure is either *transient* — the database is away or locked, a connection dropped: the
work is kept and tried again later — or *permanent*, and then it is the work's own fault and
counts against it (a message is retried a few times, then quarantined). `is_transient` is the
one rule that tells them apart; `first_line` the one way an error becomes a line of log or
of an operator's output.
"""

from __future__ import annotations

import sys


class Transient(Exception):
    """The work could not happen now, for a reason that passes; try it again later."""


def is_transient(error: BaseException) -> bool:
    """Whether ERROR passes by itself: ours, or a database that went away or is locked.

    OperationalError: the server went away, SQLite is locked, a connection failed.
    DBAPIError with connection_invalidated: the pool lost its connection mid-statement.
    TimeoutError (SQLAlchemy's): no connection free in the pool in time.
    """
    if isinstance(error, Transient):
        return True
    exc = sys.modules.get("sqlalchemy.exc")  # not imported: no database error can have happened
    if exc is None:
        return False
    if isinstance(error, (exc.OperationalError, exc.TimeoutError)):
        return True
    return isinstance(error, exc.DBAPIError) and error.connection_invalidated


def is_database_error(error: BaseException) -> bool:
    """Whether ERROR is the database's (SQLAlchemy's), without importing SQLAlchemy."""
    exc = sys.modules.get("sqlalchemy.exc")
    return exc is not None and isinstance(error, exc.SQLAlchemyError)


def first_line(error: BaseException, limit: int = 300, with_type: bool = False) -> str:
    """ERROR as one line: the first line of its text (a database error's driver message rather
    than SQLAlchemy's wrapping), else its type's name; WITH_TYPE prefixes the type."""
    error = getattr(error, "orig", None) or error
    lines = str(error).strip().splitlines()
    text = lines[0].strip()[:limit] if lines else ""
    if not text:
        return type(error).__name__
    return f"{type(error).__name__}: {text}" if with_type else text
