"""The loop guard (SPEC §5, issue 13) delays, never drops, and aims at loops — an address that
answers our notifications again and again — not at an organisation that is simply busy."""

from __future__ import annotations

import logging
from datetime import datetime

import pytest
from sqlmodel import select

from mailgate import config as config_module
from mailgate.app import App
from mailgate.contacts import find_contact
from mailgate.ingest import pipe
from mailgate.models import Outbound, Ticket, aware, utcnow
from mailgate.notify import subscriptions
from mailgate.tickets import actions
from tests import world
from tests.support import SUPPORT, cli_json, make_message

NAMES = {"alice@acme.example": "Alice Adams", "bernd@acme.example": "Bernd Becker"}


@pytest.fixture
def app(make_config):
    app = App(config_module.load(make_config(processing={"processes": 0},
                                             policy={"max_new_tickets_per_sender_per_hour": 0}))).prepare()
    world.build(app)
    yield app
    app.close()


def _rows(app: App, *where) -> list[Outbound]:
    with app.db.session() as s:
        return list(s.exec(select(Outbound).where(*where).order_by(Outbound.id)))


def _agent_comment(app: App, key: str, body: str) -> None:
    with app.db.session() as s:
        actions.comment(s, app, _ticket(s, key), "sam", body)


def _ticket(session, key: str) -> Ticket:
    return session.exec(select(Ticket).where(Ticket.key == key)).one()


def _deliver(app: App, sender: str, raw: bytes) -> str:
    delivery = pipe.deliver(app, raw, sender, SUPPORT)
    assert delivery.exit_code == 0, delivery.error
    return delivery.result.outcome


def test_a_busy_organisation_loses_nothing_and_waits_for_nothing(app):
    """60 new tickets from one organisation and 40 agent comments on one of them: each
    colleague gets 60 announcements, the creator 100 mails, within the hour (the guard of
    old failed everything past 30)."""
    for n in range(60):
        raw = make_message(subject=f"Busy {n}", message_id=f"<busy-{n}@acme.example>")
        assert _deliver(app, "alice@acme.example", raw) == "ticket_created"
    for n in range(40):
        _agent_comment(app, "SD-3", f"Update {n}")
    rows = _rows(app)
    assert len([r for r in rows if r.recipient == "alice@acme.example"]) >= 100
    assert {r.status for r in rows} == {"queued"}
    now = utcnow()
    assert all(aware(r.next_attempt_at) <= now and r.last_error is None for r in rows)


def test_a_loop_is_slowed_to_a_trickle_shown_and_nothing_is_failed(app, cli, caplog):
    """Alice (the creator) and Bernd (notifications on) both have an auto-responder that sends
    no Auto-Submitted and answers every mail: each answer is a comment, which notifies the
    other. Left alone this goes on for ever; the guard paces mail to both, and they answer
    only what reaches them."""
    with app.db.session() as s:
        ticket = _ticket(s, "SD-1")
        subscriptions.set_notify(s, ticket, find_contact(s, "bernd@acme.example"), True)
    _agent_comment(app, "SD-1", "Could you try again?")
    answered: set[int] = set()
    caplog.set_level(logging.WARNING, logger="mailgate.notify")
    for _round in range(100):
        due = [r for r in _rows(app, Outbound.ticket_id == ticket.id, Outbound.next_attempt_at <= utcnow())
               if r.id not in answered and r.recipient in NAMES]
        if not due:
            break
        for row in due:  # "delivered": the auto-responder answers it
            answered.add(row.id)
            raw = make_message(sender=f"{NAMES[row.recipient]} <{row.recipient}>", subject=f"Re: {row.subject}",
                               body="I am out of the office.", extra_headers={"In-Reply-To": row.message_id})
            assert _deliver(app, row.recipient, raw) == "comment_added"
    else:
        pytest.fail("the loop did not stop")
    rows = _rows(app, Outbound.ticket_id == ticket.id)
    held = [r for r in rows if aware(r.next_attempt_at) > utcnow()]
    # the trickle: paced once 10 answers came in an hour (plus the two seed announcements and one turn each)
    assert held and len(answered) <= 2 * (10 + 1) + 2
    assert {r.status for r in rows} == {"queued"}  # delayed, never failed
    assert all("mail loop" in r.last_error for r in held)
    for address in NAMES:
        turns = sorted(aware(r.next_attempt_at) for r in held if r.recipient == address)
        assert all((b - a).total_seconds() >= 600 - 1 for a, b in zip(turns, turns[1:]))  # 6 an hour
    warnings = [r.getMessage() for r in caplog.records if "mail loop?" in r.getMessage()]
    assert sorted(w.split()[2] for w in warnings) == sorted(NAMES)  # logged once per address

    listed = {r["id"]: r for r in cli_json(cli, "outbox", "list")}
    shown = listed[held[0].id]
    assert shown["status"] == "queued" and "mail loop" in shown["last_error"]
    assert datetime.fromisoformat(shown["next_attempt_at"]) > utcnow()


def test_the_creators_confirmation_is_never_held_back(app):
    """Even an address caught in a loop gets the confirmation of its new ticket at once."""
    for n in range(12):  # twelve answers within the hour: a loop
        raw = make_message(subject=f"Re: [SD-1] Login page shows error 500", body=f"Auto {n}",
                           message_id=f"<auto-{n}@acme.example>")
        assert _deliver(app, "alice@acme.example", raw) == "comment_added"
    assert _deliver(app, "alice@acme.example", make_message(subject="A new problem")) == "ticket_created"
    confirmation = _rows(app, Outbound.event == "ticket_created", Outbound.recipient == "alice@acme.example")[-1]
    assert aware(confirmation.next_attempt_at) <= utcnow() and confirmation.last_error is None


def test_a_customer_busy_on_many_tickets_is_not_a_loop(app):
    """Twelve answers within the hour, spread over three tickets (a busy customer, or an
    acceptance suite playing one): mail about any of them goes at once. A loop goes round one
    ticket; the same twelve on one ticket would be held (test above)."""
    keys = []
    for n in range(3):
        raw = make_message(subject=f"Problem {n}", message_id=f"<busy-customer-{n}@acme.example>")
        assert _deliver(app, "alice@acme.example", raw) == "ticket_created"
        with app.db.session() as s:
            keys.append(s.exec(select(Ticket).order_by(Ticket.id.desc())).first().key)
    for n in range(12):
        raw = make_message(subject=f"Re: [{keys[n % 3]}] Problem", body=f"More details {n}")
        assert _deliver(app, "alice@acme.example", raw) == "comment_added"
    for key in keys:
        _agent_comment(app, key, "Thanks, we are on it.")
    mails = _rows(app, Outbound.recipient == "alice@acme.example", Outbound.event == "comment_added")
    assert len(mails) == 3
    now = utcnow()
    assert all(aware(r.next_attempt_at) <= now and r.last_error is None for r in mails)
