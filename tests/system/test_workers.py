"""Processing in worker processes (`[processing] processes`, mailgate.serve.workers): a real
`mailgate serve` with two children, mail over SMTP, /metrics, SIGHUP, SIGTERM, a worker that
dies and a daemon that is killed."""

from __future__ import annotations

import os
import signal
import urllib.request

import pytest

from tests.support import add_customer, alive as _alive, children_of as _children, cli_json, make_message, send, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.one_database]

TWO_WORKERS = {"processing": {"processes": 2}}


def _workers(d, count: int = 2) -> list[int]:
    return wait_for(lambda: len(kids := _children(d.proc.pid)) == count and kids, message=f"{count} workers")


def _metrics(d) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.http_port}/metrics", timeout=10) as r:
        return r.read().decode()


def test_two_workers_take_the_mail_report_it_and_stop_with_the_daemon(make_config, daemon, cli):
    add_customer(cli)
    # The sender polls only every 10 minutes: mail goes out within seconds only because the
    # workers report each transaction that queued some.
    d = daemon(make_config(**TWO_WORKERS, outbound={"poll_seconds": 600}))
    workers = _workers(d)
    for i in range(20):
        assert send(d.smtp_port, make_message(subject=f"Request {i}", message_id=f"<w-{i}@acme.example>")) == {}
    wait_for(lambda: len(cli_json(cli, "ticket", "list")) == 20, message="twenty tickets")
    text = wait_for(lambda: 'mailgate_messages_total{outcome="ticket_created"} 20.0' in (m := _metrics(d)) and m,
                    message="the workers' figures in /metrics")
    assert "mailgate_processing_seconds_count 20.0" in text
    wait_for(lambda: [r["status"] for r in cli_json(cli, "outbox", "list")] == ["sent"] * 20, message="sent")
    assert d.stop() == 0
    assert not [pid for pid in workers if _alive(pid)]


def test_sighup_reaches_the_workers(make_config, daemon, cli):
    add_customer(cli)
    path = make_config(**TWO_WORKERS, policy={"max_new_tickets_per_sender_per_hour": 1})
    d = daemon(path)
    _workers(d)
    send(d.smtp_port, make_message(subject="First", message_id="<first@acme.example>"))
    wait_for(lambda: len(cli_json(cli, "ticket", "list")) == 1, message="the first ticket")
    make_config(**TWO_WORKERS, policy={"max_new_tickets_per_sender_per_hour": 100})  # the same file
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: d.output().count("reloaded") == 3, message="the daemon and both workers reloaded")
    for i in range(4):  # whichever worker takes them, none is rate limited any more
        send(d.smtp_port, make_message(subject=f"More {i}", message_id=f"<more-{i}@acme.example>"))
    wait_for(lambda: len(cli_json(cli, "inbox", "list")) == 5, message="all processed")
    assert {r["outcome"] for r in cli_json(cli, "inbox", "list")} == {"ticket_created"}
    assert d.stop() == 0


def test_a_worker_that_dies_is_replaced(make_config, daemon, cli):
    add_customer(cli)
    d = daemon(make_config(**TWO_WORKERS))
    first, second = _workers(d)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: len(kids := _children(d.proc.pid)) == 2 and first not in kids, message="a new worker")
    assert second in _children(d.proc.pid)
    assert "exited with -9; starting another" in d.output()
    for i in range(5):
        send(d.smtp_port, make_message(subject=f"After {i}", message_id=f"<after-{i}@acme.example>"))
    wait_for(lambda: len(cli_json(cli, "ticket", "list")) == 5, message="the tickets")
    assert d.stop() == 0


def test_the_workers_leave_when_the_daemon_is_killed(make_config, daemon):
    d = daemon(make_config(**TWO_WORKERS))
    workers = _workers(d)
    d.kill()
    wait_for(lambda: not [pid for pid in workers if _alive(pid)], message="the orphaned workers to exit")


def test_a_message_that_keeps_killing_its_worker_is_quarantined_unparsed(make_config, daemon, cli):
    add_customer(cli)
    d = daemon(make_config(**TWO_WORKERS), env={"MAILGATE_FAILPOINTS": "before_commit=kill:UNLUCKY"})
    _workers(d)
    assert send(d.smtp_port, make_message(subject="UNLUCKY", message_id="<unlucky@acme.example>")) == {}
    for i in range(3):  # the listener and the other worker carry on meanwhile
        assert send(d.smtp_port, make_message(subject=f"Fine {i}", message_id=f"<fine-{i}@acme.example>")) == {}
    records = wait_for(lambda: len(r := cli_json(cli, "inbox", "list")) == 4 and r, timeout=60,
                       message="every message processed or quarantined")
    (poison,) = [r for r in records if r["outcome"] == "quarantined"]
    assert poison["error"] == "a processing worker process died 3 times with this message in hand"
    # not parsed (parsing may be what kills): its Message-ID read off the raw header block
    assert poison["message_id"] == "<unlucky@acme.example>"
    assert sorted(r["outcome"] for r in records if r is not poison) == ["ticket_created"] * 3
    assert d.output().count("exited with -9; starting another") == 3
    assert len(_workers(d)) == 2 and d.stop() == 0
