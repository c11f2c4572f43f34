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
