"""Crash safety (SPEC §3, §4): a process killed at the worst moment loses nothing and doubles
nothing. Real daemons, real SIGKILLs, through the failpoints of mailgate/failpoints.py."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import time

import pytest

from tests.support import (
    SUPPORT, add_customer, alive, children_of, cli_json, crlf, make_message, spool_files, wait_for,
)

KILL_BEFORE_COMMIT = {"MAILGATE_FAILPOINTS": "before_commit=kill"}
KILL_AFTER_COMMIT = {"MAILGATE_FAILPOINTS": "after_commit=kill"}
POISON = {"MAILGATE_FAILPOINTS": "pipeline=raise:POISON"}
# The failpoints that kill "the process" kill the daemon itself only when it processes in-house.
IN_DAEMON = {"processing": {"processes": 0}}
ONE_WORKER = {"processing": {"processes": 1}}  # a real config's default: deliver works in a child under the budget
EMPTY = {"tmp": [], "new": [], "cur": []}


def tickets(cli) -> list[dict]:
    return cli_json(cli, "ticket", "list")


def inbox(cli) -> list[dict]:
    return cli_json(cli, "inbox", "list")


def smtp_accepts(port: int, raw: bytes) -> None:
    """One message over SMTP; asserts the 250 to DATA (the server may die right after it)."""
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    try:
        client.ehlo()
        assert client.mail("alice@acme.example")[0] == 250
        assert client.rcpt(SUPPORT)[0] == 250
        code, text = client.data(crlf(raw))
        assert code == 250, text
    finally:
        client.close()


def wait_until_killed(d) -> None:
    wait_for(lambda: d.proc.poll() is not None, message="the daemon to kill itself")
    assert d.proc.returncode == -signal.SIGKILL, d.output()


def wait_until_done(cli, state, n_inbound: int) -> list[dict]:
    """Wait until the spool is empty and N_INBOUND records exist; return them."""
    def settled():
        if spool_files(state) != EMPTY:
            return None
        rows = inbox(cli)
        return rows if len(rows) >= n_inbound else None

    return wait_for(settled, message=f"an empty spool and {n_inbound} inbound record(s)")


def test_killed_before_commit_the_message_is_processed_once_after_restart(daemon, cli, make_config, tmp_path):
    add_customer(cli)
    state = tmp_path / "state"
    d = daemon(make_config("in-daemon.toml", **IN_DAEMON), env=KILL_BEFORE_COMMIT)
    smtp_accepts(d.smtp_port, make_message(subject="Survives a crash"))
    wait_until_killed(d)
    files = spool_files(state)
    assert len(files["cur"]) == 1 and files["new"] == [] and files["tmp"] == []
    assert tickets(cli) == [] and inbox(cli) == []  # nothing of the transaction was committed

    d2 = daemon()
    rows = wait_until_done(cli, state, 1)
    assert [(r["outcome"], r["ticket"]) for r in rows] == [("ticket_created", "SD-1")]
    assert [(t["key"], t["summary"]) for t in tickets(cli)] == [("SD-1", "Survives a crash")]
    assert "recovered 1 message(s)" in d2.output()
    assert d2.stop() == 0
    assert len(inbox(cli)) == 1 and len(tickets(cli)) == 1


def test_killed_after_commit_the_message_is_not_processed_twice(daemon, cli, make_config, tmp_path):
    add_customer(cli)
    state = tmp_path / "state"
    d = daemon(make_config("in-daemon.toml", **IN_DAEMON), env=KILL_AFTER_COMMIT)
    smtp_accepts(d.smtp_port, make_message(subject="Committed, then killed"))
    wait_until_killed(d)
    assert len(spool_files(state)["cur"]) == 1  # committed, but not yet taken off the spool
    assert [r["outcome"] for r in inbox(cli)] == ["ticket_created"]

    d2 = daemon()
    rows = wait_until_done(cli, state, 1)
    assert "recovered 1 message(s)" in d2.output()
    assert d2.stop() == 0
    assert [(r["outcome"], r["ticket"]) for r in inbox(cli)] == [("ticket_created", "SD-1")]
    assert [t["key"] for t in tickets(cli)] == ["SD-1"]
    assert rows == inbox(cli)


def test_poison_message_is_quarantined_and_does_not_block_the_next(daemon, cli, cli_process, make_config, tmp_path):
    add_customer(cli)
    state = tmp_path / "state"
    config = make_config("poison.toml", processing={"max_attempts": 3})
    d = daemon(config, env=POISON)
    smtp_accepts(d.smtp_port, make_message(subject="POISON pill", message_id="<poison@acme.example>"))
    smtp_accepts(d.smtp_port, make_message(subject="Harmless", message_id="<harmless@acme.example>"))

    rows = wait_until_done(cli, state, 2)
    by_id = {r["message_id"]: r for r in rows}
    poison, harmless = by_id["<poison@acme.example>"], by_id["<harmless@acme.example>"]
    assert (poison["outcome"], poison["ticket"]) == ("quarantined", None)
    assert poison["error"] == "FailpointError: failpoint pipeline"
    assert (harmless["outcome"], harmless["ticket"]) == ("ticket_created", "SD-1")
    assert [t["summary"] for t in tickets(cli)] == ["Harmless"]
    log = d.output()
    assert [f"attempt {n} of 3" in log for n in (1, 2, 3, 4)] == [True, True, True, False]
    assert "POISON pill" not in log  # the subject is no business of the log either
    assert d.proc.poll() is None  # the daemon lives on
    assert d.stop() == 0

    d2 = daemon(config)  # the cause is fixed (no failpoint): the operator reprocesses
    p = cli_process("inbox", "reprocess", str(poison["id"]), config=config)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().strip() == f"inbound {poison['id']}: ticket_created SD-2"
    rows = {r["message_id"]: r for r in inbox(cli)}
    assert (rows["<poison@acme.example>"]["outcome"], rows["<poison@acme.example>"]["ticket"],
            rows["<poison@acme.example>"]["error"]) == ("ticket_created", "SD-2", None)
    assert len(rows) == 2
    assert [t["summary"] for t in tickets(cli)] == ["Harmless", "POISON pill"]
    # Reprocessing twice does not make a second ticket.
    p = cli_process("inbox", "reprocess", str(poison["id"]), config=config)
    assert p.returncode == 1 and b"Traceback" not in p.stderr
    assert len(tickets(cli)) == 2
    assert d2.stop() == 0


def test_poison_through_deliver_is_quarantined_and_exits_0(cli, cli_process, make_config, tmp_path):
    add_customer(cli)
    config = make_config("poison.toml", processing={"max_attempts": 2})
    p = cli_process("deliver", "--sender", "alice@acme.example", "--recipient", SUPPORT, "--json",
                    stdin=make_message(subject="POISON by pipe"), config=config, env=POISON)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"outcome": "quarantined", "ticket": None}
    assert [(r["outcome"], r["error"]) for r in inbox(cli)] == [("quarantined", "FailpointError: failpoint pipeline")]
    assert spool_files(tmp_path / "state") == EMPTY


def _deliver_killed_while(cli_process_args, state, env, condition, message):
    """Start `mailgate deliver` (which works the message in a child under the budget), wait for
    CONDITION, then SIGKILL the deliver process itself, as an MTA's timeout or the OOM killer
    would: its child goes with it (it dies with its parent) and the message stays in cur/."""
    proc = subprocess.Popen(cli_process_args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **env})
    proc.stdin.write(message)
    proc.stdin.close()
    try:
        child = wait_for(lambda: (kids := children_of(proc.pid)) and kids[0], message="deliver's processing child")
        wait_for(condition, message="the child at work")
    finally:  # also when the test fails: a deliver stuck in a failpoint would spin for ever
        proc.kill()
        proc.wait()
    wait_for(lambda: not alive(child), message="the child to die with deliver")
    files = spool_files(state)
    assert len(files["cur"]) == 1 and files["new"] == []


def test_message_left_by_a_killed_deliver_is_recovered_once(daemon, cli, make_config, tmp_path):
    add_customer(cli)
    state = tmp_path / "state"
    hang = {"MAILGATE_FAILPOINTS": "parse=hang"}
    args = [sys.executable, "-m", "mailgate", "--config", str(make_config("one-worker.toml", **ONE_WORKER)), "deliver",
            "--sender", "alice@acme.example", "--recipient", SUPPORT]
    _deliver_killed_while(args, state, hang, lambda: len(spool_files(state)["cur"]) == 1,
                          make_message(subject="Piped, then killed"))
    assert inbox(cli) == []

    d = daemon()
    rows = wait_until_done(cli, state, 1)
    assert [(r["outcome"], r["ticket"]) for r in rows] == [("ticket_created", "SD-1")]
    assert "recovered 1 message(s)" in d.output()
    assert d.stop() == 0
    assert len(inbox(cli)) == 1 and [t["summary"] for t in tickets(cli)] == ["Piped, then killed"]


def test_deliver_killed_after_commit_then_retried_by_the_mta(daemon, cli, cli_process, make_config, tmp_path):
    """The MTA saw no exit 0, so it delivers again: a duplicate naming the ticket; the copy the
    killed process left in the spool is recognised as done (by spool id), not processed again."""
    add_customer(cli)
    state = tmp_path / "state"
    raw = make_message(subject="Committed by pipe", message_id="<pipe-once@acme.example>")
    args = [sys.executable, "-m", "mailgate", "--config", str(make_config("one-worker.toml", **ONE_WORKER)), "deliver",
            "--sender", "alice@acme.example", "--recipient", SUPPORT]
    _deliver_killed_while(args, state, {"MAILGATE_FAILPOINTS": "after_commit=hang"}, lambda: inbox(cli), raw)

    p = cli_process("deliver", "--sender", "alice@acme.example", "--recipient", SUPPORT, "--json", stdin=raw)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"outcome": "duplicate", "ticket": "SD-1"}

    d = daemon()
    wait_until_done(cli, state, 2)
    assert "recovered 1 message(s)" in d.output()
    assert d.stop() == 0
    assert [(r["outcome"], r["ticket"]) for r in inbox(cli)] == [("ticket_created", "SD-1"), ("duplicate", "SD-1")]
    assert len(tickets(cli)) == 1


def test_a_running_daemon_leaves_a_live_deliver_alone(daemon, cli, tmp_path):
    """A daemon starting while a `deliver` holds its message must not take it away (the lock)."""
    from mailgate import config as config_module
    from mailgate.app import App
    from mailgate.core.spool import Envelope

    add_customer(cli)
    state = tmp_path / "state"
    app = App(config_module.load(tmp_path / "mailgate.toml"))
    claim = app.spool.put_claimed(make_message(subject="Held"), Envelope(sender="alice@acme.example", recipients=[SUPPORT]))
    d = daemon()
    # Another message goes through, so the daemon has surely run its start-up recovery.
    smtp_accepts(d.smtp_port, make_message(subject="Other"))
    wait_for(lambda: len(tickets(cli)) == 1, message="the other message")
    held_only = {"tmp": [], "new": [], "cur": [claim.spool_id]}
    wait_for(lambda: spool_files(state) == held_only, message="the other message off the spool")
    assert [t["summary"] for t in tickets(cli)] == ["Other"]
    assert "recovered" not in d.output()
    claim.close()  # now it dies: the next daemon start recovers it
    assert d.stop() == 0
    d2 = daemon()
    wait_until_done(cli, state, 2)
    assert "recovered 1 message(s)" in d2.output()
    assert sorted(t["summary"] for t in tickets(cli)) == ["Held", "Other"]


def run_until_killed(config, env):
    """A daemon that is expected to SIGKILL itself soon after it started (maybe before the
    start-up check saw it alive)."""
    from tests.support import DaemonProcess

    d = DaemonProcess(config, env)
    try:
        try:
            d.start()
        except AssertionError:
            pass  # it died at once; whether by its own SIGKILL is checked below
        wait_until_killed(d)
    finally:
        d.kill()
    return d


def test_deaths_alone_never_quarantine_a_message(daemon, cli, make_config, tmp_path):
    """A message that was in flight during more SIGKILLs than processing.max_attempts is still
    processed once a daemon survives: an outside kill cannot be told from a crash the message
    caused, and a message that got 250 must end as a ticket (tests/system/test_kill.py)."""
    add_customer(cli)
    state = tmp_path / "state"
    config = make_config("killed.toml", processing={"max_attempts": 2, "processes": 0})
    killer = {"MAILGATE_FAILPOINTS": "before_commit=kill:UNLUCKY"}
    d = daemon(config, env=killer)
    smtp_accepts(d.smtp_port, make_message(subject="UNLUCKY timing", message_id="<unlucky@acme.example>"))
    wait_until_killed(d)
    for _ in range(2):
        assert "recovered 1 message(s)" in run_until_killed(config, killer).output()
    assert inbox(cli) == []

    d2 = daemon(config)
    rows = wait_until_done(cli, state, 1)
    assert [(r["message_id"], r["outcome"], r["ticket"]) for r in rows] == [("<unlucky@acme.example>", "ticket_created", "SD-1")]
    assert d2.stop() == 0
    assert len(tickets(cli)) == 1


def test_an_unreadable_spool_file_does_not_stop_processing(daemon, cli, make_config, tmp_path):
    add_customer(cli)
    state = tmp_path / "state"
    config = make_config("one-worker.toml", processing={"threads": 1})
    new = state / "spool" / "new"
    new.mkdir(parents=True, exist_ok=True)
    (new / "00000000000000000001-junk").write_bytes(b"not a spool file\n")  # sorts first
    d = daemon(config)
    smtp_accepts(d.smtp_port, make_message(subject="Behind the junk"))
    wait_for(lambda: len(tickets(cli)) == 1, message="the ticket behind the junk")
    wait_for(lambda: spool_files(state) == EMPTY, message="an empty spool")
    assert sorted((state / "spool" / "bad").iterdir()) == [state / "spool" / "bad" / "00000000000000000001-junk"]
    (new / "00000000000000000002-junk").write_bytes(b"{}\n")  # also while it runs
    smtp_accepts(d.smtp_port, make_message(subject="Behind more junk"))
    wait_for(lambda: len(tickets(cli)) == 2, message="the second ticket")
    assert d.proc.poll() is None
    assert d.stop() == 0
    assert len((list((state / "spool" / "bad").iterdir()))) == 2


def _allow_connections(database_url: str, allow: bool) -> None:
    import sqlalchemy as sa

    from tests.support import PG_ADMIN_URL

    name = database_url.rsplit("/", 1)[1]
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allow).lower()}'))
            if not allow:
                conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
    finally:
        engine.dispose()


def test_database_outage_messages_wait_in_the_spool(daemon, cli, database_url, tmp_path):
    """While the database is away, SMTP still says 250 (the spool has it); processing waits and
    resumes when it is back; a shutdown during the outage is prompt and keeps the message."""
    if not database_url.startswith("postgresql"):
        pytest.skip("needs a database server that can go away (PostgreSQL)")
    add_customer(cli)
    state = tmp_path / "state"
    d = daemon()
    _allow_connections(database_url, False)
    try:
        smtp_accepts(d.smtp_port, make_message(subject="During the outage"))
        wait_for(lambda: "database unavailable, messages stay in the spool" in d.output(), message="the outage")
        assert sum(len(v) for v in spool_files(state).values()) == 1
    finally:
        _allow_connections(database_url, True)
    wait_for(lambda: spool_files(state) == EMPTY, message="processing to resume")
    assert "database reachable again" in d.output()
    assert [t["summary"] for t in tickets(cli)] == ["During the outage"]

    _allow_connections(database_url, False)
    try:
        smtp_accepts(d.smtp_port, make_message(subject="Before the shutdown"))
        wait_for(lambda: d.output().count("database unavailable, messages stay in the spool") == 2, message="the 2nd outage")
        started = time.monotonic()
        assert d.stop() == 0
        assert time.monotonic() - started < 10  # not the 20 s grace period, nor for ever
        files = spool_files(state)
        assert len(files["new"]) == 1 and files["cur"] == []  # back in new/, for the next start
    finally:
        _allow_connections(database_url, True)
    d2 = daemon()
    wait_for(lambda: spool_files(state) == EMPTY, message="the kept message")
    assert d2.stop() == 0
    assert [t["summary"] for t in tickets(cli)] == ["During the outage", "Before the shutdown"]
    assert [r["outcome"] for r in inbox(cli)] == ["ticket_created", "ticket_created"]
