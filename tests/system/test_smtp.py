"""The SMTP/LMTP listener (SPEC §3.1): a real `mailgate serve`, driven over loopback."""

from __future__ import annotations

import shutil
import smtplib
import ssl
import subprocess

import pytest

from tests.support import SUPPORT, LineClient, add_customer, cli_json, crlf, send, spool_files, wait_for
from tests.support import make_message as _make_message

pytestmark = pytest.mark.one_database


EMPTY = {"tmp": [], "new": [], "cur": []}


def make_message(**kw) -> bytes:
    return crlf(_make_message(**kw))


def tickets(cli) -> list[dict]:
    return cli_json(cli, "ticket", "list")


def inbox(cli) -> list[dict]:
    return cli_json(cli, "inbox", "list")


def at_least(n: int, rows: list) -> list | None:
    return rows if len(rows) >= n else None


def wait_for_tickets(cli, n: int) -> list[dict]:
    return wait_for(lambda: at_least(n, tickets(cli)), message=f"{n} ticket(s)")


def wait_for_inbox(cli, n: int) -> list[dict]:
    return wait_for(lambda: at_least(n, inbox(cli)), message=f"{n} inbound record(s)")


# --- recipients ---------------------------------------------------------------------------------


def test_support_address_gets_250_and_becomes_a_ticket(daemon, cli):
    add_customer(cli)
    d = daemon()
    with d.smtp() as client:
        code, _ = client.ehlo("client.example")
        assert code == 250
        assert client.mail("alice@acme.example") == (250, b"OK")
        code, text = client.rcpt(SUPPORT)
        assert (code, text) == (250, b"2.1.5 OK")
        code, text = client.data(make_message(subject="Printer on fire", body="It smokes."))
        assert (code, text) == (250, b"2.0.0 Message accepted")
    rows = wait_for_tickets(cli, 1)
    assert [(r["key"], r["summary"], r["creator"]) for r in rows] == [("SD-1", "Printer on fire", "alice@acme.example")]
    assert [(r["outcome"], r["ticket"]) for r in inbox(cli)] == [("ticket_created", "SD-1")]
    wait_for(lambda: spool_files(d.config.parent / "state") == EMPTY, message="the message off the spool")


def test_sub_address_and_case_insensitive_support_address_are_accepted(daemon, cli):
    add_customer(cli)
    d = daemon()
    assert send(d.smtp_port, make_message(subject="Billing question"), recipients=["support+billing@example.com"]) == {}
    assert send(d.smtp_port, make_message(subject="Shouting"), recipients=["SUPPORT@Example.COM"]) == {}
    assert send(d.smtp_port, make_message(subject="Both"), recipients=["Support+X@EXAMPLE.com"]) == {}
    rows = wait_for_tickets(cli, 3)
    assert sorted(r["summary"] for r in rows) == ["Billing question", "Both", "Shouting"]


def test_other_address_is_refused_with_550_5_1_1(daemon, cli):
    add_customer(cli)
    d = daemon()
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(d.smtp_port, make_message(), recipients=["other@example.com"])
    ((address, (code, text)),) = refused.value.recipients.items()
    assert address == "other@example.com"
    assert code == 550
    assert text.startswith(b"5.1.1 ")
    assert b"other@example.com" in text

    # A look-alike of the support address is no support address either.
    for lookalike in ("support@example.org", "supports@example.com", "support@sub.example.com"):
        with d.smtp() as client:
            client.ehlo()
            client.mail("alice@acme.example")
            code, text = client.rcpt(lookalike)
            assert (code, text[:6]) == (550, b"5.1.1 "), lookalike

    # With one good and one bad recipient, the message goes in once, for the good one.
    assert send(d.smtp_port, make_message(subject="Mixed"), recipients=[SUPPORT, "other@example.com"]) == {
        "other@example.com": (550, b"5.1.1 <other@example.com>: no such support address"),
    }
    rows = wait_for_tickets(cli, 1)
    assert [r["summary"] for r in rows] == ["Mixed"]
    assert len(inbox(cli)) == 1


# --- size -----------------------------------------------------------------------------------------


def test_size_is_advertised_and_enforced(daemon, cli, make_config):
    add_customer(cli)
    config = make_config("small.toml", smtp={"max_message_size": 20000})
    d = daemon(config)
    big = make_message(subject="Huge", body="x" * 70 + ("\n" + "y" * 70) * 400)  # ~29 KB
    assert len(big) > 20000

    with d.smtp() as client:
        client.ehlo()
        assert client.has_extn("size")
        assert client.esmtp_features["size"] == "20000"
        # Declared too big with SIZE=: refused at MAIL FROM.
        code, text = client.mail("alice@acme.example", [f"SIZE={len(big)}"])
        assert code == 552
        assert text.startswith(b"5.3.4 ")
        client.rset()
        # Not declared: refused after DATA, and the session goes on.
        assert client.mail("alice@acme.example")[0] == 250
        assert client.rcpt(SUPPORT)[0] == 250
        code, text = client.data(big)
        assert code == 552
        assert b"5.3.4" in text
        assert client.noop()[0] == 250
        # A message within the limit, declared with SIZE=, in the same session.
        small = make_message(subject="Small enough")
        assert client.mail("alice@acme.example", [f"SIZE={len(small)}"])[0] == 250
        assert client.rcpt(SUPPORT)[0] == 250
        assert client.data(small)[0] == 250

    rows = wait_for_tickets(cli, 1)
    assert [r["summary"] for r in rows] == ["Small enough"]
    assert [r["outcome"] for r in inbox(cli)] == ["ticket_created"]  # the big one left no record
    wait_for(lambda: spool_files(config.parent / "state") == EMPTY, message="an empty spool")


def test_size_limit_default_is_advertised(daemon):
    d = daemon()
    with d.smtp() as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "26214400"
        assert not client.has_extn("starttls")  # no certificate configured


# --- spool failure ----------------------------------------------------------------------------------


def test_451_when_the_spool_cannot_be_written_and_recovery_without_restart(daemon, cli, tmp_path):
    add_customer(cli)
    d = daemon()
    spool_tmp = tmp_path / "state" / "spool" / "tmp"
    shutil.rmtree(spool_tmp)
    spool_tmp.write_text("a file where the spool's tmp/ directory was")

    with d.smtp() as client:
        client.ehlo()
        assert client.mail("alice@acme.example")[0] == 250
        assert client.rcpt(SUPPORT)[0] == 250
        code, text = client.data(make_message(subject="Lost?"))
        assert code == 451
        assert text.startswith(b"4.3.0 ")
        assert client.noop()[0] == 250  # the session survives
    assert "Traceback" not in d.output()

    spool_tmp.unlink()
    spool_tmp.mkdir()
    assert send(d.smtp_port, make_message(subject="After repair")) == {}
    rows = wait_for_tickets(cli, 1)
    assert [r["summary"] for r in rows] == ["After repair"]
    assert len(inbox(cli)) == 1  # the refused one was never taken
    assert d.proc.poll() is None


def _open_data(c: LineClient) -> None:
    assert c.reply()[0] == 220
    assert c.command("EHLO client.example")[0] == 250
    assert c.command("MAIL FROM:<alice@acme.example>")[0] == 250
    assert c.command(f"RCPT TO:<{SUPPORT}>")[0] == 250
    assert c.command("DATA")[0] == 354


def test_a_big_body_goes_to_the_spool_as_it_arrives_and_is_taken_only_when_complete(daemon, cli, tmp_path):
    """The listener never holds a big message whole (issue 16): its body is written into tmp/
    while it arrives; new/ sees it, and the client 250, only once it is complete and fsynced."""
    add_customer(cli)
    d = daemon()
    spool = tmp_path / "state" / "spool"
    head = make_message(subject="Big").rstrip(b"\r\n") + b"\r\n"
    line = b"x" * 998 + b"\r\n"
    with LineClient(d.smtp_port) as c:
        _open_data(c)
        c.sock.sendall(head + line * 2000)  # 2 MB, not ended
        wait_for(lambda: sum(p.stat().st_size for p in (spool / "tmp").iterdir()) > 1_000_000,
                 message="the body in tmp/ while it arrives")
        assert list((spool / "new").iterdir()) == []
        c.sock.sendall(line * 10 + b".\r\n")
        assert c.reply()[0] == 250
    assert list((spool / "tmp").iterdir()) == []
    rows = wait_for_tickets(cli, 1)
    assert [r["summary"] for r in rows] == ["Big"]


def test_a_spool_that_fails_mid_body_gets_451_after_the_whole_body(daemon, cli, tmp_path):
    add_customer(cli)
    d = daemon()
    spool_tmp = tmp_path / "state" / "spool" / "tmp"
    head = make_message(subject="Half stored?").rstrip(b"\r\n") + b"\r\n"
    line = b"y" * 998 + b"\r\n"
    with LineClient(d.smtp_port) as c:
        _open_data(c)
        c.sock.sendall(head + line * 1000)
        wait_for(lambda: any(spool_tmp.iterdir()), message="the body in tmp/")
        shutil.rmtree(spool_tmp)  # the file being written is gone with it; its next piece fails
        spool_tmp.write_text("a file where the spool's tmp/ directory was")
        c.sock.sendall(line * 1000 + b".\r\n")
        code, text = c.reply()
        assert code == 451 and text[0].startswith("451 4.3.0")
        assert c.command("NOOP")[0] == 250  # the whole body was read: the session goes on
    spool_tmp.unlink()
    spool_tmp.mkdir()
    assert inbox(cli) == [] and list((tmp_path / "state" / "spool" / "new").iterdir()) == []
    assert d.proc.poll() is None


# --- LMTP -------------------------------------------------------------------------------------------


def test_lmtp_answers_data_once_per_accepted_recipient(daemon, cli, make_config):
    add_customer(cli)
    d = daemon(make_config("lmtp.toml", smtp={"lmtp": True}))
    assert "mailgate: LMTP on" in d.output()
    with LineClient(d.smtp_port) as c:
        code, _ = c.reply()
        assert code == 220
        assert c.command("EHLO client.example")[0] == 500
        assert c.command("HELO client.example")[0] == 500
        code, lines = c.command("LHLO client.example")
        assert code == 250
        assert any("SIZE" in line for line in lines)
        assert c.command("MAIL FROM:<alice@acme.example>")[0] == 250
        assert c.command(f"RCPT TO:<{SUPPORT}>") == (250, ["250 2.1.5 OK"])
        code, lines = c.command("RCPT TO:<other@example.com>")
        assert code == 550 and lines[0].startswith("550 5.1.1 ")
        assert c.command("RCPT TO:<support+x@example.com>")[0] == 250
        assert c.command("DATA")[0] == 354
        c.send_data(make_message(subject="Via LMTP"))
        replies = [c.reply(), c.reply()]
        assert replies == [(250, ["250 2.0.0 Message accepted"])] * 2
        # Nothing more is pending: the next reply is NOOP's own.
        assert c.command("NOOP") == (250, ["250 OK"])
        assert c.command("QUIT")[0] == 221
    rows = wait_for_tickets(cli, 1)
    assert [r["summary"] for r in rows] == ["Via LMTP"]
    assert len(inbox(cli)) == 1  # one message, whatever the number of recipients


def test_lmtp_refusals_after_data_come_once_per_recipient(daemon, cli, make_config, tmp_path):
    """A 552 (too big) or 451 (spool) after DATA is also one reply per recipient, or the LMTP
    client would wait for the missing ones and the dialog would go out of step."""
    add_customer(cli)
    d = daemon(make_config("lmtp.toml", smtp={"lmtp": True, "max_message_size": 20000}))
    big = make_message(subject="Huge", body=("y" * 70 + "\n") * 400)
    spool_tmp = tmp_path / "state" / "spool" / "tmp"
    with LineClient(d.smtp_port) as c:
        c.reply()
        c.command("LHLO client.example")
        for _ in range(2):
            assert c.command("MAIL FROM:<alice@acme.example>")[0] == 250
            assert c.command(f"RCPT TO:<{SUPPORT}>")[0] == 250
            assert c.command("RCPT TO:<support+two@example.com>")[0] == 250
            assert c.command("DATA")[0] == 354
            c.send_data(big)
            replies = [c.reply(), c.reply()]
            assert [code for code, _ in replies] == [552, 552]
            assert all(lines[0].startswith("552 5.3.4 ") for _, lines in replies)
            assert c.command("NOOP") == (250, ["250 OK"])

        shutil.rmtree(spool_tmp)
        spool_tmp.write_text("not a directory")
        assert c.command("MAIL FROM:<alice@acme.example>")[0] == 250
        assert c.command(f"RCPT TO:<{SUPPORT}>")[0] == 250
        assert c.command("RCPT TO:<support+two@example.com>")[0] == 250
        assert c.command("DATA")[0] == 354
        c.send_data(make_message(subject="Spool broken"))
        replies = [c.reply(), c.reply()]
        assert [lines[0][:9] for _, lines in replies] == ["451 4.3.0"] * 2
        assert c.command("NOOP") == (250, ["250 OK"])
    spool_tmp.unlink()
    spool_tmp.mkdir()
    assert spool_files(tmp_path / "state") == EMPTY  # nothing refused was kept
    assert inbox(cli) == []


# --- STARTTLS ---------------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_starttls_with_a_certificate(daemon, cli, make_config, certificate):
    add_customer(cli)
    cert, key = certificate
    d = daemon(make_config("tls.toml", smtp={"tls_cert": str(cert), "tls_key": str(key)}))
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with d.smtp() as client:
        client.ehlo()
        assert client.has_extn("starttls")
        code, _ = client.starttls(context=context)
        assert code == 220
        assert client.sock.version() is not None  # TLS is up
        client.ehlo()
        assert not client.has_extn("starttls")  # not twice
        assert client.sendmail("alice@acme.example", [SUPPORT], make_message(subject="Over TLS")) == {}
    rows = wait_for_tickets(cli, 1)
    assert [r["summary"] for r in rows] == ["Over TLS"]
    # Plain text still works too (STARTTLS is offered, not required).
    assert send(d.smtp_port, make_message(subject="In the clear")) == {}
    wait_for_tickets(cli, 2)


# --- the null sender ----------------------------------------------------------------------------------


def test_null_sender_is_accepted_and_ignored_as_machine_mail(daemon, cli):
    add_customer(cli)
    d = daemon()
    with d.smtp() as client:
        client.ehlo()
        assert client.mail("<>") == (250, b"OK")
        assert client.rcpt(SUPPORT)[0] == 250
        # From a known contact, without any other sign of machine mail: only the envelope says so.
        assert client.data(make_message(subject="Undeliverable: your mail"))[0] == 250
    rows = wait_for_inbox(cli, 1)
    assert [(r["outcome"], r["ticket"], r["error"]) for r in rows] == [
        ("ignored_auto", None, "machine mail: null-sender"),
    ]
    assert tickets(cli) == []
