"""`mailgate deliver` (SPEC §3.3): one message on stdin, exit 0 / 67 / 75 for an MTA's pipe."""

from __future__ import annotations

import json
import shutil

from tests.support import SUPPORT, add_customer, cli_json, make_message, spool_files, write_config

EX_OK, EX_NOUSER, EX_TEMPFAIL = 0, 67, 75
CLOSED_PORT_DB = "postgresql+psycopg://postgres@127.0.0.1:1/none"


def inbox(cli) -> list[dict]:
    return cli_json(cli, "inbox", "list")


def tickets(cli) -> list[dict]:
    return cli_json(cli, "ticket", "list")


def assert_one_line_error(stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("mailgate: error: "), stderr
    assert "Traceback" not in stderr


# --- as a real process ------------------------------------------------------------------------------


def test_deliver_creates_a_ticket_and_prints_json(cli, cli_process, tmp_path):
    add_customer(cli)
    p = cli_process("deliver", "--sender", "alice@acme.example", "--recipient", SUPPORT, "--json",
                    stdin=make_message(subject="Printer on fire", body="It smokes."))
    assert p.returncode == EX_OK, p.stderr
    assert json.loads(p.stdout) == {"outcome": "ticket_created", "ticket": "SD-1"}
    assert [(t["key"], t["summary"]) for t in tickets(cli)] == [("SD-1", "Printer on fire")]
    assert [(r["outcome"], r["ticket"]) for r in inbox(cli)] == [("ticket_created", "SD-1")]
    assert spool_files(tmp_path / "state") == {"tmp": [], "new": [], "cur": []}
    assert b"It smokes" not in p.stderr  # no bodies in the log


def test_deliver_of_an_unknown_sender_exits_0(cli, cli_process):
    add_customer(cli)
    p = cli_process("deliver", "--sender", "mallory@evil.example", "--recipient", SUPPORT, "--json",
                    stdin=make_message(sender="Mallory <mallory@evil.example>"))
    assert p.returncode == EX_OK, p.stderr
    assert json.loads(p.stdout) == {"outcome": "rejected_unknown_sender", "ticket": None}
    assert [(r["outcome"], r["sender"]) for r in inbox(cli)] == [("rejected_unknown_sender", "mallory@evil.example")]
    assert tickets(cli) == []


def test_deliver_to_another_address_exits_67_and_stores_nothing(cli, cli_process, tmp_path):
    add_customer(cli)
    p = cli_process("deliver", "--sender", "alice@acme.example", "--recipient", "other@example.com",
                    stdin=make_message())
    assert p.returncode == EX_NOUSER
    assert_one_line_error(p.stderr.decode())
    assert "other@example.com" in p.stderr.decode()
    assert inbox(cli) == []
    assert spool_files(tmp_path / "state") == {"tmp": [], "new": [], "cur": []}


def test_deliver_to_a_sub_address_in_other_case_is_ours(cli, cli_process):
    add_customer(cli)
    p = cli_process("deliver", "--sender", "alice@acme.example", "--recipient", "Support+Billing@EXAMPLE.com",
                    "--json", stdin=make_message(subject="Invoice"))
    assert p.returncode == EX_OK, p.stderr
    assert json.loads(p.stdout) == {"outcome": "ticket_created", "ticket": "SD-1"}


def test_deliver_exits_75_when_the_database_is_unavailable(cli_process, tmp_path):
    config = write_config(tmp_path / "down.toml", tmp_path / "state", CLOSED_PORT_DB, {})
    p = cli_process("deliver", "--sender", "alice@acme.example", "--recipient", SUPPORT, "--json",
                    stdin=make_message(), config=config)
    assert p.returncode == EX_TEMPFAIL
    assert_one_line_error(p.stderr.decode())
    # The MTA keeps the message and retries; a copy of ours would only become a duplicate.
    assert spool_files(tmp_path / "state") == {"tmp": [], "new": [], "cur": []}


def test_deliver_exits_75_when_the_spool_cannot_be_written(cli, cli_process, tmp_path):
    add_customer(cli)  # also creates the state directory and the spool
    spool_tmp = tmp_path / "state" / "spool" / "tmp"
    shutil.rmtree(spool_tmp)
    spool_tmp.write_text("not a directory")
    p = cli_process("deliver", "--sender", "alice@acme.example", "--recipient", SUPPORT, stdin=make_message())
    assert p.returncode == EX_TEMPFAIL
    assert_one_line_error(p.stderr.decode())
    assert spool_files(tmp_path / "state") == {"tmp": [], "new": [], "cur": []}
    spool_tmp.unlink()
    spool_tmp.mkdir()
    assert inbox(cli) == []
    p = cli_process("deliver", "--sender", "alice@acme.example", "--recipient", SUPPORT, stdin=make_message())
    assert p.returncode == EX_OK, p.stderr  # repaired: the MTA's retry goes through


def test_deliver_exits_75_for_a_broken_config_file(cli_process, tmp_path):
    for text in ('[database\nurl = "sqlite:///x.db"\n', '[smtp]\nport = "twenty-five"\n', "[nonsense]\nx = 1\n"):
        config = tmp_path / "broken.toml"
        config.write_text(text)
        p = cli_process("deliver", "--recipient", SUPPORT, stdin=make_message(), config=config)
        assert p.returncode == EX_TEMPFAIL, (text, p.stderr)
        assert_one_line_error(p.stderr.decode())
        assert "broken.toml" in p.stderr.decode()
    # Other commands say "bad config" (78), not "try again".
    assert cli_process("inbox", "list", config=config).returncode == 78


def test_deliver_without_a_config_file_exits_75(cli_process, tmp_path):
    p = cli_process("deliver", "--recipient", SUPPORT, stdin=make_message(), config=tmp_path / "missing.toml")
    assert p.returncode == EX_TEMPFAIL
    assert_one_line_error(p.stderr.decode())


# --- in-process -------------------------------------------------------------------------------------


def test_null_sender_is_machine_mail(cli):
    add_customer(cli)
    code, out, err = cli("deliver", "--sender", "", "--recipient", SUPPORT, "--json",
                         stdin=make_message(subject="Delivery Status Notification"))
    assert code == EX_OK, err
    assert json.loads(out) == {"outcome": "ignored_auto", "ticket": None}
    assert [(r["outcome"], r["error"]) for r in inbox(cli)] == [("ignored_auto", "machine mail: null-sender")]
    assert tickets(cli) == []


def test_without_sender_option_the_sender_is_unknown_not_null(cli):
    add_customer(cli)
    code, out, err = cli("deliver", "--json", stdin=make_message())
    assert code == EX_OK, err
    assert json.loads(out) == {"outcome": "ticket_created", "ticket": "SD-1"}


def test_duplicate_delivery_names_the_original_ticket(cli, tmp_path):
    add_customer(cli)
    raw = make_message(subject="Twice", message_id="<twice@acme.example>")
    first = cli("deliver", "--sender", "alice@acme.example", "--recipient", SUPPORT, "--json", stdin=raw)
    second = cli("deliver", "--sender", "alice@acme.example", "--recipient", SUPPORT, "--json", stdin=raw)
    assert first[0] == EX_OK and second[0] == EX_OK, (first, second)
    assert json.loads(first[1]) == {"outcome": "ticket_created", "ticket": "SD-1"}
    assert json.loads(second[1]) == {"outcome": "duplicate", "ticket": "SD-1"}
    rows = inbox(cli)
    assert [(r["outcome"], r["ticket"], r["message_id"]) for r in rows] == [
        ("ticket_created", "SD-1", "<twice@acme.example>"),
        ("duplicate", "SD-1", "<twice@acme.example>"),
    ]
    assert len(tickets(cli)) == 1
    assert spool_files(tmp_path / "state") == {"tmp": [], "new": [], "cur": []}


def test_duplicate_without_message_id_by_content(cli):
    add_customer(cli)
    raw = b"From: alice@acme.example\r\nTo: support@example.com\r\nSubject: No id\r\n\r\nSame bytes.\r\n"
    first = cli("deliver", "--sender", "alice@acme.example", "--json", stdin=raw)
    second = cli("deliver", "--sender", "alice@acme.example", "--json", stdin=raw)
    assert json.loads(first[1]) == {"outcome": "ticket_created", "ticket": "SD-1"}
    assert json.loads(second[1]) == {"outcome": "duplicate", "ticket": "SD-1"}


# --- mailgate.ingest.pipe.deliver on a prepared app, failing after start-up ----------------------------


def _app(config_path):
    from mailgate import config as config_module
    from mailgate.app import App

    return App(config_module.load(config_path))


def test_spool_failure_after_start_up_is_a_tempfail(cli, config_path, tmp_path):
    from mailgate.ingest import pipe

    add_customer(cli)
    app = _app(config_path).prepare()
    spool = tmp_path / "state" / "spool"
    try:
        shutil.rmtree(spool / "tmp")
        (spool / "tmp").write_text("not a directory")
        delivery = pipe.deliver(app, make_message(), "alice@acme.example", SUPPORT)
        assert (delivery.exit_code, delivery.result) == (EX_TEMPFAIL, None)
        assert "spool" in delivery.error
        (spool / "tmp").unlink()
        (spool / "tmp").mkdir()

        shutil.rmtree(spool / "cur")
        (spool / "cur").write_text("not a directory")
        delivery = pipe.deliver(app, make_message(), "alice@acme.example", SUPPORT)
        assert (delivery.exit_code, delivery.result) == (EX_TEMPFAIL, None)
        assert spool_files(tmp_path / "state") == {"tmp": [], "new": [], "cur": []}
        (spool / "cur").unlink()
        (spool / "cur").mkdir()

        delivery = pipe.deliver(app, make_message(), "alice@acme.example", SUPPORT)
        assert delivery.exit_code == EX_OK and delivery.result.outcome == "ticket_created"
    finally:
        app.db.dispose()
    assert [r["outcome"] for r in inbox(cli)] == ["ticket_created"]


def test_database_gone_after_start_up_is_a_tempfail_and_keeps_nothing(config_path, tmp_path):
    from mailgate.ingest import pipe

    config = write_config(tmp_path / "down.toml", tmp_path / "state", CLOSED_PORT_DB, {})
    app = _app(config)
    app.spool.ensure()  # the spool works; only the database is away
    try:
        delivery = pipe.deliver(app, make_message(), "alice@acme.example", SUPPORT)
    finally:
        app.db.dispose()
    assert (delivery.exit_code, delivery.result) == (EX_TEMPFAIL, None)
    assert delivery.error.startswith("database unavailable")
    assert spool_files(tmp_path / "state") == {"tmp": [], "new": [], "cur": []}
