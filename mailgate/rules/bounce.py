"""Bounces of our own notifications (SPEC §4.3): mark the outbound row `bounced`.

A bounce names its row in one of two ways:
- it was sent to the row's VERP return path (`support+bounce-<id>-<sig>@…`, see
  `mailgate.outbound.verp`) — trusted when it is a failure report or comes from a mail
  daemon, not when it is someone's out-of-office reply to that address;
- it is a delivery status report (multipart/report, Action: failed) quoting, in its
  message/rfc822 or text/rfc822-headers part, a Message-ID mailgate signed.

Delayed/relayed reports and read receipts are reports too, but not failures: ignored.
The pipeline calls this for machine mail only; it never raises for a malformed report.
"""

from __future__ import annotations

import logging
from email.message import Message
from email.parser import HeaderParser

from sqlmodel import Session, select

from mailgate.mail.parse import ParsedMessage
from mailgate.models import Outbound
from mailgate.notify.render import header_text
from mailgate.outbound import verp
from mailgate.core.spool import Envelope

log = logging.getLogger("mailgate.notify")

_HEADER_PARTS = ("text/rfc822-headers", "message/rfc822-headers")
_DAEMONS = ("mailer-daemon", "postmaster")  # senders of old-style, plain-text bounces


def record(session: Session, app, parsed: ParsedMessage, envelope: Envelope) -> list[int]:
    """Mark the rows the machine mail PARSED reports as undeliverable; returns their ids."""
    message = parsed.headers
    failure = _safely(_failure, message, None)
    ids: set[int] = set()
    if failure is not None or _from_mail_daemon(parsed.from_address, envelope.sender):
        ids |= {i for r in envelope.recipients if (i := verp.outbound_id(app.signer, r)) is not None}
    if failure is not None:
        ids |= _rows_by_message_id(session, app.signer, _safely(_original_message_ids, message, []))
    marked = [row.id for i in sorted(ids) if (row := _mark(session, i, failure))]
    if marked:
        log.info("bounce: outbound %s marked bounced", ",".join(map(str, marked)))
    return marked


def _safely(read, message: Message, default):
    """READ(message), or DEFAULT when a malformed report trips the email package: a broken
    bounce must not make the message fail (and be retried, then quarantined)."""
    try:
        return read(message)
    except Exception as e:  # the email package raises many kinds on broken MIME
        log.warning("unreadable delivery report (%s: %s); not matched to any outbound mail", type(e).__name__, e)
        return default


def _mark(session: Session, outbound_id: int, failure: str | None) -> Outbound | None:
    row = session.get(Outbound, outbound_id)
    if row is None or row.status == "bounced":
        return None
    row.status = "bounced"
    row.last_error = failure or "bounced"
    row.claimed_until = row.claimed_by = None
    session.add(row)
    return row


def _failure(message: Message) -> str | None:
    """For a DSN reporting a failed delivery, its status and diagnostic; else None."""
    if message.get_content_type() != "multipart/report":
        return None
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        for fields in _status_blocks(part):
            if str(fields.get("Action", "")).strip().lower() == "failed":
                text = "; ".join(f"{h}: {fields[h]}" for h in ("Status", "Diagnostic-Code") if fields.get(h))
                return header_text(text, 500) or "bounced"
    return None


def _status_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):  # the email package splits a delivery-status into blocks
        return [p for p in payload if isinstance(p, Message)]
    text = payload if isinstance(payload, str) else ""
    return [HeaderParser().parsestr(block + "\n") for block in text.replace("\r\n", "\n").split("\n\n")]


def _original_message_ids(message: Message) -> list[str]:
    found = []
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            inner = part.get_payload()
            headers = inner[0] if isinstance(inner, list) and inner else None
        elif kind in _HEADER_PARTS:
            headers = HeaderParser().parsestr(_text(part))
        else:
            continue
        if headers is not None and headers.get("Message-ID"):
            found.append(str(headers["Message-ID"]).strip())
    return found


def _rows_by_message_id(session: Session, signer, message_ids: list[str]) -> set[int]:
    ours = [f"<{m.strip('<> ')}>" for m in message_ids if signer.ticket_of(m) is not None]
    if not ours:
        return set()
    return set(session.exec(select(Outbound.id).where(Outbound.message_id.in_(ours))))


def _from_mail_daemon(from_address: str | None, envelope_sender: str | None) -> bool:
    return any(a.partition("@")[0].lower() in _DAEMONS for a in (from_address, envelope_sender) if a)


def _text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload.decode("utf-8", "replace")
    return str(part.get_payload() or "")
