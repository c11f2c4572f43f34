"""Issue 14 through the command line, in-process: exit codes of usage errors, terminal-safe
output, organisations and contacts an operator can list and change, CSV import of real
files, agents that are named and checked, the outbox's next attempt and `outbox retry`,
check-config, and `explain` (which writes nothing)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import func, select

from mailgate import config as config_module
from mailgate.app import App
from mailgate.models import Comment, Counter, Inbound, Outbound, SenderNotice, Ticket, utcnow
from tests.support import add_customer, cli_json, make_message


def _app(config_path) -> App:
    return App(config_module.load(config_path)).prepare()


# --- usage errors: 64 for every command (argparse said 2) ----------------------------------


@pytest.mark.parametrize("args", [
    ["nonsense"], ["ticket"], ["ticket", "show"], ["ticket", "set", "SD-1", "--bogus", "x"],
    ["contact", "add", "x@acme.example"], ["inbox", "reprocess", "abc"], ["org", "set", "Acme"],
    ["outbox", "retry"], ["ticket", "list", "--jsn"], ["explain"],
])
def test_every_usage_error_exits_64_in_one_line(cli, args):
    code, out, err = cli(*args)
    assert code == 64, (args, code, err)
    assert err.count("\n") == 1 and err.startswith("mailgate: error: ") and "Traceback" not in err


def test_a_database_that_cannot_be_used_exits_69_in_one_line(make_config, cli, tmp_path):
    """SPEC §9: 69 when the database is unavailable — also when the URL names a file that is
    no database (a traceback before)."""
    (tmp_path / "not-a.db").write_bytes(b"this is no SQLite database, just a file in the way\n" * 100)
    config = make_config("nodb.toml", database={"url": f"sqlite:///{tmp_path / 'not-a.db'}"})
    for args in (["ticket", "list"], ["org", "list"], ["contact", "add", "x@acme.example", "--name", "X", "--org", "A"],
                 ["inbox", "list"], ["outbox", "list"], ["db", "upgrade"]):
        code, _, err = cli(*args, config=config)
        assert code == 69 and err.count("\n") == 1 and "file is not a database" in err, (args, code, err)
    down = make_config("down.toml", database={"url": "postgresql+psycopg://postgres@127.0.0.1:1/mailgate"})
    code, _, err = cli("ticket", "list", config=down)  # a server that is not there
    assert code == 69 and err.startswith("mailgate: error: database unavailable: ") and err.count("\n") == 1, err


# --- control characters from mail ----------------------------------------------------------

HOSTILE = "Invoice \x1b]0;pwned\x07\x1b[2J\x1b[31mred\u202egnp.exe\r\nX-Fake: yes"


def test_human_output_escapes_control_characters_from_mail(cli, config_path):
    add_customer(cli)
    raw = make_message(subject="=?utf-8?q?Invoice_=1B]0;pwned=07=1B[2J?=", body=f"Hello\n{HOSTILE}\nbye")
    assert cli("deliver", stdin=raw)[0] == 0
    app = _app(config_path)
    with app.db.session() as s:  # what a parser may leave of it is its business: put it there
        s.execute(sa.update(Ticket).values(summary=HOSTILE))
        s.execute(sa.update(Inbound).values(error=HOSTILE))
        s.execute(sa.update(Outbound).values(last_error=HOSTILE, recipient="alice@acme.example\x1b[2J"))
    outputs = [cli("ticket", "list")[1], cli("ticket", "show", "SD-1")[1], cli("inbox", "list")[1],
               cli("outbox", "list")[1]]
    for out in outputs:
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out and "\r" not in out, out
        assert "\\x1b" in out
    show = outputs[1]
    assert "Hello\n" in show and "\\x1b[31mred\\u202egnp.exe" in show  # the body keeps its lines
    assert "X-Fake" in outputs[0] and "\\x0d\\x0aX-Fake" in outputs[0]  # one line per ticket
    assert json.loads(cli("ticket", "show", "SD-1", "--json")[1])["summary"] == HOSTILE  # JSON is data, not escaped
    app.db.dispose()


# --- organisations and contacts ------------------------------------------------------------


def test_org_list_set_and_contact_list(cli):
    add_customer(cli)
    add_customer(cli, "bob@acme.example", "Bob", "Acme")
    add_customer(cli, "gina@globex.example", "Gina", "Globex")
    assert cli_json(cli, "org", "list") == [{"name": "Acme", "region": None, "contacts": 2},
                                            {"name": "Globex", "region": None, "contacts": 1}]
    assert cli("org", "set", "Acme", "--region", "eu")[0] == 0
    assert cli_json(cli, "org", "list")[0]["region"] == "eu"
    assert cli("org", "set", "Acme", "--region", "")[0] == 0
    assert cli_json(cli, "org", "list")[0]["region"] is None
    code, _, err = cli("org", "set", "Acme Inc", "--region", "eu")
    assert code == 1 and "no organisation 'Acme Inc'" in err
    assert cli_json(cli, "contact", "list", "--org", "Acme") == [
        {"email": "alice@acme.example", "name": "Alice Adams", "organisation": "Acme", "language": "en", "active": True},
        {"email": "bob@acme.example", "name": "Bob", "organisation": "Acme", "language": "en", "active": True}]
    assert cli("contact", "disable", "bob@acme.example")[0] == 0
    assert [c["active"] for c in cli_json(cli, "contact", "list")] == [True, False, True]
    assert "gina@globex.example" in cli("contact", "list")[1]
    assert cli("contact", "list", "--org", "Nope")[0] == 1


# --- CSV import ----------------------------------------------------------------------------


def test_import_reads_windows_1252_with_semicolons_and_rejects_unknown_organisations(cli, tmp_path):
    assert cli("org", "add", "Müller GmbH")[0] == 0
    path = tmp_path / "kontakte.csv"
    path.write_bytes(("email;name;organisation;language;active\r\n"
                      "juergen@mueller.example;Jürgen Weiß;Müller GmbH;de;ja\r\n"
                      "anna@mueller.example;Anna Groß;Müller GmbH;de;\r\n"
                      "eva@mueller.example;Eva;Mueller GmbH;de;ja\r\n").encode("cp1252"))
    code, out, err = cli("contact", "import", str(path))
    assert code == 0, err
    assert "created 2, updated 0, unchanged 0, rejected 1" in out and "created: lines 2-3" in out
    assert "line 4: rejected: no organisation 'Mueller GmbH'" in out and "--create-orgs" in out
    assert "delimiter ';'" in err
    contacts = cli_json(cli, "contact", "list")
    assert [(c["email"], c["name"], c["organisation"], c["active"]) for c in contacts] == [
        ("anna@mueller.example", "Anna Groß", "Müller GmbH", True),
        ("juergen@mueller.example", "Jürgen Weiß", "Müller GmbH", True)]
    assert [o["name"] for o in cli_json(cli, "org", "list")] == ["Müller GmbH"]  # nothing created
    code, out, _ = cli("contact", "import", str(path), "--create-orgs")
    assert "created 1, updated 0, unchanged 2, rejected 0" in out
    assert [o["name"] for o in cli_json(cli, "org", "list")] == ["Mueller GmbH", "Müller GmbH"]


@pytest.mark.parametrize("name", ["Hans Müller", "Jürgen Weiß", "Zoë Brontë", "José Muñoz"])
def test_import_reads_a_small_windows_1252_file_as_windows_1252(cli, tmp_path, name):
    """A file with one or two non-ASCII letters is too little for charset detection alone,
    which read "Müller" as a DOS code page ("M³ller")."""
    cli("org", "add", "Acme")
    path = tmp_path / "one.csv"
    path.write_bytes(f"email;name;organisation;language;active\r\nhans@acme.example;{name};Acme;de;true\r\n"
                     "x@unknown.example;X;Unknown Org;en;\r\n".encode("cp1252"))
    code, out, err = cli("contact", "import", str(path))
    assert code == 0 and "created 1," in out, (out, err)
    assert [c["name"] for c in cli_json(cli, "contact", "list")] == [name]


def test_an_address_twice_in_one_file_is_rejected_the_second_time_so_a_rerun_changes_nothing(cli, tmp_path):
    cli("org", "add", "Acme")
    path = tmp_path / "twice.csv"
    path.write_text("email,name,organisation,language\nhans@acme.example,Hans,Acme,de\n"
                    "bob@acme.example,Bob,Acme,en\nHANS@acme.example,Hans Two,Acme,en\n")
    code, out, _ = cli("contact", "import", str(path))
    assert "created 2, updated 0, unchanged 0, rejected 1" in out
    assert "line 4: rejected: hans@acme.example is on line 2 already" in out
    code, out, _ = cli("contact", "import", str(path))
    assert "created 0, updated 0, unchanged 2, rejected 1" in out  # idempotent
    assert [(c["email"], c["name"]) for c in cli_json(cli, "contact", "list")][-1] == ("hans@acme.example", "Hans")


def test_import_reads_tabs_and_utf16_reports_lines_and_progress(cli, tmp_path):
    cli("org", "add", "Initech")
    rows = [f"user{n}@initech.example\tUser {n}\tInitech\ten" for n in range(1100)]
    path = tmp_path / "big.tsv"
    path.write_bytes(("Email\tName\tOrganisation\tLanguage\n" + "\n".join(rows) + "\n").encode("utf-16"))
    code, out, err = cli("contact", "import", str(path))
    assert code == 0 and "created 1100, updated 0, unchanged 0, rejected 0" in out
    assert "created: lines 2-1101" in out
    assert "... 1000 rows" in err  # progress on stderr
    code, out, _ = cli("contact", "import", str(path))
    assert "created 0, updated 0, unchanged 1100, rejected 0" in out  # idempotent


# --- agents ----------------------------------------------------------------------------------

AGENTS = [{"name": "sam", "token": "sam-token-0123456789abcdef"}, {"name": "kim", "token": "kim-token-0123456789abcdef"}]


def test_agent_names_are_checked_and_recorded(make_config, cli, tmp_path):
    config = make_config("agents.toml", agents=AGENTS)
    run = lambda *a, **k: cli(*a, config=config, **k)  # noqa: E731
    add_customer(run)
    assert run("deliver", stdin=make_message())[0] == 0
    code, _, err = run("ticket", "comment", "SD-1", "--agent", "nobody", "--body", "Hi")
    assert code == 1 and err.strip() == "mailgate: error: unknown agent 'nobody'; [[agents]] has: sam, kim"
    code, _, err = run("ticket", "set", "SD-1", "--status", "in_review", "--agent", "nobody")
    assert code == 1 and "unknown agent" in err
    assert run("ticket", "comment", "SD-1", "--agent", "sam", "--body", "Which browser?")[0] == 0
    assert run("ticket", "set", "SD-1", "--status", "clarification", "--agent", "kim")[0] == 0
    detail = cli_json(run, "ticket", "show", "SD-1")
    assert detail["status"] == "clarification" and detail["comments"][0]["author"] == "agent:sam"
    app = _app(config)
    with app.db.session() as s:
        mail = s.exec(select(Outbound).where(Outbound.event == "status_changed")).one().message.decode()
    assert "kim changed SD-1" in mail
    app.db.dispose()


# --- outbox ----------------------------------------------------------------------------------


def test_outbox_list_shows_the_next_attempt_and_retry_makes_rows_due(cli, config_path):
    add_customer(cli)
    assert cli("deliver", stdin=make_message())[0] == 0
    assert cli("deliver", stdin=make_message(subject="Second"))[0] == 0
    app = _app(config_path)
    later = utcnow() + timedelta(hours=3)
    with app.db.session() as s:
        s.execute(sa.update(Outbound).where(Outbound.id == 1).values(next_attempt_at=later, attempts=2,
                                                                     last_error="451 try later"))
        s.execute(sa.update(Outbound).where(Outbound.id == 2).values(status="failed", last_error="550 no",
                                                                     created_at=utcnow() - timedelta(days=3)))
    rows = cli_json(cli, "outbox", "list")
    assert rows[0]["next_attempt_at"].startswith(later.isoformat()[:16]) and rows[1]["next_attempt_at"] is None
    assert later.isoformat()[:16] in cli("outbox", "list")[1].replace(" ", "T")
    assert cli("outbox", "retry", "--all")[0] == 0
    rows = cli_json(cli, "outbox", "list")
    assert rows[0]["next_attempt_at"] < utcnow().isoformat() and rows[1]["status"] == "failed"  # --all: queued only
    assert cli("outbox", "retry", "2")[0] == 0
    with app.db.session() as s:
        row = s.get(Outbound, 2)
        assert row.status == "queued" and utcnow() - timedelta(minutes=1) < row.created_at.replace(tzinfo=utcnow().tzinfo)
        s.execute(sa.update(Outbound).where(Outbound.id == 2).values(status="sent"))
    code, _, err = cli("outbox", "retry", "2")
    assert code == 1 and "is sent" in err
    assert cli("outbox", "retry", "99")[0] == 1
    assert cli("outbox", "retry", "1", "--all")[0] == 64
    app.db.dispose()


# --- check-config ----------------------------------------------------------------------------


def test_check_config_names_from_address_and_refuses_a_state_dir_it_cannot_create(make_config, cli, tmp_path):
    bad_from = make_config("from.toml", outbound={"from_address": "not an address"})
    code, _, err = cli("check-config", config=bad_from)
    assert code == 78 and "outbound.from_address" in err and "support_addresses" not in err
    (tmp_path / "a-file").write_text("in the way")
    bad_state = make_config("state.toml", storage={"state_dir": str(tmp_path / "a-file" / "state")})
    code, _, err = cli("check-config", config=bad_state)
    assert code == 78 and "storage.state_dir" in err and "cannot create" in err, err
    secret = make_config("secret.toml", outbound={"relay_password": 12345678}, security={"secret": "s3cr3t-value"})
    code, out, err = cli("check-config", config=secret)
    assert code == 78 and "12345678" not in out + err and "outbound.relay_password" in err
    code, out, err = cli("check-config", config=make_config("ok.toml", security={"secret": "s3cr3t-value"},
                                                             database={"url": "postgresql+psycopg://u:pw-42@db/x"}))
    assert code == 0 and "s3cr3t" not in out + err and "pw-42" not in out + err


# --- explain ---------------------------------------------------------------------------------


def _footprint(app: App) -> dict:
    blobs = sorted(p.name for p in app.config.attachments_dir.rglob("*") if p.is_file())
    with app.db.session() as s:
        counts = {model.__name__: s.exec(select(func.count()).select_from(model)).one()
                  for model in (Inbound, Outbound, Ticket, Comment, SenderNotice)}
        counts["counter"] = s.exec(select(Counter.value)).first()
    return {"blobs": blobs, **counts, "metrics": (app.config.state_dir / "metrics.json").read_text()}


def test_explain_tells_what_processing_would_do_and_writes_nothing(cli, config_path, tmp_path):
    add_customer(cli)
    add_customer(cli, "bob@acme.example", "Bob", "Acme")
    assert cli("deliver", stdin=make_message(subject="First"))[0] == 0
    app = _app(config_path)
    before = _footprint(app)
    new = tmp_path / "new.eml"
    new.write_bytes(make_message(subject="Printer on fire", body="Smoke.", extra_headers={"Cc": "bob@acme.example"}))
    assert cli_json(cli, "explain", str(new)) == {
        "outcome": "ticket_created", "ticket": "SD-2", "comment_of": None,
        "notifications": [{"event": "ticket_created", "to": "alice@acme.example"},
                          {"event": "ticket_created", "to": "bob@acme.example"}],
        "reasons": ["the sender alice@acme.example is an active contact",
                    "it refers to no ticket the sender may see", "a new ticket"]}
    reply = tmp_path / "reply.eml"
    reply.write_bytes(make_message(subject="Re: [SD-1] First", body="More smoke.",
                                   sender="Bob <bob@acme.example>"))
    explained = cli_json(cli, "explain", str(reply))
    assert explained["outcome"] == "comment_added" and explained["comment_of"] == "SD-1"
    assert explained["notifications"] == [{"event": "comment_added", "to": "alice@acme.example"}]
    stranger = tmp_path / "stranger.eml"
    stranger.write_bytes(make_message(sender="Eve <eve@evil.example>"))
    explained = cli_json(cli, "explain", str(stranger), "--sender", "eve@evil.example")
    assert explained["outcome"] == "rejected_unknown_sender" and "eve@evil.example is not an active contact" in explained["reasons"][0]
    code, out, _ = cli("explain", str(new))
    assert code == 0 and "outcome: ticket_created SD-2" in out and "would mail bob@acme.example" in out
    assert _footprint(app) == before  # no record, blob, ticket number, notice, outbox row or count
    assert cli("explain", str(tmp_path / "missing.eml"))[0] == 1
    app.db.dispose()
