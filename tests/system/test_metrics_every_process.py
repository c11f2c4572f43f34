"""Issue 14 (6): /metrics counts every message this instance processed, whichever process
took it — the daemon's worker processes and each `mailgate deliver` — in one bounded file.
Before, the counters lived in the daemon's memory and `deliver` was never counted."""

from __future__ import annotations

import re
import urllib.request

import pytest

from tests.support import add_customer, make_message, send, wait_for


def _metrics(d) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.http_port}/metrics", timeout=10) as r:
        return r.read().decode()


def _value(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.slow
def test_metrics_count_deliver_and_worker_processes(make_config, daemon, cli, cli_process):
    config = make_config("workers.toml", processing={"processes": 2})
    add_customer(lambda *a, **k: cli(*a, config=config, **k))
    # each its own short-lived process, as an MTA's pipe starts them
    assert cli_process("deliver", stdin=make_message(subject="Piped"), config=config).returncode == 0
    assert cli_process("deliver", stdin=make_message(sender="Eve <eve@evil.example>"), config=config).returncode == 0
    d = daemon(config)
    for n in range(2):  # processed by the daemon's worker processes
        assert send(d.smtp_port, make_message(subject=f"Over SMTP {n}")) == {}
    text = wait_for(lambda: (m := _metrics(d)) and _value(m, 'mailgate_messages_total{outcome="ticket_created"}') == 3
                    and m, message="three tickets counted")
    assert _value(text, 'mailgate_messages_total{outcome="rejected_unknown_sender"}') == 1
    assert _value(text, "mailgate_processing_seconds_count") == 4
    assert _value(text, 'mailgate_processing_seconds_bucket{le="+Inf"}') == 4
    assert _value(text, "mailgate_processing_seconds_sum") > 0
    assert d.stop() == 0
    # bounded: one file for the counts and its lock, however many processes counted
    state = config.parent / "state"
    assert sorted(p.name for p in state.iterdir() if p.name.startswith(("metrics", ".metrics"))) == [
        "metrics.json", "metrics.lock"]
