"""The notice to an unknown sender (SPEC §4.4): how to get access, at most once per address
per 24 hours and at most `policy.max_notices_per_hour` in all, in English and German in one
mail (their language is unknown), with no text of the sender's in it — not their address,
name or subject: the notice must be worthless to someone who wants mailgate to carry words
to strangers.

The pipeline asks for it only for human mail from an address that is not an active contact
and that mailgate.rules.notice lets through. Both limits hold across instances: the
SenderNotice row is claimed inside the transaction, and of two racing transactions only one
can insert or advance it; the hourly count is taken under a lock (PostgreSQL: a transaction
advisory lock; SQLite: the write lock every transaction takes).
"""

from __future__ import annotations

import email.utils
import logging
import time
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, func, select

from mailgate import desks
from mailgate.db import insert_if_absent
from mailgate.tickets.events import Event
from mailgate.mail.addresses import is_support_address
from mailgate.models import SenderNotice
from mailgate.outbound import enqueue
from mailgate.notify.render import NOTICE_LANGUAGES, NOTICE_SUBJECT, Headers, is_mailable_address

log = logging.getLogger("mailgate.notify")

INTERVAL = timedelta(hours=24)
_LOCK_KEY = 0x6D67_6E6F  # "mgno": the advisory lock of the hourly count on PostgreSQL
_cap_logged_at = 0.0  # when this process last logged that the hourly cap was reached


def queue(session: Session, app, event: Event, now: datetime) -> list[enqueue.Queued]:
    address = (event.data.get("address") or "").strip().lower()
    if not is_mailable_address(address) or is_support_address(address, app.config.support_addresses):
        return []
    if not _within_hourly_cap(session, app.config.policy.max_notices_per_hour, now):
        return []
    if not _claim(session, address, now):
        return []
    desk = desks.of(app.config).named(event.data.get("desk")) or desks.of(app.config).default
    headers = Headers(
        subject=NOTICE_SUBJECT, to_address=address,
        message_id=email.utils.make_msgid("mg.notice", domain=app.config.message_id_domain),
        from_address=desk.from_address, from_name=desk.display_name,
    )
    context = {"support_address": desk.from_address, "from_name": desk.display_name}
    languages = tuple(sorted(NOTICE_LANGUAGES, key=lambda lang: lang != desk.language))  # the desk's first
    rendered = app.renderer.mail(event.kind, languages, context, headers, now, desk.templates_dir)
    return [enqueue.add(session, app, ticket=None, event=event.kind, recipient=address, rendered=rendered, now=now)]


def _within_hourly_cap(session: Session, cap: int, now: datetime) -> bool:
    """Fewer than CAP notices in the last hour (each one advanced a SenderNotice row)."""
    global _cap_logged_at
    if cap <= 0:
        return False
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    recent = session.exec(select(func.count()).select_from(SenderNotice)
                          .where(SenderNotice.sent_at >= now - timedelta(hours=1))).one()
    if recent < cap:
        return True
    if time.monotonic() - _cap_logged_at > 3600:  # once an hour, not once per message
        _cap_logged_at = time.monotonic()
        log.warning("%d notices to unknown senders within the last hour (policy.max_notices_per_hour); "
                    "no more this hour", recent)
    return False


def _claim(session: Session, address: str, now: datetime) -> bool:
    """True when ADDRESS was not told within 24 h; records that it is being told now."""
    advanced = session.execute(
        sa.update(SenderNotice)
        .where(SenderNotice.address == address, SenderNotice.sent_at < now - INTERVAL)
        .values(sent_at=now)
    )
    if advanced.rowcount:
        return True
    # False when another transaction told them a moment ago
    return insert_if_absent(session, SenderNotice, address=address, sent_at=now)
