"""Every rule of SPEC §4 from the fixture corpus (fixtures/emails/manifest.toml), delivered
through `mailgate deliver`'s code path and through the real SMTP listener."""

from __future__ import annotations

import email.utils
import tomllib
from pathlib import Path

import pytest
from sqlmodel import func, select

from mailgate import shapes
from mailgate.app import App
from mailgate.ingest import pipe
from mailgate.models import Inbound, Outbound, Ticket
from tests import world
from tests.inprocess import running_daemon, smtp_port
from tests.support import REPO, SUPPORT, send, wait_for

FIXTURES = REPO / "fixtures" / "emails"
CASES = tomllib.loads((FIXTURES / "manifest.toml").read_text())["case"]


@pytest.fixture
def config_path(make_config):
    # Processing in the daemon: the SMTP path here is the listener, the spool and the runner;
    # worker processes (a second each to start) have tests of their own (test_workers.py).
    return make_config(processing={"processes": 0})


@pytest.fixture
def app(world_app):
    return world_app


def _raw(app: App, case: dict) -> bytes:
    raw = (FIXTURES / case["file"]).read_bytes()
    if b"@@SIGNED:" in raw:
        raw = raw.replace(b"@@SIGNED:SD-1@@", _notification_id(app, "SD-1").strip("<>").encode())
    return raw


def _notification_id(app: App, key: str) -> str:
    """The Message-ID of the ticket_created notification mailgate queued for KEY's creator."""
    with app.db.session() as s:
        ticket = s.exec(select(Ticket).where(Ticket.key == key)).one()
        row = s.exec(select(Outbound).where(Outbound.ticket_id == ticket.id, Outbound.event == "ticket_created",
                                            Outbound.recipient == "alice@acme.example")).one()
        assert app.signer.ticket_of(row.message_id) == key
        return row.message_id


def _bounced(app: App) -> int:
    with app.db.session() as s:
        return s.exec(select(func.count()).select_from(Outbound).where(Outbound.status == "bounced")).one()


def _sender(case: dict, raw: bytes) -> str | None:
    if "sender" in case:
        return case["sender"]
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("latin-1")
    msg = email.message_from_string(head + "\n\n")
    pairs = email.utils.getaddresses(msg.get_all("From", []))
    return pairs[0][1] if pairs and pairs[0][1] else "unknown@sender.example"


def _prepare(app: App, case: dict) -> None:
    status = case.get("before_status")
    if status == "clarification":
        world.set_status(app, "SD-1", "in_progress")
    if status:
        world.set_status(app, "SD-1", status)


def _deliver_pipe(app: App, raw: bytes, sender, recipient) -> tuple[str, str | None]:
    delivery = pipe.deliver(app, raw, sender, recipient)
    assert delivery.exit_code == 0, delivery.error
    return delivery.result.outcome, delivery.result.ticket


def _inbound_count(app: App) -> int:
    with app.db.session() as s:
        return s.exec(select(func.count()).select_from(Inbound)).one()


def _last_inbound(app: App) -> tuple[str, str | None]:
    with app.db.session() as s:
        inbound = s.exec(select(Inbound).order_by(Inbound.id.desc())).first()
        return inbound.outcome, shapes.Names(s).ticket(inbound.ticket_id)


def _check(app: App, case: dict, deliver) -> None:
    _prepare(app, case)
    raw = _raw(app, case)
    sender, recipient = _sender(case, raw), case.get("recipient", SUPPORT)
    if case.get("deliver_twice"):
        first = deliver(app, raw, sender, recipient)
        assert first[0] == case.get("first_outcome", "ticket_created"), first
    outcome, ticket = deliver(app, raw, sender, recipient)
    assert (outcome, ticket) == (case["outcome"], case.get("ticket")), case["file"]
    if "bounced" in case:
        assert _bounced(app) == case["bounced"]
    if ticket:
        _check_ticket(app, case, ticket)


def _check_ticket(app: App, case: dict, key: str) -> None:
    with app.db.session() as s:
        detail = shapes.ticket_detail(s.exec(select(Ticket).where(Ticket.key == key)).one(), shapes.Names(s))
        sd1 = s.exec(select(Ticket).where(Ticket.key == "SD-1")).one()
    kind = case.get("first_outcome", "ticket_created") if case["outcome"] == "duplicate" else case["outcome"]
    is_comment = kind == "comment_added"
    text = detail["comments"][-1]["body"] if is_comment else detail["description"]
    attachments = detail["comments"][-1]["attachments"] if is_comment else detail["attachments"]
    if "summary" in case:
        assert detail["summary"] == case["summary"]
    if "summary_prefix" in case:
        assert detail["summary"].startswith(case["summary_prefix"])
        assert len(detail["summary"]) <= case["summary_max_len"]
    for phrase in case.get("text_contains", []):
        assert phrase in text, f"{phrase!r} missing from {text!r}"
    for phrase in case.get("text_excludes", []):
        assert phrase not in text, f"{phrase!r} left in {text!r}"
    for expected in case.get("attachments", []):
        assert any(all(a.get(k) == v for k, v in expected.items()) for a in attachments), (expected, attachments)
    if "status_after" in case:
        status = sd1.status if case.get("follow_up_of") else detail["status"]
        assert status == case["status_after"]
    if "follow_up_of" in case:
        assert detail["follow_up_of"] == case["follow_up_of"]
    if "participants" in case:
        assert sorted(s["contact"] for s in detail["subscriptions"]) == sorted(case["participants"])


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_fixture_through_deliver(app, case):
    _check(app, case, _deliver_pipe)


@pytest.mark.one_database  # the database's part is the deliver path's, on both databases
@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_fixture_through_smtp(app, case):
    with running_daemon(app) as daemon:
        port = smtp_port(daemon)

        def deliver(app, raw, sender, recipient):
            before = _inbound_count(app)
            send(port, raw, sender=sender or "", recipients=[recipient])
            wait_for(lambda: _inbound_count(app) > before, message="the message processed")
            return _last_inbound(app)

        _check(app, case, deliver)
