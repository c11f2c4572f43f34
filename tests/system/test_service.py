"""Running as a service (issue #6): systemd notification and watchdog, signals, health and
metrics over real HTTP, the unit file, and two instances on one PostgreSQL database. All but
the last are about the process, not the database (`one_database`: the SQLite pass runs them)."""

from __future__ import annotations

import configparser
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import TEST_DB
from tests.relay import RelaySink
from tests.support import (
    REPO, DaemonProcess, LineClient, add_customer, make_message, send, wait_for, write_config,
)

UNIT = REPO / "systemd" / "mailgate.service"


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# --- systemd -------------------------------------------------------------------------------------


class NotifySocket:
    """The socket systemd listens on for sd_notify, in a temp dir."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (socket.timeout, OSError):
                continue

    def states(self) -> list[str]:
        return [line for m in list(self.messages) for line in m.splitlines()]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.mark.one_database
def test_ready_watchdog_and_stopping(tmp_path, config_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        d = DaemonProcess(config_path, env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"}).start()
        wait_for(lambda: "READY=1" in notify.states(), message="READY=1")
        wait_for(lambda: notify.states().count("WATCHDOG=1") >= 3, message="watchdog pings")
        assert not any(s.startswith("STOPPING") for s in notify.states())
        assert d.stop() == 0
        assert "STOPPING=1" in notify.states()
        states = notify.states()
        assert states.index("READY=1") < states.index("STOPPING=1")
    finally:
        notify.close()


@pytest.mark.one_database
def test_unit_file_has_what_the_operator_needs():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(UNIT)
    service = unit["Service"]
    assert service["Type"] == "notify" and int(service["WatchdogSec"]) > 0
    assert service["User"] == "mailgate" and service["StateDirectory"] == "mailgate"
    assert service["ConfigurationDirectory"] == "mailgate"
    for key, value in {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "ExecReload": "/bin/kill -HUP $MAINPID"}.items():
        assert service[key] == value, key
    assert " serve" in service["ExecStart"] and "--config" in service["ExecStart"]


@pytest.mark.one_database
@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_unit_file_verifies(tmp_path):
    mailgate = Path(sys.executable).parent / "mailgate"
    text = UNIT.read_text().replace("/opt/mailgate/.venv/bin/mailgate", str(mailgate))
    unit = tmp_path / "mailgate.service"
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "mailgate.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


# --- signals -------------------------------------------------------------------------------------


@pytest.mark.one_database
def test_sigterm_refuses_new_connections_with_421_and_finishes_the_message_in_hand(daemon, cli, config_path):
    add_customer(cli)
    d = daemon()
    with LineClient(d.smtp_port) as busy:
        busy.reply()
        busy.command("EHLO client.example")
        busy.command("MAIL FROM:<alice@acme.example>")
        busy.command("RCPT TO:<support@example.com>")
        assert busy.command("DATA")[0] == 354
        d.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "new connections get 421" in d.output(), message="shutdown begun")
        with LineClient(d.smtp_port) as late:
            code, lines = late.reply()
        assert code == 421 and "4.3.2" in lines[0]
        busy.send_data(make_message(subject="Handed over during shutdown"))
        assert busy.reply()[0] == 250
    assert d.proc.wait(30) == 0
    d2 = daemon()
    rows = wait_for(lambda: json.loads(cli("ticket", "list", "--json")[1]), message="the message processed")
    assert [r["summary"] for r in rows] == ["Handed over during shutdown"]
    assert d2.stop() == 0


@pytest.mark.one_database
def test_sighup_reloads_what_can_change(tmp_path, daemon, cli, config_path, make_config):
    add_customer(cli)
    d = daemon()
    assert make_config(tickets={"support_addresses": ["support@example.com", "help@example.com"]}) == config_path
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in d.output(), message="reload")
    assert send(d.smtp_port, make_message(), recipients=["help@example.com"]) == {}
    config_path.write_text("[smtp\nbroken")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in d.output(), message="refused reload")
    assert send(d.smtp_port, make_message(subject="Still running")) == {}
    assert d.stop() == 0


# --- health and metrics --------------------------------------------------------------------------


@pytest.mark.one_database
def test_healthz_and_metrics_over_http(daemon, cli, config_path):
    add_customer(cli)
    d = daemon()
    status, body = _get(d.http_port, "/healthz")
    health = json.loads(body)
    assert status == 200 and health["database"] == "ok" and health["spool"] == "ok"
    send(d.smtp_port, make_message(subject="One"))
    send(d.smtp_port, make_message(subject="Two", sender="Eve <eve@evil.example>"))
    wait_for(lambda: len(json.loads(cli("inbox", "list", "--json")[1])) == 2, message="two processed")

    def metrics() -> str:
        return _get(d.http_port, "/metrics")[1].decode()

    text = wait_for(lambda: (m := metrics()) and 'outcome="rejected_unknown_sender"' in m
                    and "mailgate_spool_depth 0.0" in m and m, message="metrics")
    assert 'mailgate_messages_total{outcome="ticket_created"} 1.0' in text
    assert 'mailgate_messages_total{outcome="rejected_unknown_sender"} 1.0' in text
    assert "mailgate_processing_seconds_count 2.0" in text
    assert "mailgate_spool_depth 0.0" in text
    assert 'mailgate_outbox_depth{status="queued"}' in text or 'mailgate_outbox_depth{status="sent"}' in text
    assert "mailgate_send_failures_total" in text or "mailgate_send_failures" in text


@pytest.mark.one_database
def test_healthz_fails_when_the_spool_cannot_be_written(daemon, config_path):
    d = daemon()
    tmp = config_path.parent / "state" / "spool" / "tmp"
    shutil.rmtree(tmp)
    tmp.write_text("in the way")
    status, body = _get(d.http_port, "/healthz")
    assert status == 503 and json.loads(body)["spool"] == "failing"
    tmp.unlink()
    tmp.mkdir()
    assert _get(d.http_port, "/healthz")[0] == 200


# --- several instances -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(TEST_DB != "postgresql", reason="several instances share a PostgreSQL database")
def test_two_instances_on_one_database(tmp_path, database_url, cli):
    relay = RelaySink().start()
    try:
        configs = [write_config(tmp_path / f"i{n}.toml", tmp_path / f"state{n}", database_url, {
            # the loop guard at its defaults: one organisation's busy hour loses and delays nothing
            "outbound": relay.config(poll_seconds=0.2), "policy": {"max_new_tickets_per_sender_per_hour": 0},
            "storage": {"attachments_dir": str(tmp_path / "shared-attachments")},
        }) for n in (1, 2)]
        add_customer(lambda *a, **k: cli(*a, config=configs[0], **k))
        cli("contact", "add", "carol@acme.example", "--name", "Carol", "--org", "Acme", config=configs[0])
        instances = [DaemonProcess(c).start() for c in configs]
        try:
            _load_two(instances, relay, cli, configs[0])
        finally:
            for d in instances:
                d.stop()
    finally:
        relay.stop()


def _load_two(instances, relay, cli, config) -> None:
    per_client = 50  # 200 mails: 200 announcements each to alice and carol within minutes
    errors: list = []

    def client(n: int) -> None:
        try:
            for i in range(per_client):
                raw = make_message(subject=f"Client {n} message {i}", message_id=f"<two-{n}-{i}@acme.example>")
                for d in instances if i % 5 == 0 else [instances[n % 2]]:  # every 5th reaches both
                    send(d.smtp_port, raw)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    expected = 4 * per_client
    rows = wait_for(lambda: (r := json.loads(cli("inbox", "list", "--json", config=config)[1]))
                    and sum(x["outcome"] == "ticket_created" for x in r) == expected and r,
                    timeout=120, interval=0.2, message="all processed")
    assert len(rows) == expected + 4 * (per_client // 5)  # the copies sent to both: duplicates
    assert sum(r["outcome"] == "duplicate" for r in rows) == 4 * (per_client // 5)
    tickets = json.loads(cli("ticket", "list", "--json", config=config)[1])
    keys = [t["key"] for t in tickets]
    assert len(keys) == expected and len(set(keys)) == expected
    # Every new ticket is announced to alice (creator) and carol (colleague): once each.
    wait_for(lambda: len(relay.received) >= 2 * expected, timeout=120, interval=0.2, message="notifications sent")
    counts = relay.message_ids()
    assert len(counts) == 2 * expected and set(counts.values()) == {1}
    outbox = json.loads(cli("outbox", "list", "--json", config=config)[1])
    assert {r["status"] for r in outbox} == {"sent"}  # none failed, none held back by the loop guard
