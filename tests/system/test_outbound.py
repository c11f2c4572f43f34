"""Outbound delivery (SPEC §7) against a real SMTP relay sink on loopback (aiosmtpd):
delivery, an outage and its end, 4xx and 5xx, restarts, the Maildir without a relay, claims
by several senders at once, the per-recipient rate limit, and `outbox list|flush`.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import mailbox
import threading
import time
from collections import Counter
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from mailgate import config as config_module, notify
from mailgate.app import App
from mailgate.db import Database
from mailgate.models import Outbound, Ticket, utcnow
from mailgate.outbound import claims, verp
from mailgate.outbound.sender import SendReport, Sender
from mailgate.tickets import service
from tests import world
from tests.relay import RelaySink
from tests.support import cli_json, wait_for

FAST_RETRIES = {"retry_initial_seconds": 0.1, "retry_max_seconds": 0.3, "poll_seconds": 0.2, "timeout_seconds": 5.0}
SEED_RECIPIENTS = ["alice@acme.example", "bernd@acme.example", "carol@acme.example", "gina@globex.example"]


@pytest.fixture
def sink():
    s = RelaySink().start()
    yield s
    s.stop()


def _app(config_path) -> App:
    app = App(config_module.load(config_path)).prepare()
    world.build(app)  # SD-1 (alice) and SD-2 (gina): four ticket_created notifications queued
    return app


def _rows(app: App) -> list[Outbound]:
    with app.db.session() as s:
        return list(s.exec(select(Outbound).order_by(Outbound.id)))


def _by_recipient(app: App) -> dict[str, Outbound]:
    return {r.recipient: r for r in _rows(app)}


def test_delivery_through_the_relay(make_config, sink):
    app = _app(make_config(outbound=sink.config()))
    report = asyncio.run(Sender(app).flush())
    assert (report.sent, report.deferred, report.failed) == (4, 0, 0)
    rows = _rows(app)
    assert [r.status for r in rows] == ["sent"] * 4 and all(r.attempts == 1 and r.sent_at for r in rows)
    assert all(r.claimed_by is None and r.last_error is None for r in rows)
    by_id = {r.message_id: r for r in rows}
    assert sink.message_ids() == Counter({r.message_id: 1 for r in rows})
    for received in sink.received:
        row = by_id[received.message["Message-ID"]]
        assert received.rcpt_tos == [row.recipient]
        assert received.data.replace(b"\r\n", b"\n") == row.message.replace(b"\r\n", b"\n")
        assert received.mail_from == row.envelope_sender  # VERP: it names the row, signed
        assert received.mail_from.startswith("support+bounce-") and verp.outbound_id(app.signer, received.mail_from) == row.id
    app.db.dispose()


def test_outage_then_recovery_delivers_each_message_once(make_config, daemon):
    relay = RelaySink()  # not started: nothing listens on its port yet
    config = make_config(outbound=relay.config(**FAST_RETRIES))
    app = _app(config)
    d = daemon(config)
    try:
        try:
            wait_for(lambda: all(r.attempts >= 2 for r in _rows(app)), message="retries while the relay is down")
        except AssertionError:
            print(d.output(), [(r.attempts, r.last_error, r.next_attempt_at) for r in _rows(app)])
            raise
        rows = _rows(app)
        assert all(r.status == "queued" and "refused" in (r.last_error or "").lower() or "connect" in (r.last_error or "").lower()
                   for r in rows), [r.last_error for r in rows]
        assert all(r.next_attempt_at for r in rows)
        outage_lines = [line for line in d.lines if "unavailable" in line]
        assert len(outage_lines) == 1, outage_lines  # an outage is logged once, not per message or try
        relay.start()
        wait_for(lambda: all(r.status == "sent" for r in _rows(app)), message="delivery after the relay is back")
        assert relay.message_ids() == Counter({r.message_id: 1 for r in _rows(app)})
        assert any("reachable again" in line for line in d.lines)
        assert d.stop() == 0
    finally:
        relay.stop()
        app.db.dispose()


def test_5xx_fails_at_once_with_the_reply_kept(make_config, sink, cli):
    sink.replies["bernd@acme.example"] = "550 5.1.1 no such user"
    app = _app(make_config(outbound=sink.config()))
    code, out, err = cli("outbox", "flush")
    assert code == 0, err
    assert out.strip() == "sent 3, deferred 0, failed 1"
    bernd = _by_recipient(app)["bernd@acme.example"]
    assert (bernd.status, bernd.attempts, bernd.last_error) == ("failed", 1, "550 5.1.1 no such user")
    assert sorted(r.rcpt_tos[0] for r in sink.received) == sorted(set(SEED_RECIPIENTS) - {"bernd@acme.example"})
    assert cli("outbox", "flush")[1].strip() == "sent 0, deferred 0, failed 0"  # failed stays failed
    app.db.dispose()


def test_4xx_is_retried_with_backoff_until_the_maximum_age(make_config, sink, cli):
    sink.replies["carol@acme.example"] = "451 4.2.0 mailbox busy"
    app = _app(make_config(outbound=sink.config(retry_initial_seconds=600.0)))
    before = utcnow()
    assert cli("outbox", "flush")[1].strip() == "sent 3, deferred 1, failed 0"
    carol = _by_recipient(app)["carol@acme.example"]
    assert (carol.status, carol.attempts, carol.last_error) == ("queued", 1, "451 4.2.0 mailbox busy")
    delay = (claims.aware(carol.next_attempt_at) - before).total_seconds()
    assert 600 <= delay <= 600 + 300 + 5  # initial wait plus at most half of it as jitter
    assert cli("outbox", "flush")[1].strip() == "sent 0, deferred 0, failed 0"  # not due yet

    with app.db.session() as s:  # two days later, still not delivered
        s.execute(sa.update(Outbound).where(Outbound.id == carol.id)
                  .values(created_at=utcnow() - timedelta(hours=49), next_attempt_at=utcnow()))
    assert cli("outbox", "flush")[1].strip() == "sent 0, deferred 0, failed 1"
    carol = _by_recipient(app)["carol@acme.example"]
    assert carol.status == "failed" and carol.last_error == "not delivered within 48 h: 451 4.2.0 mailbox busy"
    app.db.dispose()


def test_restart_with_mail_still_queued_delivers_it_once(make_config, daemon):
    relay = RelaySink()
    config = make_config(outbound=relay.config(**FAST_RETRIES))
    app = _app(config)
    first = daemon(config)
    try:
        wait_for(lambda: all(r.attempts >= 1 for r in _rows(app)), message="first tries")
        assert first.stop() == 0
        assert all(r.status == "queued" and r.claimed_by is None for r in _rows(app))  # nothing left claimed
        relay.start()
        second = daemon(config)
        wait_for(lambda: all(r.status == "sent" for r in _rows(app)), message="delivery after the restart")
        assert second.stop() == 0
        third = daemon(config)  # and once more: nothing is sent twice
        wait_for(lambda: any("HTTP on" in line for line in third.lines), message="third start")
        assert third.stop() == 0
        assert relay.message_ids() == Counter({r.message_id: 1 for r in _rows(app)})
    finally:
        relay.stop()
        app.db.dispose()


def test_a_crashed_senders_rows_come_back_when_the_lease_expires(make_config, sink):
    app = _app(make_config(outbound=sink.config()))
    crashed, = claims.claim_due(app.db, utcnow(), 600, "x@example.com")  # a sender that then died ...
    busy, = claims.claim_due(app.db, utcnow(), 600, "x@example.com")  # a sender at work right now
    with app.db.session() as s:  # ... ten minutes ago: its lease has run out
        s.execute(sa.update(Outbound).where(Outbound.id == crashed.id).values(claimed_until=utcnow() - timedelta(seconds=1)))
    report = asyncio.run(Sender(app).flush())
    assert report.sent == 3
    rows = {r.id: r for r in _rows(app)}
    assert rows[crashed.id].status == "sent"
    assert rows[busy.id].status == "queued" and rows[busy.id].claimed_by == busy.owner
    assert not claims.mark_sent(app.db, crashed, utcnow())  # the crashed sender's lease is gone
    assert claims.mark_sent(app.db, busy, utcnow())
    app.db.dispose()


def test_a_batch_lease_is_renewed_only_for_rows_still_held_and_the_rest_given_back(make_config):
    app = _app(make_config())
    batch = claims.claim_due(app.db, utcnow(), 600, "x@example.com", limit=10)
    assert len(batch) == len(_rows(app)) == 4 and len({c.owner for c in batch}) == 1
    assert claims.claim_due(app.db, utcnow(), 600, "x@example.com", limit=10) == []  # all leased
    with app.db.session() as s:  # the first row's lease ran out, and another sender took it
        s.execute(sa.update(Outbound).where(Outbound.id == batch[0].id).values(claimed_until=utcnow() - timedelta(seconds=1)))
    other, = claims.claim_due(app.db, utcnow(), 600, "x@example.com", limit=10)
    assert other.id == batch[0].id
    kept = claims.renew(app.db, batch, utcnow() + timedelta(seconds=1200))
    assert [c.id for c in kept] == [c.id for c in batch[1:]]
    assert claims.release(app.db, batch) == 3  # only what is still ours
    rows = {r.id: r for r in _rows(app)}
    assert rows[other.id].claimed_by == other.owner
    assert all(rows[c.id].claimed_by is None and rows[c.id].status == "queued" for c in kept)
    app.db.dispose()


def test_a_sender_renews_a_batch_lease_before_it_could_run_out(make_config, sink):
    app = _app(make_config(outbound=sink.config()))
    sender = Sender(app)
    lease = claims.lease_seconds(app.config.outbound)
    batch = claims.claim_due(app.db, utcnow(), 5, app.config.from_address, limit=10)  # 5 s left
    seen = []

    def watch(claim):  # the row's lease when it is handed to the transport
        row, = [r for r in _rows(app) if r.id == claim.id]
        seen.append(claims.aware(row.claimed_until))

    async def deliver_all():
        transport = sender._transport()
        original = transport.send

        async def send(outbound_id, *args):
            watch(next(c for c in batch if c.id == outbound_id))
            await original(outbound_id, *args)

        transport.send = send
        report = SendReport()
        claimed_at = time.monotonic() - 2 * lease + 5  # as the sender sees it: 5 s of the lease left
        ok = await sender._deliver_batch(transport, batch, claimed_at, report, asyncio.Event())
        await transport.close()
        return ok, report

    ok, report = asyncio.run(deliver_all())
    assert ok and report.sent == 4 and all(r.status == "sent" for r in _rows(app))
    assert all(until > utcnow() + timedelta(seconds=lease) for until in seen)  # renewed first
    app.db.dispose()


def test_a_sender_killed_mid_delivery_is_taken_over_after_restart(make_config, daemon):
    relay = RelaySink(stall=True).start()  # takes the first message's DATA and never answers
    config = make_config(outbound=relay.config(**FAST_RETRIES))
    app = _app(config)
    try:
        killed = daemon(config)
        wait_for(lambda: relay.stalled == 1, message="a delivery in flight")
        killed.kill()  # SIGKILL in the middle of DATA: the row stays claimed by a dead process
        held = [r for r in _rows(app) if r.claimed_by]  # the batch it had claimed
        assert held and all(r.status == "queued" and claims.aware(r.claimed_until) > utcnow() for r in held)
        relay.stall = False
        restarted = daemon(config)  # does not wait for the lease: its owner is gone
        wait_for(lambda: all(r.status == "sent" for r in _rows(app)), timeout=10, message="delivery after restart")
        assert any(f"took back {len(held)} message" in line for line in restarted.lines)
        assert relay.message_ids() == Counter({r.message_id: 1 for r in _rows(app)})
        assert restarted.stop() == 0
    finally:
        relay.stop()
        app.db.dispose()


def test_no_relay_writes_the_outbox_maildir(config_path, cli):
    app = _app(config_path)
    code, out, err = cli("outbox", "flush")
    assert (code, out.strip()) == (0, "sent 4, deferred 0, failed 0"), err
    box = mailbox.Maildir(app.config.state_dir / "outbox", create=False)
    assert not list((app.config.state_dir / "outbox" / "tmp").iterdir())
    files = sorted((app.config.state_dir / "outbox" / "new").iterdir())
    assert len(files) == 4 and all(".M" in f.name and "P" in f.name and f.name.count(".") >= 2 for f in files)
    rows = {r.message_id: r for r in _rows(app)}
    for msg in box:
        parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
        row = rows[parsed["Message-ID"]]
        assert parsed["Delivered-To"] == row.recipient and parsed["Return-Path"] == f"<{row.envelope_sender}>"
        assert row.status == "sent"
    app.db.dispose()


def test_two_senders_never_claim_one_row_twice(make_config):
    app = _app(make_config(outbound={"max_per_recipient_per_hour": 0}))
    with app.db.session() as s:  # 60 more rows to fight over
        for ticket in s.exec(select(Ticket)):
            for _ in range(30):
                notify.queue(s, app, [service.add_comment(s, ticket, body="x", now=utcnow(), agent="sam")[1][0]])
    total = len(_rows(app))
    claimed: list[list[int]] = [[], []]
    start = threading.Barrier(2)

    def claimer(n: int) -> None:
        db = Database(app.config.database_url)  # its own engine and connections, like another instance
        start.wait()
        while batch := claims.claim_due(db, utcnow(), 600, "x@example.com", limit=5):
            claimed[n].extend(claim.id for claim in batch)
        db.dispose()

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not set(claimed[0]) & set(claimed[1])
    assert sorted(claimed[0] + claimed[1]) == sorted(r.id for r in _rows(app)) and total > 60
    if not app.db.is_sqlite:  # SQLite serialises writers by design; PostgreSQL claims side by side
        assert claimed[0] and claimed[1]
    app.db.dispose()


def test_two_instances_flushing_at_once_send_each_message_once(make_config, sink):
    config = make_config(outbound=sink.config())
    app = _app(config)
    with app.db.session() as s:
        for ticket in s.exec(select(Ticket)):
            for _ in range(10):
                notify.queue(s, app, [service.add_comment(s, ticket, body="x", now=utcnow(), agent="sam")[1][0]])
    other = App(config_module.load(config))

    async def both():
        return await asyncio.gather(Sender(app).flush(), Sender(other).flush())

    reports = asyncio.run(both())
    assert sum(r.sent for r in reports) == len(_rows(app))
    assert sink.message_ids() == Counter({r.message_id: 1 for r in _rows(app)})
    other.db.dispose()
    app.db.dispose()


def test_outbox_list_json(config_path, cli):
    app = _app(config_path)
    rows = cli_json(cli, "outbox", "list")
    assert [set(r) for r in rows] == [{"id", "ticket", "event", "to", "subject", "status", "attempts",
                                       "next_attempt_at", "last_error"}] * 4
    due = rows[0].pop("next_attempt_at")
    assert rows[0] == {"id": 1, "ticket": "SD-1", "event": "ticket_created", "to": "alice@acme.example",
                       "subject": "[SD-1] Login page shows error 500", "status": "queued", "attempts": 0,
                       "last_error": None}
    assert datetime.fromisoformat(due) <= utcnow()
    assert due.endswith("+00:00")
    assert [r["to"] for r in rows] == SEED_RECIPIENTS
    cli("outbox", "flush")
    assert {(r["status"], r["next_attempt_at"]) for r in cli_json(cli, "outbox", "list")} == {("sent", None)}
    code, out, _ = cli("outbox", "list")
    assert code == 0 and len(out.strip().splitlines()) == 4 and "sent" in out
    app.db.dispose()
