"""The notice to an unknown sender (SPEC §4.4): how to get access, at most once per address
per 24 hours, in English and German in one mail (their language is unknown).

The pipeline asks for it only for human mail from an address that is not an active contact;
machine mail is classified before that and never gets one. The once-a-day rule holds across
instances: the SenderNotice row is claimed inside the transaction, and of two racing
transactions only one can insert or advance it.
"""

from __future__ import annotations

import email.utils
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session

from mailgate.db import insert_if_absent
from mailgate.tickets.events import Event
from mailgate.mail.addresses import is_support_address
from mailgate.models import Outbound, SenderNotice
from mailgate.outbound import enqueue
from mailgate.notify.render import NOTICE_LANGUAGES, NOTICE_SUBJECT, Headers, is_mailable_address

INTERVAL = timedelta(hours=24)


def queue(session: Session, app, event: Event, now: datetime) -> list[Outbound]:
    address = (event.data.get("address") or "").strip().lower()
    if not is_mailable_address(address) or is_support_address(address, app.config.support_addresses):
        return []
    if not _claim(session, address, now):
        return []
    headers = Headers(
        subject=NOTICE_SUBJECT, to_address=address,
        message_id=email.utils.make_msgid("mg.notice", domain=app.config.message_id_domain),
    )
    context = {"address": address, "support_address": app.config.from_address,
               "from_name": app.config.outbound.from_name}
    rendered = app.renderer.mail(event.kind, NOTICE_LANGUAGES, context, headers, now)
    return [enqueue.add(session, app, ticket=None, event=event.kind, recipient=address, rendered=rendered, now=now)]


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
