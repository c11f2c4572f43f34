"""The IMAP poller (SPEC §3.2, issue #5): a real `mailgate serve` fetching from a real, private
Dovecot (tests/dovecot.py). The tests append mail with imapclient, as a mail server's delivery
would, and look at the result through the CLI, /healthz, the daemon's log and the folders."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request

import pytest
from imapclient import IMAPClient
from sqlmodel import select

from mailgate import config as config_module
from mailgate.app import App
from mailgate.models import Inbound
from tests.dovecot import dovecot, dovecot_basic, dovecot_tls  # noqa: F401  (fixtures)
from tests.inprocess import running_daemon
from tests.support import add_customer, cli_json, make_message, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.one_database]


def mailbox(server, user: str = "support", **overrides) -> dict:
    """An [[imap]] table for USER on SERVER."""
    return {"name": user, "host": "127.0.0.1", "port": server.port, "username": user,
            "password": server.users[user], "folder": "INBOX", "processed_folder": "Processed", **overrides}


def healthz(daemon_process) -> dict:
    """The /healthz document, also when it answers 503."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon_process.http_port}/healthz", timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        return json.load(e)


def state(daemon_process, name: str = "support") -> dict:
    return healthz(daemon_process)["imap"][name]


def connected(daemon_process, name: str = "support") -> bool:
    return state(daemon_process, name)["status"] == "connected"


def summaries(cli) -> list[str]:
    return [t["summary"] for t in cli_json(cli, "ticket", "list")]


def log_lines(daemon_process, text: str) -> list[str]:
    return [line for line in daemon_process.output().splitlines() if text in line]


def test_mail_appended_while_idling_becomes_a_ticket_and_is_moved(dovecot, daemon, make_config, cli):
    add_customer(cli)
    path = make_config("imap.toml", imap=[mailbox(dovecot, poll_seconds=600)])  # within 10 s: only IDLE
    d = daemon(path)
    wait_for(lambda: log_lines(d, f"mailgate: IMAP support 127.0.0.1:{dovecot.port}/INBOX"), message="the announcement")
    wait_for(lambda: connected(d), message="the mailbox to connect")
    assert state(d)["mode"] == "idle"

    appended = time.monotonic()
    dovecot.append(make_message(subject="Printer on fire", body="It smokes.",
                                extra_headers={"Return-Path": "<alice@acme.example>"}))
    assert wait_for(lambda: summaries(cli), timeout=10, message="the ticket") == ["Printer on fire"]
    print(f"\nappended while idling: a ticket {time.monotonic() - appended:.2f}s later")

    wait_for(lambda: dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 1, message="the move")
    assert state(d)["fetched"] == 1 and state(d)["last_fetch_at"]
    app = App(config_module.load(path))
    with app.db.session() as s:
        (record,) = s.exec(select(Inbound)).all()
        assert (record.source, record.envelope_sender, record.envelope_recipients) == (
            "imap", "alice@acme.example", "support@example.com")
    app.db.dispose()

    stopping = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - stopping < 10, "an IDLE must not hold up shutdown"
    assert "Printer on fire" not in d.output() and "It smokes" not in d.output()  # no subjects, no bodies


def test_mail_that_arrives_just_before_idle_is_fetched_at_once(dovecot, make_config, cli, monkeypatch):
    """Mail appended after the last search and before the IDLE command is announced together
    with IDLE's "+ idling", in one read that leaves it in imaplib's buffer where imapclient's
    idle_check never looks: it must be fetched now, not at the next IDLE renewal 25 minutes
    later. The race is made certain by appending from inside the library's idle(), just
    before the command goes out."""
    add_customer(cli)
    app = App(config_module.load(make_config("imap.toml", imap=[mailbox(dovecot, poll_seconds=600)],
                                             processing={"processes": 0})))
    real_idle, raced = IMAPClient.idle, []

    def idle_after_an_append(client):
        if not raced:
            raced.append(True)
            dovecot.append(make_message(subject="Just before IDLE"))
        return real_idle(client)

    monkeypatch.setattr(IMAPClient, "idle", idle_after_an_append)
    with running_daemon(app):
        assert wait_for(lambda: summaries(cli), timeout=15, message="the ticket") == ["Just before IDLE"]
    app.db.dispose()


def test_a_message_over_the_size_limit_is_left_in_the_folder_and_reported_once(dovecot, daemon, make_config, cli):
    add_customer(cli)
    big = make_message(subject="Huge scan", body="x" * 40_000, message_id="<huge@acme.example>")
    dovecot.append([big, make_message(subject="Small one", message_id="<small-1@acme.example>")])
    path = make_config("imap.toml", imap=[mailbox(dovecot)], smtp={"max_message_size": 20_000})
    d = daemon(path)
    assert wait_for(lambda: summaries(cli), message="the small one") == ["Small one"]
    wait_for(lambda: state(d)["too_large"], message="the big one listed in /healthz")
    (uid,) = state(d)["too_large"]
    dovecot.append(make_message(subject="Small two", message_id="<small-2@acme.example>"))
    wait_for(lambda: sorted(summaries(cli)) == ["Small one", "Small two"], message="the next one")
    wait_for(lambda: dovecot.count("Processed") == 2, message="the small ones moved")
    assert dovecot.count("INBOX") == 1  # the big one stays for the operator, never fetched
    assert state(d)["too_large"] == [uid]
    reported = log_lines(d, f"uid {uid} is ")
    assert len(reported) == 1 and "over smtp.max_message_size (20000); left in INBOX" in reported[0]
    assert d.stop() == 0


def test_a_hundred_waiting_messages_are_processed_once_each(dovecot, daemon, make_config, cli):
    add_customer(cli)
    dovecot.append([make_message(subject=f"Request {i}", message_id=f"<bulk-{i}@acme.example>") for i in range(100)])
    path = make_config("imap.toml", imap=[mailbox(dovecot)], policy={"max_new_tickets_per_sender_per_hour": 0})

    started = time.monotonic()
    d = daemon(path)
    wait_for(lambda: len(summaries(cli)) >= 100, timeout=120, interval=0.2, message="100 tickets")
    elapsed = time.monotonic() - started
    wait_for(lambda: dovecot.count("Processed") == 100, message="all moved")
    assert d.stop() == 0

    assert sorted(summaries(cli)) == sorted(f"Request {i}" for i in range(100))
    records = cli_json(cli, "inbox", "list")
    assert len(records) == 100
    assert {r["outcome"] for r in records} == {"ticket_created"}
    assert len({r["message_id"] for r in records}) == 100
    assert (dovecot.total("INBOX"), dovecot.total("Processed")) == (0, 100)
    print(f"\n100 waiting messages: all tickets {elapsed:.1f}s after the daemon was started")


def test_a_message_leaves_the_mailbox_only_once_it_is_spooled(dovecot, daemon, make_config, cli, tmp_path):
    add_customer(cli)
    d = daemon(make_config("imap.toml", imap=[mailbox(dovecot)]))
    wait_for(lambda: connected(d), message="the mailbox to connect")
    spool_tmp = tmp_path / "state" / "spool" / "tmp"
    shutil.rmtree(spool_tmp)
    spool_tmp.write_text("")  # a file where the spool writes: every put fails

    dovecot.append(make_message(subject="Kept on the server"))
    wait_for(lambda: "spool cannot take mail" in (state(d)["last_error"] or ""), message="the spool failure")
    assert (dovecot.count("INBOX"), dovecot.count("Processed")) == (1, 0)

    spool_tmp.unlink()
    spool_tmp.mkdir()
    wait_for(lambda: summaries(cli) == ["Kept on the server"], timeout=60, message="the ticket")
    wait_for(lambda: dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 1, message="the move")
    assert len(log_lines(d, "IMAP support: the spool cannot take mail")) == 1, d.output()
    assert d.stop() == 0


def test_the_poller_survives_a_dovecot_restart(dovecot, daemon, make_config, cli):
    add_customer(cli)
    d = daemon(make_config("imap.toml", imap=[mailbox(dovecot)]))
    wait_for(lambda: connected(d), message="the mailbox to connect")
    dovecot.append(make_message(subject="Before the restart"))
    wait_for(lambda: summaries(cli) == ["Before the restart"], message="the first ticket")

    dovecot.stop()
    # Down for at least two failed reconnects (the lost session counts as the first failure).
    wait_for(lambda: state(d)["status"] == "disconnected" and state(d)["failures"] >= 3,
             timeout=30, message="reconnects to fail")
    dovecot.start()
    dovecot.append(make_message(subject="During the outage"))  # there before the poller is back
    wait_for(lambda: connected(d), timeout=60, message="the poller to reconnect")
    dovecot.append(make_message(subject="After the restart"))
    wait_for(lambda: len(summaries(cli)) == 3, timeout=30, message="the tickets after the restart")

    assert sorted(summaries(cli)) == ["After the restart", "Before the restart", "During the outage"]
    wait_for(lambda: dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 3, message="the moves")
    assert len(log_lines(d, "IMAP support: connection lost")) == 1, d.output()
    assert len(log_lines(d, "IMAP support: connected again")) == 1, d.output()
    assert not log_lines(d, "cannot connect"), d.output()  # the failed reconnects are the same outage
    assert d.stop() == 0


def test_the_poller_survives_a_dovecot_crash(dovecot, daemon, make_config, cli):
    """A crashed server says no BYE: the poller must notice the closed connection by itself."""
    add_customer(cli)
    d = daemon(make_config("imap.toml", imap=[mailbox(dovecot)]))
    wait_for(lambda: connected(d) and state(d)["activity"] == "waiting", message="the mailbox to idle")
    dovecot.kill()
    wait_for(lambda: state(d)["status"] == "disconnected", timeout=10, message="the poller to notice")
    dovecot.start()
    wait_for(lambda: connected(d), timeout=60, message="the poller to reconnect")
    dovecot.append(make_message(subject="After the crash"))
    wait_for(lambda: summaries(cli) == ["After the crash"], message="the ticket")
    (line,) = log_lines(d, "IMAP support: connection lost")
    assert "connection closed by the server" in line
    assert d.stop() == 0


def test_a_wrong_password_is_logged_and_the_other_mailbox_works(dovecot, daemon, make_config, cli):
    add_customer(cli)
    dovecot.append(make_message(subject="For the support mailbox"), user="support")
    boxes = [mailbox(dovecot, "support", password="not-the-password"), mailbox(dovecot, "sales")]
    d = daemon(make_config("imap.toml", imap=boxes))
    wait_for(lambda: connected(d, "sales"), message="the good mailbox to connect")
    dovecot.append(make_message(subject="For sales"), user="sales")

    wait_for(lambda: summaries(cli) == ["For sales"], message="the good mailbox's ticket")
    wait_for(lambda: state(d, "support")["status"] == "login failed", message="the login failure")
    (line,) = log_lines(d, "login failed")
    assert "IMAP support:" in line and "user support" in line
    assert "not-the-password" not in d.output()
    report = healthz(d)  # the failing mailbox makes /healthz fail, naming it; the other is as it is
    assert report["status"] == "failing" and report["imap"]["sales"]["status"] == "connected"
    assert list(report["problems"]) == ["imap.support"] and "login failed" in report["problems"]["imap.support"]
    assert d.proc.poll() is None
    assert dovecot.count("INBOX", user="support") == 1  # untouched: never logged in
    assert d.stop() == 0


def test_without_a_processed_folder_the_message_is_expunged(dovecot, daemon, make_config, cli):
    add_customer(cli)
    d = daemon(make_config("imap.toml", imap=[mailbox(dovecot, processed_folder="")]))
    wait_for(lambda: connected(d), message="the mailbox to connect")
    dovecot.append(make_message(subject="Expunge me"))
    wait_for(lambda: summaries(cli) == ["Expunge me"], message="the ticket")
    wait_for(lambda: dovecot.total("INBOX") == 0, message="the expunge")
    assert dovecot.count("Processed") is None  # no folder was created
    assert d.stop() == 0


def test_polling_when_idle_is_off(dovecot, daemon, make_config, cli):
    add_customer(cli)
    d = daemon(make_config("imap.toml", imap=[mailbox(dovecot, idle=False, poll_seconds=0.5)]))
    wait_for(lambda: connected(d), message="the mailbox to connect")
    assert state(d)["mode"] == "poll"
    assert log_lines(d, "polling every 0.5s")
    dovecot.append(make_message(subject="Found by polling"))
    wait_for(lambda: summaries(cli) == ["Found by polling"], timeout=10, message="the ticket")
    wait_for(lambda: dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 1, message="the move")
    assert d.stop() == 0


def test_a_server_without_move_uidplus_or_idle_gets_copy_delete_expunge_and_polling(dovecot_basic, daemon,
                                                                                    make_config, cli):
    add_customer(cli)
    capabilities = dovecot_basic.client().capabilities()
    assert not {b"MOVE", b"UIDPLUS", b"IDLE"} & set(capabilities)
    dovecot_basic.append([make_message(subject=f"Old {i}", message_id=f"<old-{i}@acme.example>") for i in range(3)])
    d = daemon(make_config("imap.toml", imap=[mailbox(dovecot_basic, poll_seconds=0.5)]))
    wait_for(lambda: connected(d), message="the mailbox to connect")
    assert state(d)["mode"] == "poll"
    dovecot_basic.append(make_message(subject="New", message_id="<new@acme.example>"))
    wait_for(lambda: sorted(summaries(cli)) == ["New", "Old 0", "Old 1", "Old 2"], message="the tickets")
    wait_for(lambda: dovecot_basic.total("INBOX") == 0 and dovecot_basic.count("Processed") == 4,
             message="COPY, \\Deleted and EXPUNGE")
    assert d.stop() == 0


def test_tls_and_starttls_verify_the_server(dovecot_tls, daemon, make_config, cli):
    add_customer(cli)
    cert = str(dovecot_tls.cert)
    boxes = [
        mailbox(dovecot_tls, "support", port=dovecot_tls.tls_port, tls=True, ca_file=cert),  # implicit TLS
        mailbox(dovecot_tls, "sales", ca_file=cert),  # STARTTLS on the plain port
        mailbox(dovecot_tls, "support", name="unverified", port=dovecot_tls.tls_port, tls=True),  # system CAs
    ]
    d = daemon(make_config("imap.toml", imap=boxes))
    dovecot_tls.append(make_message(subject="Over TLS"), user="support")
    dovecot_tls.append(make_message(subject="Over STARTTLS"), user="sales")
    wait_for(lambda: sorted(summaries(cli)) == ["Over STARTTLS", "Over TLS"], message="both tickets")

    wait_for(lambda: state(d, "unverified")["status"] == "disconnected", message="the unverified mailbox to fail")
    assert "CERTIFICATE_VERIFY_FAILED" in state(d, "unverified")["last_error"]
    assert len(log_lines(d, "IMAP unverified: cannot connect")) == 1
    logins = [line for line in dovecot_tls.log().splitlines() if "Login: user=" in line]
    assert any("user=<sales>" in line for line in logins), dovecot_tls.log()
    assert all(", TLS," in line for line in logins), logins  # not just "secured" (loopback)
    assert d.stop() == 0


# --- check-config ----------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, key", [
    ({"host": ""}, "imap[0].host"),
    ({"port": 0}, "imap[0].port"),
    ({"port": 70000}, "imap[0].port"),
    ({"username": ""}, "imap[0].username"),
    ({"folder": ""}, "imap[0].folder"),
    ({"processed_folder": "INBOX"}, "imap[0].processed_folder"),
    ({"poll_seconds": 0}, "imap[0].poll_seconds"),
    ({"idle": "yes"}, "imap[0].idle"),
])
def test_check_config_names_the_imap_key_at_fault(make_config, cli, overrides, key):
    box = {"host": "imap.example.com", "username": "support", "password": "x", **overrides}
    code, out, err = cli("check-config", config=make_config("bad.toml", imap=[box]))
    assert code == 78 and key in err, (code, err)


def test_check_config_refuses_two_mailboxes_of_one_name(make_config, cli):
    box = {"host": "imap.example.com", "username": "support"}
    code, _, err = cli("check-config", config=make_config("twice.toml", imap=[box, box]))
    assert code == 78 and "imap[1].name" in err, err


def test_check_config_lists_the_mailboxes(make_config, cli):
    boxes = [{"host": "imap.example.com", "username": "support"},
             {"name": "sales", "host": "imap.example.com", "port": 993, "tls": True, "username": "sales",
              "processed_folder": ""}]
    code, out, err = cli("check-config", config=make_config("ok.toml", imap=boxes))
    assert code == 0, err
    assert "imap support@imap.example.com: imap.example.com:143/INBOX as support; processed mail moved to Processed" in out
    assert "imap sales: imap.example.com:993/INBOX as sales; processed mail expunged" in out
