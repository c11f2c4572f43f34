"""`mailgate deliver` with a daemon running (issue 16): the message is handed to the daemon over
its socket, spooled and processed there, and deliver exits with SPEC §3.3's codes; with no
daemon to answer, deliver processes the message itself."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import threading

import pytest

from tests.support import SUPPORT, add_customer, cli_json, make_message, spool_files, wait_for

EX_OK, EX_DATAERR, EX_NOUSER, EX_TEMPFAIL = 0, 65, 67, 75
EMPTY = {"tmp": [], "new": [], "cur": []}
# Processing in the deliver process itself fails on every message: only the daemon can have
# made a ticket of one.
BROKEN_HERE = {"MAILGATE_FAILPOINTS": "pipeline=raise"}

pytestmark = pytest.mark.slow


def _deliver(cli_process, raw: bytes, recipient: str = SUPPORT, env: dict | None = None, config=None):
    return cli_process("deliver", "--sender", "alice@acme.example", "--recipient", recipient, "--json",
                       stdin=raw, env=env, config=config)


def _app(config_path):
    from mailgate import config as config_module
    from mailgate.app import App

    return App(config_module.load(config_path))


def test_with_a_daemon_running_the_message_is_handed_over_and_its_outcome_printed(daemon, cli, cli_process, tmp_path):
    add_customer(cli)
    d = daemon()
    sock = tmp_path / "state" / "deliver.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600

    p = _deliver(cli_process, make_message(subject="Handed over", message_id="<handed@acme.example>"), env=BROKEN_HERE)
    assert p.returncode == EX_OK, p.stderr
    assert json.loads(p.stdout) == {"outcome": "ticket_created", "ticket": "SD-1"}
    # processed by the daemon's worker, which logged it
    wait_for(lambda: "message_id=<handed@acme.example>" in d.output(), message="the daemon's log line")
    assert b"message_id=" not in p.stderr
    assert [(r["outcome"], r["ticket"]) for r in cli_json(cli, "inbox", "list")] == [("ticket_created", "SD-1")]
    assert spool_files(tmp_path / "state") == EMPTY

    p = _deliver(cli_process, make_message(subject="Handed over", message_id="<handed@acme.example>"))
    assert (p.returncode, json.loads(p.stdout)) == (EX_OK, {"outcome": "duplicate", "ticket": "SD-1"})
    assert d.stop() == 0
    assert not sock.exists()  # a deliver after the stop processes its message itself


def test_the_daemon_refuses_what_deliver_refuses_with_the_same_codes(daemon, cli, make_config, tmp_path):
    from mailgate.ingest import pipe

    config = make_config(smtp={"max_message_size": 2000})
    cli_here = lambda *a, **k: cli(*a, config=config, **k)  # noqa: E731
    add_customer(cli_here)
    daemon(config)
    app = _app(config)  # the daemon's refusals, past deliver's own checks

    too_big = pipe.hand_over(app.config, make_message(body="x" * 3000), "alice@acme.example", SUPPORT)
    assert too_big.exit_code == EX_DATAERR and "5.3.4" in too_big.error
    not_ours = pipe.hand_over(app.config, make_message(), "alice@acme.example", "other@example.com")
    assert not_ours.exit_code == EX_NOUSER and "other@example.com" in not_ours.error
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(tmp_path / "state" / "deliver.sock"))
        s.sendall(b'{"sender": 1}\n')
        answer = json.loads(s.makefile("rb").readline())
    assert answer["code"] == EX_TEMPFAIL and "malformed" in answer["error"]

    spool_tmp = tmp_path / "state" / "spool" / "tmp"
    shutil.rmtree(spool_tmp)
    spool_tmp.write_text("not a directory")
    unstored = pipe.hand_over(app.config, make_message(), "alice@acme.example", SUPPORT)
    assert unstored.exit_code == EX_TEMPFAIL and "cannot store" in unstored.error
    spool_tmp.unlink()
    spool_tmp.mkdir()
    assert spool_files(tmp_path / "state") == EMPTY
    stored = pipe.hand_over(app.config, make_message(), "alice@acme.example", SUPPORT)
    assert (stored.exit_code, stored.result.outcome) == (EX_OK, "ticket_created")
    assert [r["outcome"] for r in cli_json(cli_here, "inbox", "list")] == ["ticket_created"]


def test_the_socket_of_a_killed_daemon_is_passed_by(daemon, cli, cli_process, tmp_path):
    add_customer(cli)
    d = daemon()
    d.kill()
    assert (tmp_path / "state" / "deliver.sock").exists()  # nobody listens on it any more
    p = _deliver(cli_process, make_message(subject="Processed here"))
    assert p.returncode == EX_OK, p.stderr
    assert json.loads(p.stdout) == {"outcome": "ticket_created", "ticket": "SD-1"}
    assert b"message_id=" in p.stderr  # this process logged its outcome: it processed the message


def test_a_daemon_that_takes_the_message_but_gives_no_answer_means_try_again(cli, cli_process, tmp_path):
    """Spooled or not, deliver cannot tell: 75, so the MTA tries again (a copy becomes a
    duplicate)."""
    add_customer(cli)
    path = tmp_path / "state" / "deliver.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()

    def hang_up():
        conn, _ = server.accept()
        conn.recv(65536)
        conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        p = _deliver(cli_process, make_message())
    finally:
        thread.join(30)
        server.close()
        os.unlink(path)
    assert p.returncode == EX_TEMPFAIL
    assert "no answer" in p.stderr.decode()
    assert cli_json(cli, "inbox", "list") == []


def test_a_long_state_directory_is_reached_through_proc(daemon, cli, cli_process, make_config, tmp_path):
    """sockaddr_un holds 107 bytes; the state directory may be longer."""
    state = tmp_path / ("s" * 120)
    config = make_config("long.toml", storage={"state_dir": str(state)})
    add_customer(lambda *a, **k: cli(*a, config=config, **k))
    d = daemon(config)
    p = _deliver(cli_process, make_message(subject="Far away"), env=BROKEN_HERE, config=config)
    assert (p.returncode, json.loads(p.stdout)) == (EX_OK, {"outcome": "ticket_created", "ticket": "SD-1"}), p.stderr
    assert d.stop() == 0
