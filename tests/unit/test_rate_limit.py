"""The per-sender limit on new tickets (SPEC §4.4): kept as rate_limited, reprocessable."""

import json

from tests.support import make_message


def test_rate_limited_then_reprocessed(make_config, cli):
    tight = make_config("tight.toml", policy={"max_new_tickets_per_sender_per_hour": 2})
    loose = make_config("loose.toml", policy={"max_new_tickets_per_sender_per_hour": 0})
    cli("org", "add", "Acme", config=tight)
    cli("contact", "add", "alice@acme.example", "--name", "Alice", "--org", "Acme", config=tight)
    outcomes = [json.loads(cli("deliver", "--json", stdin=make_message(subject=f"Issue {i}"), config=tight)[1])["outcome"]
                for i in range(3)]
    assert outcomes == ["ticket_created", "ticket_created", "rate_limited"]
    reply = make_message(subject="Re: [SD-1] Issue 0", body="More detail.")
    assert json.loads(cli("deliver", "--json", stdin=reply, config=tight)[1])["outcome"] == "comment_added"
    code, out, _ = cli("inbox", "reprocess", "3", config=tight)
    assert code == 0 and "rate_limited" in out
    code, out, _ = cli("inbox", "reprocess", "3", config=loose)
    assert code == 0 and "ticket_created SD-3" in out
