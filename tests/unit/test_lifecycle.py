"""SPEC §6 with a clock the test controls (`lifecycle run --now`): every threshold just
before and just after, idempotence, one reminder after downtime, reset by a human comment,
no reset by an auto-reply."""

from datetime import datetime, timedelta

import pytest
from sqlmodel import select

from mailgate.ingest import pipe
from mailgate.models import Ticket, aware
from mailgate.tickets import lifecycle
from tests import world
from tests.support import SUPPORT, make_message

EPS = timedelta(minutes=1)


@pytest.fixture
def app(world_app):
    return world_app


def _ticket(app, key="SD-1") -> Ticket:
    with app.db.session() as s:
        return s.exec(select(Ticket).where(Ticket.key == key)).one()


def _put(app, status: str) -> datetime:
    """SD-1 into STATUS (clarification from in_progress); returns when the timer started."""
    if status == "clarification":
        world.set_status(app, "SD-1", "in_progress")
    world.set_status(app, "SD-1", status)
    return aware(_ticket(app).status_changed_at)


def _at(app, start: datetime, days: float, sign: int = 1):
    return lifecycle.run(app, start + timedelta(days=days) + sign * EPS)


@pytest.mark.parametrize("days, sign, status", [(50, -1, "resolved"), (50, +1, "closed")])
def test_resolved_closes_after_50_days(app, days, sign, status):
    start = _put(app, "resolved")
    report = _at(app, start, days, sign)
    assert _ticket(app).status == status
    assert report.closed == (status == "closed") and report.reminded == 0


@pytest.mark.parametrize("days, sign, reminders, status", [
    (10, -1, 0, "clarification"), (10, +1, 1, "clarification"),
    (40, -1, 1, "clarification"), (40, +1, 0, "closed"),
])
def test_clarification_thresholds_from_a_fresh_start(app, days, sign, reminders, status):
    start = _put(app, "clarification")
    report = _at(app, start, days, sign)
    t = _ticket(app)
    assert (t.status, report.reminded) == (status, reminders)


def test_clarification_reminders_each_once_then_close(app):
    start = _put(app, "clarification")
    seen = []
    for days, sign in [(10, -1), (10, 1), (10, 1), (20, -1), (20, 1), (20, 1), (30, 1), (35, 0), (40, -1), (40, 1), (41, 1)]:
        report = _at(app, start, days, sign)
        seen.append((days, sign, report.reminded, report.closed))
    assert [r for *_, r, c in seen] == [0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0]
    assert [c for *_, c in seen] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
    t = _ticket(app)
    assert (t.status, t.reminders_sent) == ("closed", 3)


def test_downtime_sends_one_reminder_not_three(app):
    start = _put(app, "clarification")
    assert _at(app, start, 31).reminded == 1
    assert _ticket(app).reminders_sent == 3
    assert _at(app, start, 32).reminded == 0


def test_downtime_past_close_closes_without_reminder(app):
    start = _put(app, "clarification")
    report = _at(app, start, 45)
    assert (report.reminded, report.closed, _ticket(app).status) == (0, 1, "closed")


def test_an_auto_reply_does_not_reset_the_timer(app):
    start = _put(app, "clarification")
    ooo = make_message(subject="Automatic reply: [SD-1] Login page shows error 500", body="I am away.")
    assert pipe.deliver(app, ooo, "alice@acme.example", SUPPORT).result.outcome == "ignored_auto"
    assert _ticket(app).status == "clarification"
    assert _at(app, start, 10).reminded == 1


def test_a_human_comment_resets_the_timer(app):
    start = _put(app, "resolved")
    reply = make_message(subject="Re: [SD-1] Login page shows error 500", body="It happened again today.")
    assert pipe.deliver(app, reply, "alice@acme.example", SUPPORT).result.outcome == "comment_added"
    t = _ticket(app)
    assert t.status == "in_review"
    world.set_status(app, "SD-1", "resolved")
    feedback = aware(_ticket(app).last_customer_feedback_at)
    assert feedback >= start
    assert _at(app, aware(_ticket(app).status_changed_at), 50, -1).closed == 0


def test_cli_lifecycle_run_with_now(app, cli):
    start = _put(app, "resolved")
    code, out, _ = cli("lifecycle", "run", "--now", (start + timedelta(days=51)).isoformat())
    assert code == 0 and "1 closed" in out
    code, out, _ = cli("lifecycle", "run", "--now", (start + timedelta(days=52)).isoformat())
    assert "0 closed, 0 reminded" in out
    code, _, err = cli("lifecycle", "run", "--now", "yesterday")
    assert code == 64 and "not an ISO 8601 time" in err
