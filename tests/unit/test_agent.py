"""Agent actions through the CLI (SPEC §9) and the status rules of SPEC §4.7 and the guide."""

import json

import pytest

from mailgate import config as config_module
from mailgate.app import App
from tests import world
from tests.support import make_message


@pytest.fixture
def desk(config_path, cli):
    app = App(config_module.load(config_path)).prepare()
    world.build(app)
    app.db.dispose()
    return cli


def _show(cli, key="SD-1"):
    code, out, err = cli("ticket", "show", key, "--json")
    assert code == 0, err
    return json.loads(out)


def test_public_and_internal_comments(desk):
    assert desk("ticket", "comment", "SD-1", "--agent", "sam", "--body", "We are on it.")[0] == 0
    assert desk("ticket", "comment", "SD-1", "--agent", "sam", "--body", "Customer is grumpy", "--internal")[0] == 0
    comments = _show(desk)["comments"]
    assert [(c["author"], c["body"], c["internal"]) for c in comments[-2:]] == [
        ("agent:sam", "We are on it.", False), ("agent:sam", "Customer is grumpy", True)]


def test_type_status_priority_rules(desk):
    code, _, err = desk("ticket", "set", "SD-1", "--priority", "P2")
    assert code == 1 and "priority belongs to incidents and defects" in err
    assert desk("ticket", "set", "SD-1", "--type", "software_defect", "--priority", "P2", "--status", "in_progress")[0] == 0
    shown = _show(desk)
    assert (shown["type"], shown["priority"], shown["status"]) == ("software_defect", "P2", "in_progress")
    assert desk("ticket", "set", "SD-1", "--type", "consulting_request")[0] == 0
    assert _show(desk)["priority"] is None


@pytest.mark.parametrize("args, message", [
    (("--status", "done"), "unknown status 'done'"),
    (("--type", "bug"), "unknown type 'bug'"),
    (("--type", "incident", "--priority", "P9"), "unknown priority 'P9'"),
    ((), "nothing to set"),
])
def test_unknown_values_are_one_line_errors(desk, args, message):
    code, _, err = desk("ticket", "set", "SD-1", *args)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1


def test_closed_is_final(desk):
    assert desk("ticket", "set", "SD-1", "--status", "closed")[0] == 0
    code, _, err = desk("ticket", "set", "SD-1", "--status", "in_review")
    assert code == 1 and "closed is final" in err
    code, _, err = desk("ticket", "comment", "SD-1", "--agent", "sam", "--body", "late")
    assert code == 1 and "closed is final" in err


def test_clarification_answered_returns_to_previous_status(desk):
    desk("ticket", "set", "SD-1", "--status", "estimation_in_progress")
    desk("ticket", "set", "SD-1", "--status", "clarification")
    reply = make_message(subject="Re: [SD-1] Login page shows error 500", body="Here are the logs.")
    assert desk("deliver", stdin=reply)[0] == 0
    assert _show(desk)["status"] == "estimation_in_progress"


@pytest.mark.parametrize("body, status", [
    ("Please close.", "closed"), ("bitte schließen!", "closed"), ("CLOSE", "closed"),
    ("Kann geschlossen werden.", "closed"), ("Still broken, sorry.", "in_review"),
    ("Thanks!\nPlease close.", "in_review"),
    # the courtesy around a confirmation, and a salutation line above it, say nothing either way
    ("Thanks, please close.", "closed"), ("Please close it, thank you!", "closed"),
    ("Danke, kann geschlossen werden.", "closed"), ("Hi,\n\nplease close the ticket.\n\nRegards, Alice", "closed"),
    ("Hallo Service-Team,\nbitte schließen.", "closed"),
    ("Thanks, but do not close it yet.", "in_review"), ("Please do not close.", "in_review"),
    ("Hi,\nit still fails.", "in_review"),
])
def test_resolved_reply_closes_or_reopens(desk, body, status):
    desk("ticket", "set", "SD-1", "--status", "resolved")
    reply = make_message(subject="Re: [SD-1] Login page shows error 500", body=body)
    desk("deliver", stdin=reply)
    assert _show(desk)["status"] == status


def test_reading_a_close_confirmation_is_bounded_whatever_the_text():
    import time

    from mailgate.tickets import closing

    hostile = [("Hi, " + "please, " * 100_000 + "close\n") * 30, "\n" * 20_000_000 + "close", "close " * 4_000_000]
    started = time.process_time()
    assert not any(closing.confirms(text, ["close"]) for text in hostile)
    assert time.process_time() - started < 0.5


def test_reply_to_closed_ticket_opens_a_follow_up(desk):
    desk("ticket", "set", "SD-1", "--status", "closed")
    reply = make_message(subject="Re: [SD-1] Login page shows error 500", body="It is back.")
    code, out, _ = desk("deliver", "--json", stdin=reply)
    assert json.loads(out) == {"outcome": "ticket_created", "ticket": "SD-3"}
    follow_up = _show(desk, "SD-3")
    assert follow_up["follow_up_of"] == "SD-1" and follow_up["summary"] == "Login page shows error 500"
    assert _show(desk)["status"] == "closed"
