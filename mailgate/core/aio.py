"""Small helpers shared by the daemon's long-running tasks: waiting, pacing, and logging an
outage once."""

from __future__ import annotations

import asyncio
import logging
import time

import tenacity


def wait_seconds(wait: tenacity.wait.wait_base, attempt: int) -> float:
    """What a tenacity WAIT strategy says to wait after failed attempt number ATTEMPT (1, 2, …),
    for loops that pace themselves rather than retry one call."""
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    state.attempt_number = max(attempt, 1)
    return wait(state)


async def wait_any(*events: asyncio.Event, timeout: float) -> None:
    """Return when any of EVENTS is set or TIMEOUT seconds have passed."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


class OutageLog:
    """An outage is logged when it starts and when it ends, not once per failed try
    (Mailman's outgoing runner). KIND tells outages apart that deserve a line of their own
    when one turns into the other (an IMAP server that is back but refuses the login)."""

    def __init__(self, logger: logging.Logger):
        self.log = logger
        self.since: float | None = None  # time.monotonic() of the first failure
        self.failures = 0  # consecutive failed tries, for backoff
        self.kind: str | None = None

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, message: str, kind: str = "") -> bool:
        """A try failed; MESSAGE is logged as an error when this starts an outage (or a new
        KIND of it), else at debug level. True when it was logged as an error."""
        self.failures += 1
        starting = self.since is None or kind != self.kind
        if self.since is None:
            self.since = time.monotonic()
        self.kind = kind
        self.log.log(logging.ERROR if starting else logging.DEBUG, "%s", message)
        return starting

    def recovered(self, message: str) -> float | None:
        """A try worked again: MESSAGE (formatted with {seconds}, the outage's length) is logged
        once if there was an outage. Returns its length, or None."""
        since, self.since, self.failures, self.kind = self.since, None, 0, None
        if since is None:
            return None
        seconds = time.monotonic() - since
        self.log.warning("%s", message.format(seconds=seconds))
        return seconds
