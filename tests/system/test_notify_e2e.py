"""Notifications end to end, through a real daemon and SMTP: the transactional outbox across a
crash (a `mailgate serve` process that kills itself), the once-a-day notice to unknown senders,
no notice for machine mail, bounces of our own mail, and mail going out (to the outbox Maildir)
without anyone asking (a Daemon run in the test process)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import func, select

from mailgate.app import App
from mailgate.models import Inbound, Outbound, SenderNotice, Ticket, utcnow
from tests.inprocess import running_daemon, smtp_port
from tests.support import REPO, make_message, send, wait_for

FIXTURES = REPO / "fixtures" / "emails"
STRANGER = "Stranger <stranger@else.example>"


@pytest.fixture
def app(people_app):
    return people_app


@pytest.fixture
def port(app):
    """The SMTP port of a real Daemon on APP, run in the test process."""
    with running_daemon(app) as daemon:
        yield smtp_port(daemon)


def _count(app: App, model, *where) -> int:
    with app.db.session() as s:
        return s.exec(select(func.count()).select_from(model).where(*where)).one()


def _outbound(app: App, *where) -> list[Outbound]:
    with app.db.session() as s:
        return list(s.exec(select(Outbound).where(*where).order_by(Outbound.id)))


def _outbox_files(app: App) -> list[Path]:
    new = app.config.state_dir / "outbox" / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def test_a_crash_before_commit_leaves_neither_ticket_nor_notification(app, daemon, make_config):
    in_daemon = make_config("in-daemon.toml", processing={"processes": 0})  # the kill takes the daemon
    crashing = daemon(in_daemon, env={"MAILGATE_FAILPOINTS": "before_commit=kill"})
    assert send(crashing.smtp_port, make_message(subject="Printer on fire")) == {}  # 250: it is in the spool
    wait_for(lambda: crashing.proc.poll() is not None, message="the daemon killing itself before commit")
    assert (_count(app, Ticket), _count(app, Outbound), _count(app, Inbound)) == (0, 0, 0)

    daemon()  # the restart finds the message in the spool and processes it, notifications included
    wait_for(lambda: _count(app, Outbound, Outbound.status == "sent") == 3, message="the notifications sent")
    assert _count(app, Ticket) == 1
    rows = _outbound(app)
    assert Counter(r.recipient for r in rows) == {"alice@acme.example": 1, "bernd@acme.example": 1, "carol@acme.example": 1}
    assert {r.event for r in rows} == {"ticket_created"}
    assert len(_outbox_files(app)) == 3


def test_mail_goes_out_at_once_when_the_daemon_queued_it(app, make_config, daemon):
    config = make_config("slow-poll.toml", outbound={"poll_seconds": 60.0})
    d = daemon(config)
    send(d.smtp_port, make_message(subject="Printer on fire"))
    # the poll is a minute away: only the wake-up after the commit can make this pass in time
    wait_for(lambda: len(_outbox_files(app)) == 3, timeout=10, message="notifications in the outbox Maildir")


def test_unknown_sender_gets_one_notice_a_day(app, port):
    for n in range(2):
        send(port, make_message(sender=STRANGER, subject=f"Hello {n}"), sender="stranger@else.example")
    wait_for(lambda: _count(app, Inbound, Inbound.outcome == "rejected_unknown_sender") == 2, message="both rejected")
    wait_for(lambda: _count(app, Outbound, Outbound.status == "sent") == 1, message="the notice sent")
    notice, = _outbound(app)
    assert (notice.event, notice.recipient, notice.ticket_id) == ("unknown_sender_notice", "stranger@else.example", None)

    with app.db.session() as s:  # a day later
        s.execute(sa.update(SenderNotice).values(sent_at=utcnow() - timedelta(hours=25)))
    send(port, make_message(sender=STRANGER, subject="Hello again"), sender="stranger@else.example")
    wait_for(lambda: _count(app, Inbound, Inbound.outcome == "rejected_unknown_sender") == 3, message="third rejected")
    assert len(_outbound(app, Outbound.event == "unknown_sender_notice")) == 2


def test_machine_mail_from_an_unknown_sender_gets_no_notice(app, port):
    send(port, make_message(sender=STRANGER, subject="Automatic reply: Hello",
                                   extra_headers={"Auto-Submitted": "auto-replied"}), sender="stranger@else.example")
    send(port, (FIXTURES / "autoreply" / "stranger-autoreply.eml").read_bytes(), sender="stranger@else.example")
    send(port, (FIXTURES / "bounce" / "mailer-daemon-plain.eml").read_bytes(), sender="")
    wait_for(lambda: _count(app, Inbound, Inbound.outcome == "ignored_auto") == 3, message="all three ignored")
    assert _outbound(app) == []
    assert _count(app, SenderNotice) == 0


def test_bounces_of_our_notifications_are_marked(app, port):
    send(port, make_message(subject="Printer on fire"))
    wait_for(lambda: _count(app, Outbound, Outbound.status == "sent") == 3, message="notifications sent")
    alice, bernd, carol = _outbound(app)

    signed = (FIXTURES / "bounce" / "dsn-postfix-signed.eml").read_bytes()
    send(port, signed.replace(b"@@SIGNED:SD-1@@", alice.message_id.strip("<>").encode()), sender="")
    fake_id = (FIXTURES / "bounce" / "dsn-fake-id-rfc822.eml").read_bytes()  # quotes no id of ours ...
    send(port, fake_id, sender="")
    send(port, fake_id.replace(b"Message-Id: <2025", b"Message-Id: <again-2025"), sender="",
         recipients=[bernd.envelope_sender])  # ... but this copy went to bernd's VERP address
    out_of_office = (FIXTURES / "autoreply" / "out-of-office-subject.eml").read_bytes()
    send(port, out_of_office, sender="carol@acme.example", recipients=[carol.envelope_sender])
    wait_for(lambda: _count(app, Inbound, Inbound.outcome == "ignored_auto") == 4, message="four machine mails")

    statuses = {r.recipient: (r.status, r.last_error) for r in _outbound(app)}
    assert statuses["alice@acme.example"] == ("bounced", "Status: 5.1.1; Diagnostic-Code: smtp; 550 5.1.1 "
                                              "<alice.old@acme.example>: Recipient address rejected: User unknown "
                                              "in virtual mailbox table")
    assert statuses["bernd@acme.example"] == ("bounced", "Status: 5.2.2; Diagnostic-Code: smtp; 552 5.2.2 Mailbox full")
    assert statuses["carol@acme.example"] == ("sent", None)  # an out-of-office reply is no bounce
    with app.db.session() as s:  # the inbound record says which row each bounce was about
        errors = {i.message_id: i.error for i in s.exec(select(Inbound).where(Inbound.outcome == "ignored_auto"))}
    assert errors["<20250306102000.9C1D22A0F1@mx.example.com>"].endswith(f"; bounce of outbound {alice.id}")
    assert errors["<again-20250306102140.1A2B3C4D5E@mx.example.com>"].endswith(f"; bounce of outbound {bernd.id}")
    assert "bounce of" not in errors["<20250306102140.1A2B3C4D5E@mx.example.com>"]
    assert "bounce of" not in errors["<0f1e2d3c4b5a69788796a5b4c3d2e1f0@mail.acme.example>"]


def test_a_forged_verp_address_marks_nothing(app, port):
    send(port, make_message(subject="Printer on fire"))
    wait_for(lambda: _count(app, Outbound, Outbound.status == "sent") == 3, message="notifications sent")
    alice = _outbound(app)[0]
    forged = alice.envelope_sender.replace("-", "-0", 1).rsplit("-", 1)[0] + "-0000000000@example.com"
    fake_id = (FIXTURES / "bounce" / "dsn-fake-id-rfc822.eml").read_bytes()
    send(port, fake_id, sender="", recipients=[forged, f"support+bounce-{alice.id}-0000000000@example.com"])
    wait_for(lambda: _count(app, Inbound, Inbound.outcome == "ignored_auto") == 1, message="the fake bounce")
    assert {r.status for r in _outbound(app)} == {"sent"}
