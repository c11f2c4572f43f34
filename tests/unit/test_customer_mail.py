"""Issue 14 (7): what the customer's mail says. One agent action is one mail per recipient
naming every change; a follow-up's mail names the closed ticket; a reminder repeats the
question; the `[SD-2]` tag stays plain ASCII however the summary is written. And (4): a
ticket cannot be made confidential where no agent would see it."""

from __future__ import annotations

import email
import email.policy
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from mailgate.ingest import pipe
from mailgate.models import Outbound, Ticket, utcnow
from mailgate.tickets import actions, lifecycle, service
from tests import world
from tests.support import SUPPORT, make_message


def _ticket(session, key="SD-1") -> Ticket:
    return session.exec(select(Ticket).where(Ticket.key == key)).one()


def _mails(app, since: int = 0) -> list[Outbound]:
    with app.db.session() as s:
        return list(s.exec(select(Outbound).where(Outbound.id > since).order_by(Outbound.id)))


def _last_id(app) -> int:
    return max([row.id for row in _mails(app)], default=0)


def _text(row: Outbound) -> str:
    message = email.message_from_bytes(row.message, policy=email.policy.default)
    return message.get_body(("plain",)).get_content()


def test_one_action_with_three_changes_is_one_mail_per_recipient(world_app):
    app = world_app
    with app.db.session() as s:  # bernd (German) follows SD-1 too
        from mailgate.notify import subscriptions
        from mailgate.contacts import contact
        subscriptions.set_notify(s, _ticket(s), contact(s, "bernd@acme.example"), True)
    before = _last_id(app)
    with app.db.session() as s:
        actions.set_fields(s, app, _ticket(s), type="incident", priority="P2", status="in_progress", agent="sam")
    rows = _mails(app, before)
    assert sorted(r.recipient for r in rows) == ["alice@acme.example", "bernd@acme.example"]
    assert {r.event for r in rows} == {"status_changed"}
    english = _text(next(r for r in rows if r.recipient == "alice@acme.example"))
    assert "sam changed SD-1" in english
    for line in ('- status from "In Review by Service Desk" to "In Progress"', '- type from "Request" to "Incident"',
                 "- priority from none to P2"):
        assert line in english, english
    german = _text(next(r for r in rows if r.recipient == "bernd@acme.example"))
    assert "- Typ von „Anfrage“ in „Störung“" in german and "- Priorität von keine in P2" in german


def test_a_follow_up_names_the_closed_ticket(world_app):
    app = world_app
    with app.db.session() as s:
        actions.set_fields(s, app, _ticket(s), status="closed")
    before = _last_id(app)
    raw = make_message(subject="Re: [SD-1] Login page shows error 500", body="It is back.")
    assert pipe.deliver(app, raw, "alice@acme.example", SUPPORT).result.ticket == "SD-3"
    (row,) = [r for r in _mails(app, before) if r.recipient == "alice@acme.example"]
    assert "This ticket follows up SD-1 (Login page shows error 500), which is closed." in _text(row)


def test_a_reminder_repeats_the_question_being_waited_on(world_app):
    app = world_app
    start = utcnow() + timedelta(minutes=5)
    with app.db.session() as s:
        ticket = _ticket(s)
        actions.comment(s, app, ticket, "sam", "Which browser do you use?", now=start - timedelta(minutes=2))
        actions.comment(s, app, ticket, "sam", "Tried Firefox ourselves.", internal=True, now=start - timedelta(minutes=1))
        actions.set_fields(s, app, ticket, status="clarification", agent="sam", now=start)
    clarification = [r for r in _mails(app) if r.event == "status_changed"][-1]
    assert "Which browser do you use?" in _text(clarification)
    with app.db.session() as s:  # a later comment is not the question that was asked
        service.add_comment(s, _ticket(s), body="Still there?", agent="kim", now=utcnow())
    before = _last_id(app)
    assert lifecycle.run(app, start + timedelta(days=11)).reminded == 1
    (reminder,) = _mails(app, before)
    text = _text(reminder)
    assert reminder.event == "reminder" and "Which browser do you use?" in text
    assert "Tried Firefox" not in text and "Still there?" not in text


@pytest.mark.parametrize("summary", ["Drücker brennt", "Ärger mit dem Drucker", "=?utf-8?q?x?= looks encoded"])
def test_the_tag_stays_plain_ascii_outside_encoded_words(world_app, summary):
    app = world_app
    with app.db.session() as s:
        s.execute(sa.update(Ticket).where(Ticket.key == "SD-2").values(summary=summary))
    before = _last_id(app)
    with app.db.session() as s:
        actions.set_fields(s, app, _ticket(s, "SD-2"), status="in_progress")
    (row,) = _mails(app, before)
    header = row.message.split(b"\r\n\r\n")[0].replace(b"\r\n ", b" ")
    subject = next(line for line in header.split(b"\r\n") if line.startswith(b"Subject: "))
    assert subject.startswith(b"Subject: [SD-2] =?utf-8?"), subject
    assert email.message_from_bytes(row.message, policy=email.policy.default)["Subject"] == f"[SD-2] {summary}"


def test_confidential_needs_a_region_and_the_region_can_be_given_later(world_app):
    app = world_app
    with app.db.session() as s:  # SD-2 belongs to Globex, which has no region
        with pytest.raises(service.TicketError, match="has no region.*mailgate org set 'Globex' --region"):
            actions.set_fields(s, app, _ticket(s, "SD-2"), confidential=True)
    with app.db.session() as s:
        assert _ticket(s, "SD-2").confidential is False
        from mailgate import contacts
        contacts.set_region(s, "Globex", "us")
    with app.db.session() as s:
        actions.set_fields(s, app, _ticket(s, "SD-2"), confidential=True)
    with app.db.session() as s:
        assert _ticket(s, "SD-2").confidential is True
    world.set_status(app, "SD-2", "in_review")  # the world's helper still works on it
