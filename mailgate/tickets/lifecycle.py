"""The service desk's timers (SPEC §6, guide §2.9), run without anyone.

Keyed on the last human customer feedback (machine mail never counts) or the status change,
whichever is later:
- `resolved` for `resolved_close_days` → closed (the creator is told);
- `clarification`: a reminder at each of `clarification_reminder_days`, closed at
  `clarification_close_days`. A pass that finds several thresholds passed (the daemon was
  down) sends at most one reminder, and closes without a reminder once the close threshold
  has passed.
Idempotent: the number of reminders sent is stored with the ticket in the same transaction
as the reminder, so running a pass twice sends nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, select

from mailgate import notify
from mailgate.config import LifecycleConfig
from mailgate.tickets.events import Event
from mailgate.models import Ticket, aware
from mailgate.tickets import service


@dataclass
class PassReport:
    closed: int = 0
    reminded: int = 0


def run(app, now: datetime) -> PassReport:
    """One pass over the tickets whose timers may have run out."""
    report = PassReport()
    cfg = app.config.lifecycle
    for ticket_id in _due(app, cfg, now):
        with app.db.session() as session:
            ticket = _locked(session, ticket_id)
            if ticket is None:
                continue  # another instance is handling it right now
            events = _step(ticket, cfg, now)
            if events:
                session.add(ticket)
                notify.queue(session, app, events)
                report.closed += any(e.kind == "status_changed" for e in events)
                report.reminded += any(e.kind == "reminder" for e in events)
    return report


def _due(app, cfg: LifecycleConfig, now: datetime) -> list[int]:
    """Ids of tickets past their first threshold; the index on status keeps this cheap."""
    first_clarification = min([*cfg.clarification_reminder_days, cfg.clarification_close_days])
    conditions = [
        _quiet_since(Ticket.status == "resolved", now - timedelta(days=cfg.resolved_close_days)),
        _quiet_since(Ticket.status == "clarification", now - timedelta(days=first_clarification)),
    ]
    with app.db.session() as session:
        return list(session.exec(select(Ticket.id).where(sa.or_(*conditions)).order_by(Ticket.id)))


def _quiet_since(status_clause, cutoff: datetime):
    return sa.and_(status_clause, Ticket.status_changed_at <= cutoff, Ticket.last_customer_feedback_at <= cutoff)


def _locked(session: Session, ticket_id: int) -> Ticket | None:
    # FOR UPDATE SKIP LOCKED on PostgreSQL: two instances never remind or close one ticket
    # twice; SQLite's write lock (BEGIN IMMEDIATE) already serialises the passes.
    query = select(Ticket).where(Ticket.id == ticket_id).with_for_update(skip_locked=True)
    return session.exec(query).first()


def _step(ticket: Ticket, cfg: LifecycleConfig, now: datetime) -> list[Event]:
    last = max(aware(ticket.status_changed_at), aware(ticket.last_customer_feedback_at))
    quiet_days = (now - last).total_seconds() / 86400
    if ticket.status == "resolved" and quiet_days >= cfg.resolved_close_days:
        return _auto_close(ticket, now)
    if ticket.status != "clarification":
        return []
    if quiet_days >= cfg.clarification_close_days:
        return _auto_close(ticket, now)
    due = sum(1 for d in sorted(cfg.clarification_reminder_days) if quiet_days >= d)
    if due <= ticket.reminders_sent:
        return []
    ticket.reminders_sent = due  # thresholds missed while down are not caught up
    return [Event("reminder", ticket.id, data={"number": due, "of": len(cfg.clarification_reminder_days)})]


def _auto_close(ticket: Ticket, now: datetime) -> list[Event]:
    events = service.set_status(ticket, "closed", now)
    for e in events:
        e.data["automatic"] = True
    return events
