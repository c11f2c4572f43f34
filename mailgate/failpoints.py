"""Named places where a test can make mailgate fail on purpose (crash-safety tests).

`MAILGATE_FAILPOINTS="before_commit=kill,pipeline=raise:POISON"` makes the process SIGKILL
itself just before the pipeline commits, and raise in the pipeline for messages whose raw
bytes contain POISON. Actions: `kill` (SIGKILL this process), `raise` (an error of the
message's own), `transient` (an error that passes: the database is away). Tests in the same
process set them with `configure`. Unset (always, in production) every failpoint is a
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

from mailgate.errors import Transient

ENV = "MAILGATE_FAILPOINTS"


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
    if kind == "transient":
        raise Transient(f"failpoint {name}")
    raise FailpointError(f"failpoint {name}")
