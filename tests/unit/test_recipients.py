"""The rules of SPEC §5 (guide §2.7), event by event: who hears of what.

The world (tests/world.py): Acme with alice (creator of the ticket), bernd, carol and dave
(inactive); Globex with gina. Each case sets up choices on a fresh ticket, then asks
`recipients` about one event.
"""

from __future__ import annotations

import pytest
from sqlmodel import select

from mailgate.tickets.events import EVENTS, Event
from mailgate.models import Contact, Subscription, utcnow
from mailgate.notify.recipients import recipients
from mailgate.tickets import service


@pytest.fixture
def app(people_app):
    return people_app


def _contact(session, name: str) -> Contact:
    return session.exec(select(Contact).where(Contact.email == f"{name}@acme.example")).one()


def _choose(session, ticket, name: str, notify: bool, participant: bool = False) -> None:
    session.add(Subscription(ticket_id=ticket.id, contact_id=_contact(session, name).id,
                             notify=notify, participant=participant))


TICKET_EVENTS = [e for e in EVENTS if e != "unknown_sender_notice"]
LATER_EVENTS = [e for e in TICKET_EVENTS if e != "ticket_created"]

# (case, setup, event kind, actor, expected recipients)
#   setup: list of (contact, notify, participant) choices, or a special word
CASES = [
    *[(f"creator default: {k}", [], k, None, {"alice"}) for k in LATER_EVENTS],
    ("new ticket: creator and the organisation's active members", [], "ticket_created", "alice",
     {"alice", "bernd", "carol"}),
    *[(f"creator turned off: {k}", [("alice", False, False)], k, None, set()) for k in LATER_EVENTS],
    ("creator turned off: the members still hear of a new ticket", [("alice", False, False)], "ticket_created",
     "alice", {"bernd", "carol"}),
    *[(f"member default: {k}", [], k, None, {"alice"}) for k in LATER_EVENTS],
    ("member turned off before creation", [("bernd", False, False)], "ticket_created", "alice", {"alice", "carol"}),
    *[(f"member turned on: {k}", [("bernd", True, False)], k, None, {"alice", "bernd"}) for k in LATER_EVENTS],
    *[(f"participant (Cc): {k}", [("carol", True, True)], k, None, {"alice", "carol"}) for k in LATER_EVENTS],
    ("participant who turned off", [("carol", False, True)], "comment_added", None, {"alice"}),
    ("actor excluded: creator's own comment", [("bernd", True, False)], "comment_added", "alice", {"bernd"}),
    ("actor excluded: member's own comment", [("bernd", True, False)], "comment_added", "bernd", {"alice"}),
    ("actor excluded: the reopening a comment caused", [("bernd", True, False)], "status_changed", "alice", {"bernd"}),
    ("inactive member turned on", [("dave", True, False)], "comment_added", None, {"alice"}),
    ("inactive member on a new ticket", [], "ticket_created", "alice", {"alice", "bernd", "carol"}),
    ("inactive creator", "alice inactive", "comment_added", None, set()),
    ("not shared: members hear nothing", "not shared", "ticket_created", "alice", {"alice"}),
    ("not shared: even when turned on", "not shared, bernd on", "comment_added", None, {"alice"}),
    ("other organisation never", "gina on", "comment_added", None, {"alice"}),
]


@pytest.mark.parametrize("case,setup,kind,actor,expected", CASES, ids=[c[0] for c in CASES])
def test_who_is_notified(app, case, setup, kind, actor, expected):
    with app.db.session() as s:
        alice = _contact(s, "alice")
        ticket, _ = service.create_ticket(s, key_prefix="SD", creator=alice, summary="Printer", description="",
                                          now=utcnow())
        _setup(s, ticket, setup)
        s.flush()
        actor_id = _contact(s, actor).id if actor else None
        comment_id = None
        if kind == "comment_added":
            comment, _ = service.add_comment(s, ticket, body="Hello", now=utcnow(), agent="sam")
            comment_id = comment.id
        found = recipients(s, ticket, Event(kind, ticket.id, actor_id, comment_id, old="opened", new="in_review"))
    assert {r.contact.email.split("@")[0] for r in found} == expected
    assert len(found) == len(expected)  # each once
    if found and "alice" in expected:
        assert found[0].contact.email == "alice@acme.example"  # the creator first


def _setup(s, ticket, setup) -> None:
    if setup == "alice inactive":
        _contact(s, "alice").active = False
    elif setup in ("not shared", "not shared, bernd on"):
        ticket.shared = False
        if setup.endswith("bernd on"):
            _choose(s, ticket, "bernd", True)
    elif setup == "gina on":
        gina = s.exec(select(Contact).where(Contact.email == "gina@globex.example")).one()
        s.add(Subscription(ticket_id=ticket.id, contact_id=gina.id, notify=True))
    else:
        for name, notify, participant in setup:
            _choose(s, ticket, name, notify, participant)


def test_internal_comment_reaches_nobody(app):
    with app.db.session() as s:
        alice = _contact(s, "alice")
        ticket, _ = service.create_ticket(s, key_prefix="SD", creator=alice, summary="Printer", description="",
                                          now=utcnow())
        _choose(s, ticket, "bernd", True)
        comment, events = service.add_comment(s, ticket, body="internal note", now=utcnow(), agent="sam", internal=True)
        assert events == []  # no event at all ...
        # ... and an event about an internal comment, should one ever be made, reaches nobody
        assert recipients(s, ticket, Event("comment_added", ticket.id, None, comment.id)) == []
        public, events = service.add_comment(s, ticket, body="public", now=utcnow(), agent="sam")
        assert {r.contact.email for r in recipients(s, ticket, events[0])} == {"alice@acme.example", "bernd@acme.example"}


def test_reasons_and_state_for_the_footer(app):
    with app.db.session() as s:
        alice = _contact(s, "alice")
        ticket, events = service.create_ticket(s, key_prefix="SD", creator=alice, summary="Printer", description="",
                                               now=utcnow())
        _choose(s, ticket, "carol", True, participant=True)
        s.flush()
        found = {r.contact.email.split("@")[0]: (r.reason, r.notify_on) for r in recipients(s, ticket, events[0])}
    assert found == {"alice": ("creator", True), "bernd": ("member", False), "carol": ("member", True)}
