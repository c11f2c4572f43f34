"""Small asyncio helpers shared by the daemon's long-running tasks."""

from __future__ import annotations

import asyncio

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
