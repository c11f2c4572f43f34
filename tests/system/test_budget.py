"""The budget of every message (SPEC §4.2, issue 13): a real `mailgate serve` with its default
worker process, and `mailgate deliver`, against "a library bug next year" — the `hang`
failpoint (a regular expression that never ends, holding the GIL) and the `hog` failpoint
(memory without end). The message is quarantined within seconds with its record and its
Message-ID, the mail behind it goes through, and no process is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mailgate.core.budget import cpu_seconds
from tests.support import (
    SUPPORT, add_customer, alive, children_of, cli_json, make_message, send, wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.one_database]

ONE_WORKER = {"processes": 1}  # the default of a real config; the budget is held in worker processes
BUDGET = {"processing": {**ONE_WORKER, "budget_seconds": 1.0}}


def _failpoints(*items: str) -> dict:
    return {"MAILGATE_FAILPOINTS": ",".join(items)}


def _inbound(cli, message_id: str) -> dict | None:
    return next((r for r in cli_json(cli, "inbox", "list") if r["message_id"] == message_id), None)


def _ticket_for(cli, subject: str) -> dict | None:
    return next((t for t in cli_json(cli, "ticket", "list") if t["summary"] == subject), None)


def _one_worker(d) -> int:
    return wait_for(lambda: len(kids := children_of(d.proc.pid)) == 1 and kids[0], message="the worker")


def test_a_message_that_hangs_its_worker_is_quarantined_and_the_next_mail_goes_through(make_config, daemon, cli):
    add_customer(cli)
    d = daemon(make_config(**BUDGET), env=_failpoints("parse=hang:HANGS"))
    first = _one_worker(d)
    started = time.monotonic()
    assert send(d.smtp_port, make_message(subject="HANGS", message_id="<hangs@acme.example>")) == {}
    assert send(d.smtp_port, make_message(subject="Right behind it", message_id="<behind@acme.example>")) == {}
    record = wait_for(lambda: _inbound(cli, "<hangs@acme.example>"), timeout=20, message="the hanging message recorded")
    assert record["outcome"] == "quarantined"
    assert record["error"] == "over the processing budget: more than 1 CPU seconds"
    wait_for(lambda: _ticket_for(cli, "Right behind it"), timeout=20, message="the next mail a ticket")
    assert time.monotonic() - started < 30, d.output()  # mostly starting a new worker (imports)
    assert first not in children_of(d.proc.pid) and not alive(first)  # killed, and replaced
    assert d.output().count("over the processing budget") >= 1
    assert "attempt 1 of" not in d.output()  # quarantined at once, not retried
    assert d.stop() == 0


def test_the_daemon_answers_while_a_worker_is_stuck_in_a_message(make_config, daemon, cli):
    """Processing runs in a worker process: a message stuck in C holds neither the daemon's
    event loop (HTTP, the listener, the sender) nor anything else while its budget runs out."""
    add_customer(cli)
    d = daemon(make_config(processing={**ONE_WORKER, "budget_seconds": 3.0}), env=_failpoints("parse=hang:HANGS"))
    worker = _one_worker(d)
    spent = cpu_seconds(worker)
    assert send(d.smtp_port, make_message(subject="HANGS", message_id="<stuck@acme.example>")) == {}
    wait_for(lambda: (cpu_seconds(worker) or 0) - spent > 0.5, message="the worker stuck in the message")
    for path in ("/healthz", "/metrics"):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{d.http_port}{path}", timeout=10).close()
        except urllib.error.HTTPError:  # an answer all the same (/healthz may be 503)
            pass
    assert send(d.smtp_port, make_message(subject="Taken meanwhile", message_id="<meanwhile@acme.example>")) == {}
    # answered while the worker still spins (it is killed once its budget is spent)
    assert alive(worker), "the worker was no longer stuck: nothing was shown"
    record = wait_for(lambda: _inbound(cli, "<stuck@acme.example>"), timeout=30, message="the stuck message recorded")
    assert record["outcome"] == "quarantined"
    wait_for(lambda: _ticket_for(cli, "Taken meanwhile"), timeout=30, message="the mail taken meanwhile a ticket")
    assert d.stop() == 0


def test_a_message_that_eats_memory_is_quarantined_at_once(make_config, daemon, cli):
    add_customer(cli)
    d = daemon(make_config(processing=ONE_WORKER), env=_failpoints("parse=hog:HOGS"))
    worker = _one_worker(d)
    assert send(d.smtp_port, make_message(subject="HOGS", message_id="<hogs@acme.example>")) == {}
    record = wait_for(lambda: _inbound(cli, "<hogs@acme.example>"), timeout=20, message="the hog recorded")
    assert (record["outcome"], record["error"]) == ("quarantined", "over the processing budget: out of memory")
    assert send(d.smtp_port, make_message(subject="After the hog", message_id="<after@acme.example>")) == {}
    wait_for(lambda: _ticket_for(cli, "After the hog"), timeout=20, message="the next mail a ticket")
    # The worker that ran out of memory made way for a fresh one (its freed memory stays
    # fragmented); nothing was counted against a message for it.
    assert children_of(d.proc.pid) != [worker] and len(children_of(d.proc.pid)) == 1
    assert "ran out of memory; a fresh one takes over" in d.output() and "exited with" not in d.output()
    assert "attempt 1 of" not in d.output()
    assert d.stop() == 0


def test_the_largest_message_the_listener_takes_fits_the_budget(make_config, daemon, cli):
    """The memory budget stops a runaway, never a message the listener accepted: one attachment
    filling the default size limit (25 MiB, base64) becomes a ticket with its file, in a worker."""
    import email.policy
    from email.message import EmailMessage

    add_customer(cli)
    d = daemon(make_config(processing=ONE_WORKER))
    _one_worker(d)
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "Alice Adams <alice@acme.example>", SUPPORT, "The big log"
    message["Message-ID"] = "<big-log@acme.example>"
    message.set_content("The log is attached.")
    message.add_attachment(os.urandom(18_900_000), maintype="application", subtype="octet-stream",
                           filename="printer.log")
    raw = message.as_bytes(policy=email.policy.SMTP)
    assert 25_000_000 < len(raw) <= 26_214_400  # just under smtp.max_message_size
    assert send(d.smtp_port, raw) == {}
    record = wait_for(lambda: _inbound(cli, "<big-log@acme.example>"), timeout=60, message="the big mail recorded")
    assert record["outcome"] == "ticket_created", record
    ticket = cli_json(cli, "ticket", "show", record["ticket"])
    assert [(a["filename"], a["size"]) for a in ticket["attachments"]] == [("printer.log", 18_900_000)]
    assert d.stop() == 0


@pytest.mark.parametrize("failpoint, error", [
    ("parse=hang", "over the processing budget: more than 1 CPU seconds"),
    ("parse=hog", "over the processing budget: out of memory"),
])
def test_deliver_holds_each_message_to_the_budget(make_config, cli, failpoint, error):
    add_customer(cli)
    config = make_config("budget.toml", **BUDGET)
    started = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "mailgate", "--config", str(config), "deliver", "--json",
                        "--sender", "alice@acme.example", "--recipient", SUPPORT],
                       input=make_message(message_id="<piped@acme.example>"), capture_output=True, timeout=60,
                       env={**os.environ, **_failpoints(failpoint)})
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"outcome": "quarantined", "ticket": None}
    assert time.monotonic() - started < 30
    record = _inbound(cli, "<piped@acme.example>")
    assert (record["outcome"], record["error"]) == ("quarantined", error)


def test_workers_run_the_installed_package_not_one_in_the_current_directory(make_config, daemon, cli, tmp_path):
    """A `mailgate` package in the working directory (the service's is its state directory)
    must not be what the workers import."""
    add_customer(cli)
    trap = tmp_path / "cwd"
    (trap / "mailgate" / "serve").mkdir(parents=True)
    for init in (trap / "mailgate" / "__init__.py", trap / "mailgate" / "serve" / "__init__.py"):
        init.write_text("raise SystemExit('imported mailgate from the current directory')\n")
    (trap / "mailgate" / "serve" / "workers.py").write_text("raise SystemExit('the wrong workers')\n")
    entry = Path(sys.executable).parent / "mailgate"  # the console script: no cwd on sys.path
    proc = subprocess.Popen([str(entry), "--config", str(make_config(processing=ONE_WORKER)), "serve"], cwd=trap,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_port(proc)
        port = int(next(line for line in proc.lines if "SMTP on" in line).rsplit(":", 1)[1])
        assert send(port, make_message(subject="From the right code")) == {}
        wait_for(lambda: _ticket_for(cli, "From the right code"), timeout=30, message="a ticket")
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert "current directory" not in out and "wrong workers" not in out, out


def _wait_for_port(proc) -> None:
    proc.lines = []

    def announced():
        line = proc.stdout.readline()
        proc.lines.append(line)
        return "SMTP on" in line or proc.poll() is not None

    wait_for(announced, timeout=30, message="the listener")
    assert proc.poll() is None, "".join(proc.lines)


def test_a_stuck_worker_ends_with_the_daemon(make_config, daemon, cli):
    """Stuck in C (no budget to stop it here), it reads no EOF and handles no SIGTERM: SIGTERM
    still ends the daemon within its bounds with no child left; SIGKILL of the daemon ends it
    too (it dies with its parent)."""
    add_customer(cli)
    config = make_config(processing={**ONE_WORKER, "budget_seconds": 600.0})
    for stop in ("term", "kill"):
        d = daemon(config, env=_failpoints("parse=hang:STUCK"))
        worker = _one_worker(d)
        assert send(d.smtp_port, make_message(subject="STUCK", message_id=f"<stuck-{stop}@acme.example>")) == {}
        wait_for(lambda: _cpu(worker) > 0.5, timeout=20, message="the worker stuck")
        started = time.monotonic()
        if stop == "term":
            assert d.stop(timeout=40) == 0
            assert time.monotonic() - started < 30  # the bounds add up below TimeoutStopSec (45 s)
        else:
            d.kill()
        wait_for(lambda: not alive(worker), timeout=10, message="the stuck worker gone")


def _cpu(pid: int) -> float:
    from mailgate.core.budget import cpu_seconds

    return cpu_seconds(pid) or 0.0
