"""What /healthz proves (SPEC §8): each promise the daemon makes about mail, checked for real
at every request, never assumed.

    spool        a probe file takes a message's way into the spool: written and fsynced in
                 tmp/, renamed into new/, the directory fsynced; new/ and cur/ are listed
    attachments  the blob store (raw messages and attachments) takes a durable write
    disk         the spool and the blob store each have room for the largest message
                 (`smtp.max_message_size`): a disk nearly full refuses mail before it is full
    database     answers a query

Each check says "ok" or "failing"; `problems` names why for each failing one. Every check
catches its own errors: whatever the file system does, the answer is JSON, 200 or 503.
The daemon's IMAP mailboxes are added beside these (mailgate.http.server): one that does not
fetch is a failing part `imap.<name>` (mailgate.ingest.imap.Pollers.problems).
"""

from __future__ import annotations

import os
import uuid
from typing import Callable

from mailgate.core.durable import unlink_quietly, write_file
from mailgate.errors import first_line


def checks(app) -> dict:
    """The health document (blocking: run it off the loop)."""
    results = {name: _run(check, app) for name, check in CHECKS.items()}
    problems = {name: problem for name, problem in results.items() if problem}
    body = {"status": "failing" if problems else "ok",
            **{name: "failing" if problem else "ok" for name, problem in results.items()},
            "problems": problems, "free_bytes": _free_bytes(app), "spool_depth": _depth(app)}
    return body


def _run(check: Callable, app) -> str | None:
    try:
        return check(app)
    except Exception as e:  # a check that fails in an unforeseen way is a failing check
        return first_line(e, with_type=True)


def _spool(app) -> str | None:
    app.spool.probe()
    return None


def _attachments(app) -> str | None:
    root = app.config.attachments_dir
    probe = root / f".probe-{uuid.uuid4().hex}"
    try:
        write_file(probe, (b"probe\n",))
    except OSError as e:
        return f"cannot write {root}: {e.strerror or e}"
    unlink_quietly(probe)
    return None


def _disk(app) -> str | None:
    needed = app.config.smtp.max_message_size
    for place, free in _free_bytes(app).items():
        if free is None:
            return f"cannot tell the free space of the {place}"
        if free < needed:
            return f"{free} bytes free for the {place}, less than smtp.max_message_size ({needed})"
    return None


def _database(app) -> str | None:
    app.db.ping()
    return None


CHECKS = {"spool": _spool, "attachments": _attachments, "disk": _disk, "database": _database}


def _free_bytes(app) -> dict[str, int | None]:
    """Bytes an unprivileged writer may still use, where the spool and the blob store live."""
    free = {}
    for place, path in (("spool", app.config.spool_dir), ("attachments", app.config.attachments_dir)):
        try:
            st = os.statvfs(path)
            free[place] = st.f_bavail * st.f_frsize
        except OSError:
            free[place] = None
    return free


def _depth(app) -> int | None:
    try:
        return app.spool.depth()
    except OSError:
        return None
