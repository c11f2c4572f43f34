"""The command-line contract of SPEC §9: shapes, errors, and the operator's inbox."""

import json

import pytest

from tests.support import make_message


def _json(result):
    code, out, err = result
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def acme(cli):
    assert cli("org", "add", "Acme", "--region", "eu")[0] == 0
    assert cli("contact", "add", "Alice@Acme.example", "--name", "Alice Adams", "--org", "Acme")[0] == 0
    return cli


def test_ticket_list_and_show_shapes(acme):
    raw = make_message(subject="Re: AW: [SD-9] Printer on fire", body="It smokes.")
    assert _json(acme("deliver", "--json", stdin=raw)) == {"outcome": "ticket_created", "ticket": "SD-1"}
    assert _json(acme("ticket", "list", "--json")) == [{
        "key": "SD-1", "summary": "Printer on fire", "type": "request", "status": "opened",
        "creator": "alice@acme.example", "organisation": "Acme",
    }]
    shown = _json(acme("ticket", "show", "SD-1", "--json"))
    assert set(shown) == {"key", "type", "status", "priority", "summary", "description", "creator",
                          "organisation", "shared", "confidential", "follow_up_of", "created_at",
                          "updated_at", "comments", "attachments", "subscriptions"}
    assert shown["shared"] is True and shown["confidential"] is False and shown["priority"] is None
    assert shown["created_at"].endswith("+00:00")


def test_inbox_list_shape_and_duplicate_points_at_the_original(acme):
    raw = make_message(message_id="<one@acme.example>")
    acme("deliver", stdin=raw)
    assert _json(acme("deliver", "--json", stdin=raw)) == {"outcome": "duplicate", "ticket": "SD-1"}
    rows = _json(acme("inbox", "list", "--json"))
    assert [(r["id"], r["message_id"], r["sender"], r["outcome"], r["ticket"]) for r in rows] == [
        (1, "<one@acme.example>", "alice@acme.example", "ticket_created", "SD-1"),
        (2, "<one@acme.example>", "alice@acme.example", "duplicate", "SD-1"),
    ]
    assert set(rows[0]) == {"id", "message_id", "sender", "outcome", "ticket", "received_at", "error"}


def test_reprocess_after_the_contact_was_added(acme):
    raw = make_message(sender="Bob <bob@acme.example>")
    assert _json(acme("deliver", "--json", stdin=raw))["outcome"] == "rejected_unknown_sender"
    assert acme("contact", "add", "bob@acme.example", "--name", "Bob", "--org", "Acme")[0] == 0
    code, out, _ = acme("inbox", "reprocess", "1")
    assert code == 0 and "ticket_created SD-1" in out
    assert _json(acme("inbox", "list", "--json"))[0]["outcome"] == "ticket_created"
    code, _, err = acme("inbox", "reprocess", "1")
    assert code == 1 and "nothing to reprocess" in err


def test_disabled_contact_cannot_open_tickets(acme):
    assert acme("contact", "disable", "alice@acme.example")[0] == 0
    assert _json(acme("deliver", "--json", stdin=make_message()))["outcome"] == "rejected_unknown_sender"


@pytest.mark.parametrize("args, message", [
    (("org", "add", "Acme"), "exists already"),
    (("contact", "add", "alice@acme.example", "--name", "A", "--org", "Acme"), "exists already"),
    (("contact", "add", "new@acme.example", "--name", "N", "--org", "Nowhere"), "no organisation 'Nowhere'"),
    (("contact", "add", "not-an-address", "--name", "N", "--org", "Acme"), "not an e-mail address"),
    (("contact", "disable", "nobody@acme.example"), "no contact"),
    (("ticket", "show", "SD-404"), "no ticket SD-404"),
    (("inbox", "reprocess", "99"), "no inbound message 99"),
])
def test_bad_input_is_one_line_and_non_zero(acme, args, message):
    code, _, err = acme(*args)
    assert code == 1, (args, code)  # SPEC §9: 1 for a wrong name, key or address
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_unknown_language_is_a_usage_error(acme):
    code, _, err = acme("contact", "add", "x@acme.example", "--name", "X", "--org", "Acme", "--language", "fr")
    assert code == 64 and "invalid choice" in err


def test_contact_import_is_idempotent_and_reports_lines(cli, tmp_path):
    csv = tmp_path / "contacts.csv"
    csv.write_text(
        "email,name,organisation,language,active\n"
        "anna@initech.example,Anna,Initech,de,true\n"
        "ben@initech.example,Ben,Initech,en,\n"
        "broken,Nobody,Initech,en,true\n"
        "carl@umbrella.example,Carl,Umbrella,fr,true\n"
    )
    code, out, _ = cli("contact", "import", str(csv), "--create-orgs")
    assert code == 0
    assert "created 2, updated 0, unchanged 0, rejected 2" in out
    assert "line 4: rejected" in out and "line 5: rejected" in out
    code, out, _ = cli("contact", "import", str(csv), "--create-orgs")
    assert "created 0, updated 0, unchanged 2, rejected 2" in out
    csv.write_text("email,name,organisation,language,active\nanna@initech.example,Anna B.,Initech,de,false\n")
    code, out, _ = cli("contact", "import", str(csv))
    assert "created 0, updated 1" in out

