"""Crash safety under load (issue #7): `serve` is killed with SIGKILL again and again while
several clients send mail and retry on 4xx or a broken connection, as an MTA would. Every
message that got `250` must end as exactly one ticket or comment, and no notification may be
queued twice."""

from __future__ import annotations

import json
import smtplib
import socket
import threading
from collections import Counter

import pytest

from tests.support import DaemonProcess, make_message, wait_for

CLIENTS = 4
MESSAGES_PER_CLIENT = 30
KILLS = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Client(threading.Thread):
    """Sends its messages one by one, each until it gets 250 (reconnecting when needed)."""

    def __init__(self, n: int, port: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.n, self.port, self.stop = n, port, stop
        self.acknowledged: list[str] = []
        self.errors = 0

    def messages(self):
        for i in range(MESSAGES_PER_CLIENT):
            mid = f"<kill-{self.n}-{i}@acme.example>"
            if i % 3 == 2:  # a reply to this client's first ticket, found by its Message-ID
                raw = make_message(subject="More", body=f"Reply {i}.", message_id=mid,
                                   extra_headers={"In-Reply-To": f"<kill-{self.n}-0@acme.example>"})
            else:
                raw = make_message(subject=f"Client {self.n} issue {i}", body=f"Body {i}.", message_id=mid)
            yield mid, raw

    def run(self) -> None:
        client = None
        for mid, raw in self.messages():
            while not self.stop.is_set():
                try:
                    if client is None:
                        wait_for(lambda: _accepting(self.port), timeout=60, interval=0.05, message="listener")
                        client = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
                    client.sendmail("alice@acme.example", ["support@example.com"], raw)
                    self.acknowledged.append(mid)
                    break
                except (smtplib.SMTPException, OSError):
                    self.errors += 1  # 4xx, or the server died under us: retry like an MTA
                    client = None
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                pass


@pytest.mark.slow
@pytest.mark.parametrize("processes", [0, 2], ids=["in-daemon", "worker-processes"])
def test_sigkill_under_load_loses_and_duplicates_nothing(make_config, cli, processes):
    port = _free_port()
    config = make_config("kill.toml", smtp={"port": port}, processing={"threads": 2, "processes": processes},
                         policy={"max_new_tickets_per_sender_per_hour": 0})
    cli("org", "add", "Acme", config=config)
    cli("contact", "add", "alice@acme.example", "--name", "Alice Adams", "--org", "Acme", config=config)
    # Carol hears of every new ticket of her organisation: one notification per ticket.
    cli("contact", "add", "carol@acme.example", "--name", "Carol Clark", "--org", "Acme", config=config)
    daemon = DaemonProcess(config).start()
    try:
        _load_and_kill(daemon, port, config, cli)
    finally:
        daemon.kill()


def _load_and_kill(daemon: DaemonProcess, port: int, config, cli) -> None:
    stop = threading.Event()
    clients = [Client(n, port, stop) for n in range(CLIENTS)]
    for c in clients:
        c.start()
    total = CLIENTS * MESSAGES_PER_CLIENT
    try:
        for k in range(1, KILLS + 1):
            acked = lambda: sum(len(c.acknowledged) for c in clients)  # noqa: E731
            wait_for(lambda: acked() >= total * k // (KILLS + 1), timeout=120, message=f"load before kill {k}")
            daemon.kill()
            daemon.start()
        for c in clients:
            c.join(180)
        assert not any(c.is_alive() for c in clients)
    finally:
        stop.set()

    acknowledged = [mid for c in clients for mid in c.acknowledged]
    assert len(acknowledged) == total

    def inbox():
        return json.loads(cli("inbox", "list", "--json", config=config)[1])

    def all_processed():
        rows = inbox()
        done = {r["message_id"] for r in rows if r["outcome"] in ("ticket_created", "comment_added")}
        return rows if done >= set(acknowledged) else None

    rows = wait_for(all_processed, timeout=120, interval=0.2, message="every acknowledged message processed")
    daemon.stop()

    firsts = Counter(r["message_id"] for r in rows if r["outcome"] in ("ticket_created", "comment_added"))
    assert all(firsts[mid] == 1 for mid in acknowledged), [m for m in acknowledged if firsts[m] != 1]
    assert {r["outcome"] for r in rows} <= {"ticket_created", "comment_added", "duplicate"}
    tickets = json.loads(cli("ticket", "list", "--json", config=config)[1])
    replies = sum(1 for mid in acknowledged if int(mid.split("-")[2].split("@")[0]) % 3 == 2)
    # After a kill a reply and the mail it answers often wait in the spool together; worked
    # side by side, the reply must still wait for its ticket (Processor: MAX_DEFERRALS).
    own_tickets = len(tickets) - (total - replies)
    assert own_tickets == 0
    assert len({t["key"] for t in tickets}) == len(tickets)
    outbox = json.loads(cli("outbox", "list", "--json", config=config)[1])
    to_carol = Counter(o["ticket"] for o in outbox if o["event"] == "ticket_created" and o["to"] == "carol@acme.example")
    assert sorted(to_carol) == sorted(t["key"] for t in tickets)
    assert set(to_carol.values()) == {1}
    print(f"\nkill test: {len(acknowledged)} acknowledged, 0 lost, 0 duplicated, {KILLS} kills survived, "
          f"{sum(c.errors for c in clients)} client retries, {sum(1 for r in rows if r['outcome'] == 'duplicate')} "
          f"redeliveries recognised as duplicates, {own_tickets} of {replies} replies opened their own ticket")
