"""Desks and agents by mail over SMTP on loopback (SPEC §11), against the real listener of a
daemon run in the test process; what mailgate sends is read from the outbox Maildir."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest
from sqlmodel import select

from mailgate import config as config_module
from mailgate.app import App
from mailgate.models import Inbound, Ticket
from tests import world
from tests.inprocess import running_daemon, smtp_port
from tests.support import SUPPORT, make_message, send, wait_for

BILLING = "billing@example.com"
DESKS = [{"name": "billing", "addresses": [BILLING], "key_prefix": "BILL", "display_name": "Billing Team"}]


def _outbox(app: App) -> list:
    new = app.config.state_dir / "outbox" / "new"
    files = sorted(new.iterdir(), key=lambda p: p.stat().st_mtime_ns) if new.is_dir() else []
    return [email.message_from_bytes(Path(f).read_bytes(), policy=email.policy.default) for f in files]


def _tickets(app: App) -> dict[str, str]:
    with app.db.session() as s:
        return {t.key: t.summary for t in s.exec(select(Ticket).order_by(Ticket.id))}


@pytest.fixture
def desk_app(make_config):
    config = make_config("desks.toml", desks=DESKS, processing={"processes": 0})
    app = App(config_module.load(config)).prepare()
    world.build(app, seed_tickets=False)
    yield app
    app.close()


def test_two_desks_with_their_own_keys_and_senders_and_one_mail_to_both(desk_app):
    app = desk_app
    with running_daemon(app) as daemon:
        port = smtp_port(daemon)
        send(port, make_message(subject="Invoice wrong"), recipients=[BILLING])
        send(port, make_message(subject="Printer on fire"), recipients=[SUPPORT])
        both = make_message(subject="Invoice and printer", message_id="<both@acme.example>")
        assert send(port, both, recipients=[BILLING, SUPPORT]) == {}  # one transaction, both accepted
        wait_for(lambda: len(_tickets(app)) == 4, message="four tickets")
        # each ticket's confirmation to alice (bernd and carol are told too: 3 a ticket)
        wait_for(lambda: len(_outbox(app)) == 12, message="the notifications in the outbox")
    assert _tickets(app) == {"BILL-1": "Invoice wrong", "SD-1": "Printer on fire",
                             "BILL-2": "Invoice and printer", "SD-2": "Invoice and printer"}
    senders = {m["Subject"].split("]")[0] + "]": m["From"] for m in _outbox(app) if m["To"].endswith("<alice@acme.example>")}
    assert senders == {"[BILL-1]": "Billing Team <billing@example.com>", "[SD-1]": "Service Desk <support@example.com>",
                       "[BILL-2]": "Billing Team <billing@example.com>", "[SD-2]": "Service Desk <support@example.com>"}
    with app.db.session() as s:
        records = [(i.envelope_recipients, i.outcome) for i in s.exec(select(Inbound).where(
            Inbound.message_id == "<both@acme.example>").order_by(Inbound.id))]
    assert records == [(BILLING, "ticket_created"), (SUPPORT, "ticket_created")]


# --- agents by mail ------------------------------------------------------------------------------

SAM = "sam@corp.example"
AGENTS = [{"name": "sam", "token": "", "email": SAM, "notify": True}]
TRUSTED = "mx.example.com"
FORWARDS = Path(__file__).resolve().parents[2] / "fixtures" / "emails" / "forward"


@pytest.fixture
def agent_app(make_config):
    config = make_config("agents.toml", desks=DESKS, agents=AGENTS, processing={"processes": 0},
                         policy={"trusted_authserv_id": TRUSTED})
    app = App(config_module.load(config)).prepare()
    world.build(app, seed_tickets=False)
    yield app
    app.close()


def _to(app: App, address: str) -> list:
    return [m for m in _outbox(app) if m["To"].addresses[0].addr_spec == address]


def _answer(notification, body: str, sender: str = f"Sam Agent <{SAM}>") -> tuple[bytes, str]:
    """A reply to NOTIFICATION as a mail client writes it: to its Reply-To, quoting it."""
    from email.message import EmailMessage
    import email.utils

    reply_to = (notification["Reply-To"] or notification["From"]).addresses[0].addr_spec
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, reply_to, "Re: " + notification["Subject"]
    msg["Message-ID"], msg["Date"] = email.utils.make_msgid(domain="corp.example"), email.utils.formatdate()
    msg["In-Reply-To"] = msg["References"] = notification["Message-ID"]
    quoted = "\n".join("> " + line for line in notification.get_body(("plain",)).get_content().splitlines())
    msg.set_content(f"{body}\n\nOn Mon, 1 Dec 2026, Service Desk wrote:\n{quoted}\n")
    return msg.as_bytes(policy=email.policy.SMTP), reply_to


def _comments(app: App, key: str):
    from mailgate.models import Comment

    with app.db.session() as s:
        ticket = s.exec(select(Ticket).where(Ticket.key == key)).one()
        return ticket, [(c.author_agent, c.body, c.internal) for c in
                        s.exec(select(Comment).where(Comment.ticket_id == ticket.id).order_by(Comment.id))]


def test_an_agent_works_a_ticket_by_mail(agent_app):
    app = agent_app
    with running_daemon(app) as daemon:
        port = smtp_port(daemon)
        # a new ticket: the agent is told, with the customer's text
        send(port, make_message(subject="Invoice wrong", body="We were billed twice."), recipients=[BILLING])
        [told] = wait_for(lambda: _to(app, SAM), message="the agent told of BILL-1")
        assert told["Subject"] == "[BILL-1] Invoice wrong" and "We were billed twice." in told.get_body(("plain",)).get_content()
        assert told["From"] == "Billing Team <billing@example.com>"
        # the agent's reply to that mail: a public comment that reaches the customer
        raw, reply_to = _answer(told, "We refund the second charge today.")
        send(port, raw, sender=SAM, recipients=[reply_to])
        wait_for(lambda: len(_to(app, "alice@acme.example")) == 2, message="the comment mailed to alice")
        comment_mail = _to(app, "alice@acme.example")[-1]
        assert "We refund the second charge today." in comment_mail.get_body(("plain",)).get_content()
        assert "> " not in _comments(app, "BILL-1")[1][0][1]  # the quote was cut
        # the customer answers: the agent is told of it
        send(port, make_message(subject="Re: [BILL-1] Invoice wrong", body="Thank you!"), recipients=[BILLING])
        wait_for(lambda: len(_to(app, SAM)) == 2, message="the agent told of alice's reply")
        assert "Thank you!" in _to(app, SAM)[-1].get_body(("plain",)).get_content()
        # a note to the comment address reaches no customer
        before = len(_outbox(app))
        auth = {"Authentication-Results": f"{TRUSTED}; dmarc=pass header.from=corp.example"}
        note = make_message(subject="[BILL-1] Invoice wrong", body="Finance was told.", sender=SAM, extra_headers=auth)
        send(port, note, sender=SAM, recipients=["billing+comment@example.com"])
        wait_for(lambda: len(_comments(app, "BILL-1")[1]) == 3, message="the note")
        # a command: resolved, and one mail to alice for comment and change together
        raw, reply_to = _answer(told, "#status resolved\nThe refund is on its way.")
        send(port, raw, sender=SAM, recipients=[reply_to])
        wait_for(lambda: _comments(app, "BILL-1")[0].status == "resolved", message="the status set")
        wait_for(lambda: len(_outbox(app)) == before + 1, message="one mail for the action")
        # an invalid command changes nothing, and the agent is told why
        raw, reply_to = _answer(told, "#status closd\nBye.")
        send(port, raw, sender=SAM, recipients=[reply_to])
        refusal = wait_for(lambda: [m for m in _to(app, SAM) if "Not applied" in m["Subject"]], message="the refusal")
        assert "unknown status 'closd'" in refusal[0].get_body(("plain",)).get_content()
        # a forged From (no reply address, no pass) acts as a customer: it resolves nothing
        forged = make_message(subject="Re: [SD-9] x", body="#status closed", sender=SAM)
        send(port, forged.replace(b"Re: [SD-9] x", b"Re: [BILL-1] Invoice wrong"), sender=SAM, recipients=[BILLING])
        wait_for(lambda: _inbound_outcomes(app)[-1] == "rejected_unknown_sender", message="the forged mail rejected")
    ticket, comments = _comments(app, "BILL-1")
    assert ticket.status == "resolved"
    assert comments == [("sam", "We refund the second charge today.", False), (None, "Thank you!", False),
                        ("sam", "Finance was told.", True), ("sam", "The refund is on its way.", False)]
    to_alice = _to(app, "alice@acme.example")  # the confirmation, the agent's answer, the resolution
    assert [m["Subject"] for m in to_alice] == ["[BILL-1] Invoice wrong"] * 3
    assert "Resolved" in to_alice[2].get_body(("plain",)).get_content()
    assert not any("Finance was told." in m.get_body(("plain",)).get_content() for m in to_alice)


def _inbound_outcomes(app: App) -> list[str]:
    with app.db.session() as s:
        return [i.outcome for i in s.exec(select(Inbound).order_by(Inbound.id))]


def test_forwards_from_the_four_clients_open_the_customers_tickets(agent_app):
    app = agent_app
    fixtures = ["gmail-en.eml", "outlook-de.eml", "thunderbird-en.eml", "apple-de.eml", "attached-outlook.eml",
                "gmail-stranger.eml"]
    with running_daemon(app) as daemon:
        port = smtp_port(daemon)
        for name in fixtures:
            send(port, (FORWARDS / name).read_bytes(), sender=SAM, recipients=[SUPPORT])
        wait_for(lambda: len(_inbound_outcomes(app)) == len(fixtures), message="every forward processed")
        wait_for(lambda: len(_to(app, "alice@acme.example")) == 5, message="alice's five confirmations")
        wait_for(lambda: _to(app, SAM), message="the refusal of the stranger's forward")
    assert _inbound_outcomes(app) == ["ticket_created"] * 5 + ["rejected_forward"]
    assert _tickets(app) == {"SD-1": "Printer on fire", "SD-2": "Drucker brennt", "SD-3": "Printer on fire",
                             "SD-4": "Drucker brennt", "SD-5": "Printer on fire"}
    [refusal] = _to(app, SAM)  # sam's own forwards are never mailed back to him
    assert "stranger@else.example is not an active contact" in refusal.get_body(("plain",)).get_content()
    assert not any(m["To"].addresses[0].addr_spec == "stranger@else.example" for m in _outbox(app))
