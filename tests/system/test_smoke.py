"""A newcomer's first minutes: the README walk-through, through the real CLI and SMTP."""

import json

from tests.support import make_message, send, wait_for


def test_walkthrough_org_contact_mail_ticket(daemon, cli_process):
    assert cli_process("org", "add", "Acme").returncode == 0
    assert cli_process("contact", "add", "alice@acme.example", "--name", "Alice Adams", "--org", "Acme").returncode == 0
    d = daemon()
    assert send(d.smtp_port, make_message(subject="Printer on fire", body="It smokes.")) == {}

    def tickets():
        out = cli_process("ticket", "list", "--json")
        return json.loads(out.stdout)

    rows = wait_for(tickets, message="the ticket")
    assert rows == [{"key": "SD-1", "summary": "Printer on fire", "type": "request", "status": "opened",
                     "creator": "alice@acme.example", "organisation": "Acme"}]
    shown = json.loads(cli_process("ticket", "show", "SD-1", "--json").stdout)
    assert shown["description"] == "It smokes."
    assert d.stop() == 0


def test_embedded_defaults_with_no_config(tmp_path):
    """`mailgate serve` with no config file: SQLite and state under ./var, SMTP on
    127.0.0.1:8025, HTTP on 127.0.0.1:8080, and it says so."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MAILGATE_CONFIG"}
    proc = subprocess.Popen([sys.executable, "-m", "mailgate", "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("mailgate: state in"):
                break
        assert "mailgate: SMTP on 127.0.0.1:8025\n" in lines, lines
        assert "mailgate: HTTP on 127.0.0.1:8080\n" in lines, lines
        assert (tmp_path / "var" / "mailgate.db").is_file() and (tmp_path / "var" / "spool" / "new").is_dir()
        send(8025, make_message(sender="Nobody <nobody@example.org>"))
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
