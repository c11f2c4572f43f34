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
