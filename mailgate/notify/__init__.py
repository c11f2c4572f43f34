"""Notifications: who hears of which event (SPEC §5), rendered into the outbox.

`queue` is called inside the transaction that caused the events, so the outbound rows exist
exactly when the change does (a transactional outbox).
"""

from __future__ import annotations


def queue(session, app, events) -> list:
    """Write the outbound messages EVENTS cause; returns them."""
    return []
