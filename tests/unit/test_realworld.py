"""The real-world corpus (`../shared/realworld/`) through the real pipeline, in-process, on
this run's database: every message processed without a traceback or a quarantine, and the
scores of issue 15's "Done when" per kind of mail (printed at the end of the run).

What is scored, per Zammad message: the summary against Zammad's subject after SPEC §4.8's
prefix removal, the attachment names, and the first line of Zammad's body in the
description — read off the ticket where the message made one, else (machine mail, which is
ignored) off the parse. The thresholds hold for the messages that became tickets (a summary
and a description are a ticket's); the same scores over every message are printed too.
Per reply case: the comment keeps every line of the new text and
none of the quoted history.
"""

from __future__ import annotations

import uuid

import pytest
from sqlmodel import select

from mailgate import config as config_module
from mailgate import contacts, shapes
from mailgate.app import App
from mailgate.ingest import pipe
from mailgate.mail import subjects
from mailgate.mail.parse import parse
from mailgate.models import Ticket
from tests import realworld
from tests.conftest import TEST_DB
from tests.realworld import Score, normalised
from tests.support import SUPPORT, make_message, pg_create_database, pg_drop_database_later, write_config

pytestmark = pytest.mark.skipif(not realworld.available(), reason=f"the real-world corpus is not at {realworld.ROOT}")

THRESHOLDS = {"summary": 0.98, "attachments": 0.95, "first line": 0.95, "replies": 0.95}


@pytest.fixture(scope="module")
def corpus_app(tmp_path_factory, pg_template_name):
    tmp = tmp_path_factory.mktemp("realworld")
    name = f"mg_rw_{uuid.uuid4().hex[:10]}"
    url = pg_create_database(name, template=pg_template_name) if TEST_DB == "postgresql" else f"sqlite:///{tmp / 'mg.db'}"
    path = write_config(tmp / "mailgate.toml", tmp / "state", url,
                        {"policy": {"max_new_tickets_per_sender_per_hour": 0}})
    app = App(config_module.load(path)).prepare()
    yield app
    app.db.dispose()
    if TEST_DB == "postgresql":
        pg_drop_database_later(name)


@pytest.fixture(scope="module")
def parsed():
    """Every corpus message parsed once, for the senders and the scores of machine mail."""
    mail = [(case.name, case.raw) for case in realworld.zammad_cases()] + realworld.other_mail()
    return {name: (raw, parse(raw)) for name, raw in mail}


@pytest.fixture(scope="module")
def outcomes(corpus_app, parsed):
    """Every corpus message delivered once: {name: (exit code, outcome, ticket key or None)}."""
    app, seen, done = corpus_app, set(), {}
    for name, (raw, message) in parsed.items():
        sender = message.from_address or "nobody@unknown.example"  # set up as a contact, not an expectation
        _contact(app, sender, seen)
        done[name] = _deliver(app, raw, sender)
    return done


@pytest.fixture(scope="module")
def scored(corpus_app, outcomes, parsed):
    """The scores over the messages that became tickets (the summary and the description are
    a ticket's), and — for information — over every message, read off the parse."""
    found = {kind: Score() for kind in ("summary", "attachments", "first line")}
    everything = {f"{kind} (every message, parsed)": Score() for kind in found}
    with corpus_app.db.session() as s:
        for case in realworld.zammad_cases():
            message, key = parsed[case.name][1], outcomes[case.name][2]
            for kind, ok in _zammad_checks(case, message, _ticket(s, key) if key else None).items():
                if key:
                    found[kind].add(ok, case.name)
            for kind, ok in _zammad_checks(case, message, None).items():
                everything[f"{kind} (every message, parsed)"].add(ok, case.name)
    found.update(_reply_scores(corpus_app))
    lines = [score.line(kind) for kind, score in [*found.items(), *everything.items()]]
    return found, lines


def _zammad_checks(case, parsed, ticket: dict | None) -> dict[str, bool]:
    summary = ticket["summary"] if ticket else subjects.summary(parsed.subject, "SD")
    text = ticket["description"] if ticket else parsed.text
    names = [(a.filename, a.name_given) for a in parsed.attachments]
    stored = [a["filename"] for a in ticket["attachments"]] if ticket else [n for n, _ in names]
    return {
        "summary": summary == subjects.summary(case.subject, "SD"),
        "attachments": realworld.names_match(names, case.attachments) and stored == [n for n, _ in names],
        "first line": _contains(text, case.first_line) if case.first_line else not text.strip(),
    }


@pytest.fixture(scope="module")
def scores(scored):
    return scored[0]


def test_the_scores_per_kind_are_reported(scored, record_property):
    """The score lines go to the terminal summary (tests/conftest.py), from an xdist worker too."""
    record_property(REPORT_PROPERTY, scored[1])
    assert len(scored[1]) >= 6


def test_every_message_is_processed_without_a_traceback_or_quarantine(outcomes):
    broken = {name: result for name, result in outcomes.items() if result[0] != 0 or result[1] == "quarantined"}
    assert not broken


@pytest.mark.parametrize("kind", ["summary", "attachments", "first line"])
def test_zammad_scores(scores, kind):
    assert scores[kind].ratio >= THRESHOLDS[kind], scores[kind].line(kind)


def test_reply_scores(scores):
    replies = Score()
    for kind, score in scores.items():
        if kind.startswith("reply "):
            replies.passed += score.passed
            replies.failed += score.failed
    assert replies.total >= 20
    assert replies.ratio >= THRESHOLDS["replies"], replies.line("replies")


# --- the work --------------------------------------------------------------------------------


REPORT_PROPERTY = "real-world scores"


def _deliver(app: App, raw: bytes, sender: str):
    delivery = pipe.deliver(app, raw, sender, SUPPORT)
    result = delivery.result
    return delivery.exit_code, result.outcome if result else delivery.error, result.ticket if result else None


def _contact(app: App, address: str, seen: set) -> None:
    if address and address not in seen and "@" in address:
        seen.add(address)
        try:  # an organisation each: shared tickets would notify every corpus sender of each other's
            with app.db.session() as s:
                contacts.add_organisation(s, f"org of {address}")
                contacts.add_contact(s, address, address.split("@")[0] or "someone", f"org of {address}")
        except contacts.ContactsError:
            pass  # not an address a contact can have: the message is an unknown sender's


def _ticket(session, key: str) -> dict:
    return shapes.ticket_detail(session.exec(select(Ticket).where(Ticket.key == key)).one(), shapes.Names(session))


def _contains(text: str, line: str) -> bool:
    """LINE in TEXT, white space aside (layouts differ in the spaces around inline elements)."""
    return "".join(line.split()) in "".join(normalised(text).split())


def _reply_scores(app: App) -> dict[str, Score]:
    found: dict[str, Score] = {}
    sender = "replier@corpus.example"
    _contact(app, sender, set())
    for case in realworld.reply_cases():
        question = make_message(subject=f"Question {case.id}", body="The question.", sender=sender,
                                message_id=f"<question-{case.id.replace('/', '-')}@corpus.example>")
        exit_code, outcome, key = _deliver(app, question, sender)
        assert outcome == "ticket_created", (case.id, outcome)
        exit_code, outcome, _ = _deliver(app, realworld.reply_message(case, sender, key), sender)
        assert exit_code == 0 and outcome == "comment_added", (case.id, outcome)
        if case.scored:
            found.setdefault(f"reply {case.kind}", Score()).add(_reply_ok(app, key, case), case.id)
    return found


def _reply_ok(app: App, key: str, case) -> bool:
    with app.db.session() as s:
        detail = shapes.ticket_detail(s.exec(select(Ticket).where(Ticket.key == key)).one(), shapes.Names(s))
    body = normalised(detail["comments"][-1]["body"])
    return (all(normalised(line) in body for line in case.must_contain)
            and not any(normalised(line) in body for line in case.must_not_contain))
