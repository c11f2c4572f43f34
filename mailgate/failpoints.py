"""Named places where a test can make mailgate fail on purpose (crash-safety and budget tests).

`MAILGATE_FAILPOINTS="before_commit=kill,pipeline=raise:POISON"` makes the process SIGKILL
itself just before the pipeline commits, and raise in the pipeline for messages whose raw
bytes contain POISON. Tests in the same process set them with `configure`. The actions:

    raise      raise FailpointError (a bug that fails cleanly: an error of the message's own)
    transient  raise an error that passes (the database is away)
    kill       SIGKILL this process (a crash)
    hang       run a regular expression that never ends, holding the GIL like a C library
               stuck in a loop (only a process outside can stop it: the processing budget)
    hog        allocate memory without end (stopped by the worker's memory limit: MemoryError);
               gives up with FailpointError after HOG_GIVE_UP bytes, so a test whose limit is
               missing fails instead of eating the machine

Unset (always, in production) every failpoint is a dictionary lookup.
"""

from __future__ import annotations

import os
import re
import signal

from mailgate.errors import Transient

ENV = "MAILGATE_FAILPOINTS"
HOG_GIVE_UP = 2 * 1024 ** 3
_HOG_CHUNK = 16 * 1024 * 1024


def _parse(text: str) -> dict[str, str]:
    points = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, action = item.partition("=")
        points[name] = action or "raise"
    return points


_POINTS = _parse(os.environ.get(ENV, ""))


class FailpointError(RuntimeError):
    pass


def configure(text: str) -> None:
    """Replace the failpoints of this process (the syntax of $MAILGATE_FAILPOINTS; "" for none)."""
    _POINTS.clear()
    _POINTS.update(_parse(text))


def hit(name: str, data: bytes = b"") -> None:
    action = _POINTS.get(name)
    if action is None:
        return
    kind, _, needle = action.partition(":")
    if needle and needle.encode() not in data:
        return
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "transient":
        raise Transient(f"failpoint {name}")
    elif kind == "hang":
        _hang()
    elif kind == "hog":
        _hog()
    raise FailpointError(f"failpoint {name}")


def _hang() -> None:
    # Exponential backtracking inside the re module's C engine: the GIL is never let go.
    while True:
        re.match(r"(a|aa)+$", "a" * 64 + "b")


def _hog() -> None:
    held = []
    while len(held) * _HOG_CHUNK < HOG_GIVE_UP:
        held.append(b"x" * _HOG_CHUNK)  # written, so it is resident, not just reserved
