"""Ingestion benchmark (issue #8): mailgate serve against a minimal fsyncing aiosmtpd sink.

    .venv/bin/python -m bench.ingest [--messages 1000] [--connections 16] [--db sqlite|postgresql|both]

For each database: a fresh temp dir, database and config; contacts imported with `mailgate
contact import`; a first `serve` is fed --seed-tickets new tickets (not timed) so replies have
tickets to refer to, and stopped. The message list (new tickets and replies to the seeded
tickets, ~10 % with a 50 KB attachment) is generated, then sent, in one run on this machine:

1. to `python -m bench.sink` (own process): accepted messages/s and SMTP latency p50/p99;
2. to a fresh `mailgate serve` (own process): the same, plus the end-to-end rate (until the
   database holds an inbound record for every message — each a ticket or comment with its
   notifications queued, in one transaction), the outbound rows queued, and peak RSS (VmHWM).

Latency is one SMTP transaction on an open session: MAIL FROM to the 250 after DATA.
Prints a table and a `BENCH_JSON {...}` line.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import common, smtpload
from bench.common import Reader, Serve, log, mb, percentile
from bench.mailgen import Directory, Generator, TicketRef

TARGET_E2E_RATIO = 0.6
TARGET_P99_MS = 50.0


# --- the sink ----------------------------------------------------------------------------------


class Sink:
    def __init__(self, directory: Path):
        self.directory = directory
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    def __enter__(self) -> "Sink":
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.sink", "--dir", str(self.directory)],
                                     cwd=common.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        common._children.append(self.proc)
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if m := re.search(r"listening on [\d.]+:(\d+)", line):
                self.port = int(m.group(1))
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # drain
                return self
            if not line and self.proc.poll() is not None:
                break
        self.proc.kill()
        raise RuntimeError(f"sink did not start: {line}")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        common._children.remove(self.proc)


# --- seeding -------------------------------------------------------------------------------------


def seed(config: Path, url: str, directory: Directory, gen: Generator, count: int, timeout: float) -> list[TicketRef]:
    """COUNT new tickets through a first serve (not timed): what the replies will refer to."""
    if count <= 0:
        return []
    mails, by_summary = [], {}
    step = max(1, len(directory.contacts) // count)
    for i in range(count):
        sender = directory.contacts[(i * step) % len(directory.contacts)]
        subject = f"{gen._subject(sender.language == 'de').split(' (')[0].removeprefix('Fwd: ').removeprefix('WG: ')} #{1000 + i}"
        mail = gen.new_ticket(sender=sender, subject=subject)
        mails.append(mail)
        by_summary[subject] = mail
    with Serve(config) as serve:
        result = smtpload.send_all(serve.smtp_port, mails, connections=4)
        if result.accepted != count:
            raise RuntimeError(f"seeding: {result.accepted} of {count} accepted: {result.errors[:3]}")
        reader = Reader(url)
        try:
            common.wait_until(lambda: reader.count("inbound") >= count, timeout, what="seed tickets")
            notifications = dict(reader.rows(
                "SELECT t.key || ' ' || o.recipient, o.message_id FROM outbound o JOIN ticket t ON t.id = o.ticket_id "
                "WHERE o.event = 'ticket_created' ORDER BY o.id DESC"))
        finally:
            reader.close()
    tickets = json.loads(common.cli(config, "ticket", "list", "--json").stdout)
    by_email = {c.email: c for c in directory.contacts}
    refs = {}
    for t in tickets:
        mail = by_summary.get(t["summary"])
        if mail is None:
            continue
        refs[t["summary"]] = TicketRef(t["key"], t["summary"], by_email[t["creator"]], mail.message_id,
                                       notifications.get(f"{t['key']} {t['creator']}"))
    # in the order the seeds were sent (keys depend on the processing order, which may differ)
    refs = [refs[s] for s in by_summary if s in refs]
    if len(refs) != count:
        raise RuntimeError(f"seeding: found {len(refs)} of {count} seeded tickets")
    return refs


# --- one measured run against mailgate ---------------------------------------------------------------


def measure_mailgate(config: Path, url: str, mails, connections: int, timeout: float, py_spy: str | None) -> dict:
    n = len(mails)
    reader = Reader(url)
    base_inbound = reader.scalar("SELECT COALESCE(MAX(id), 0) FROM inbound")
    base_outbound = reader.scalar("SELECT COALESCE(MAX(id), 0) FROM outbound")
    base_count = reader.count("inbound")
    done = {"at": None, "processed_at_intake_end": None, "target": n}
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            try:
                processed = reader.count("inbound") - base_count
            except Exception as e:  # a locked read: try again
                log(f"poll: {e}")
                processed = -1
            if processed >= done["target"]:
                done["at"] = time.monotonic()
                return
            stop.wait(0.05)

    with Serve(config) as serve:
        spy = _start_py_spy(serve.pid, py_spy) if py_spy else None
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        load = smtpload.send_all(serve.smtp_port, mails, connections, total_timeout=timeout)
        done["target"] = min(n, load.accepted)  # what was not accepted cannot be processed
        try:
            done["processed_at_intake_end"] = reader.count("inbound") - base_count
        except Exception:
            pass
        poller.join(timeout)
        stop.set()
        hwm, rss = serve.status("VmHWM"), serve.status("VmRSS")
        if spy:
            _stop_py_spy(spy)
        outcomes = reader.by(f"inbound WHERE id > {base_inbound}", "outcome")
        outbound = reader.by(f"outbound WHERE id > {base_outbound}", "status")
        odd_replies = _replies_not_commented(reader, base_inbound, mails)
        log_tail = serve.output(15)
        exit_code = serve.stop()
    reader.close()
    processed = sum(outcomes.values())
    e2e_seconds = (done["at"] - load.wall_started) if done["at"] else None
    return {
        **_load_figures(load),
        "processed": processed,
        "processed_when_intake_ended": done["processed_at_intake_end"],
        "end_to_end_seconds": e2e_seconds,
        "end_to_end_rate": done["target"] / e2e_seconds if e2e_seconds else None,
        "outcomes": outcomes,
        "outbound_rows": sum(outbound.values()),
        "outbound_by_status": outbound,
        "peak_rss_mb": round(mb(hwm), 1),
        "rss_at_end_mb": round(mb(rss), 1),
        "replies_not_commented": odd_replies,
        "serve_exit": exit_code,
        "serve_log_tail": log_tail if exit_code != 0 or processed != n else "",
    }


def _replies_not_commented(reader: Reader, base_inbound: int, mails) -> dict:
    """Replies to seeded (open) tickets should all be comments; which were not, and what became of them."""
    replies = {m.message_id: m for m in mails if m.kind != "new"}
    rows = reader.rows(
        "SELECT i.message_id, i.outcome, t.key FROM inbound i LEFT JOIN ticket t ON t.id = i.ticket_id "
        f"WHERE i.id > {base_inbound} AND i.outcome <> 'comment_added'")
    odd = [(mid, outcome, key) for mid, outcome, key in rows if mid in replies]
    return {"count": len(odd), "by_kind": {k: sum(replies[m].kind == k for m, _, _ in odd) for k in ("reply_key", "reply_thread")},
            "examples": [{"kind": replies[m].kind, "refers_to": replies[m].extra.get("ticket"), "outcome": o, "ticket": k}
                         for m, o, k in odd[:5]]}


def _load_figures(load: smtpload.LoadResult) -> dict:
    return {
        "accepted": load.accepted,
        "errors": len(load.errors),
        "first_errors": load.errors[:5],
        "accept_seconds": round(load.seconds, 3),
        "accepted_rate": load.rate,
        "latency_p50_ms": percentile(load.latencies, 50) * 1000,
        "latency_p99_ms": percentile(load.latencies, 99) * 1000,
        "latency_max_ms": max(load.latencies, default=float("nan")) * 1000,
        "sessions": load.sessions,
        "reconnects": load.reconnects,
    }


def measure_sink(workdir: Path, mails, connections: int, timeout: float) -> dict:
    with Sink(workdir / "sink") as sink:
        load = smtpload.send_all(sink.port, mails, connections, total_timeout=timeout)
        hwm = common.proc_status(sink.proc.pid, "VmHWM")
    return {**_load_figures(load), "peak_rss_mb": round(mb(hwm), 1)}


PY_SPY_RATE = 50  # samples/s: low, so the profiler's own CPU use on a small machine stays small


def _start_py_spy(pid: int, out: str):
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        log("py-spy not installed in the venv (.venv/bin/pip install py-spy); not profiling")
        return None
    fmt = "speedscope" if out.endswith(".json") else "raw" if out.endswith(".txt") else "flamegraph"
    proc = subprocess.Popen([str(exe), "record", "--pid", str(pid), "--rate", str(PY_SPY_RATE), "--format", fmt,
                             "--output", out, "--nonblocking", "--threads", "--idle"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    common._children.append(proc)
    time.sleep(0.5)
    return proc


def _stop_py_spy(proc) -> None:
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    common._children.remove(proc)
    log(f"py-spy: {(proc.stderr.read() or '').strip().splitlines()[-1:]}")


# --- main ------------------------------------------------------------------------------------------


def run_one(kind: str, args, directory: Directory) -> dict:
    with common.temp_dir(f"ingest-{kind}", keep=args.keep) as workdir, common.database(kind, workdir, "ingest", args.keep) as url:
        config = common.write_config(workdir, url, log_level=args.log_level, extra=_overrides(args.set))
        csv = workdir / "contacts.csv"
        csv.write_text(directory.csv())
        common.cli(config, "contact", "import", str(csv), "--create-orgs")
        gen = Generator(directory, seed=args.seed, run=f"ingest-{kind}")
        log(f"{kind}: seeding {args.seed_tickets} tickets")
        refs = seed(config, url, directory, gen, args.seed_tickets, args.timeout)
        mails = gen.mix(args.messages, refs, reply_share=args.reply_share, attachment_share=args.attachment_share)
        sizes = [len(m.raw) for m in mails]
        log(f"{kind}: sink, {len(mails)} messages over {args.connections} connections")
        sink = measure_sink(workdir, mails, args.connections, args.timeout)
        log(f"{kind}: sink accepted {sink['accepted_rate']:.0f}/s; now mailgate serve")
        spy = args.py_spy.replace("{db}", kind) if args.py_spy else None
        mg = measure_mailgate(config, url, mails, args.connections, args.timeout, spy)
        log(f"{kind}: mailgate accepted {mg['accepted_rate']:.0f}/s, end-to-end "
            f"{(mg['end_to_end_rate'] or 0):.1f}/s, peak RSS {mg['peak_rss_mb']} MB")
        return {
            "db": kind, "messages": len(mails), "connections": args.connections, "config_overrides": args.set or [],
            "mix": {"new": sum(m.kind == "new" for m in mails), "reply_key": sum(m.kind == "reply_key" for m in mails),
                    "reply_thread": sum(m.kind == "reply_thread" for m in mails),
                    "with_attachment": sum(m.attachment for m in mails),
                    "mean_bytes_without_attachment": round(sum(s for s, m in zip(sizes, mails) if not m.attachment)
                                                           / max(1, sum(not m.attachment for m in mails))),
                    "total_mb": round(mb(sum(sizes)), 1)},
            "seed_tickets": len(refs), "sink": sink, "mailgate": mg,
            "ratio_accepted": mg["accepted_rate"] / sink["accepted_rate"] if sink["accepted_rate"] else None,
            "ratio_end_to_end": (mg["end_to_end_rate"] or 0) / sink["accepted_rate"] if sink["accepted_rate"] else None,
        }


def _overrides(items: list[str]) -> dict:
    """--set section.key=value (value as TOML: 2, true, "text") into config sections."""
    import tomllib

    extra: dict = {}
    for item in items or []:
        name, _, value = item.partition("=")
        section, _, key = name.partition(".")
        if not (section and key and _):
            raise SystemExit(f"--set {item!r}: expected section.key=value")
        extra.setdefault(section, {})[key] = tomllib.loads(f"v = {value}")["v"]
    return extra


def report(results: list[dict], machine: dict) -> None:
    rows = []
    for r in results:
        s, m = r["sink"], r["mailgate"]
        rows.append([f"sink ({r['db']} run)", s["accepted"], s["errors"], s["accepted_rate"], s["latency_p50_ms"],
                     s["latency_p99_ms"], None, None, None, s["peak_rss_mb"]])
        rows.append([f"mailgate {r['db']}", m["accepted"], m["errors"], m["accepted_rate"], m["latency_p50_ms"],
                     m["latency_p99_ms"], m["end_to_end_rate"], r["ratio_end_to_end"], m["outbound_rows"], m["peak_rss_mb"]])
    print()
    print(f"ingest: {results[0]['messages']} messages, {results[0]['connections']} connections, "
          f"mix {results[0]['mix']}; machine: {machine['nproc']} x {machine['cpu']}, load {machine['loadavg_1m_at_start']}")
    print(common.table(rows, ["target", "accepted", "errors", "acc msg/s", "p50 ms", "p99 ms", "e2e msg/s",
                              "e2e/sink", "outbound", "peak RSS MB"]))
    for r in results:
        m = r["mailgate"]
        ok_ratio = r["ratio_end_to_end"] is not None and r["ratio_end_to_end"] >= TARGET_E2E_RATIO
        ok_p99 = m["latency_p99_ms"] <= TARGET_P99_MS
        print(f"{r['db']}: outcomes {m['outcomes']}; outbound {m['outbound_by_status']}; "
              f"processed when intake ended {m['processed_when_intake_ended']}/{r['messages']}; "
              f"accepted ratio mailgate/sink {r['ratio_accepted']:.2f}")
        if m["replies_not_commented"]["count"]:
            print(f"{r['db']}: WARNING replies that did not become comments: {m['replies_not_commented']}")
        print(f"{r['db']}: target e2e >= {TARGET_E2E_RATIO} x sink: {'MET' if ok_ratio else 'MISSED'} "
              f"({(r['ratio_end_to_end'] or 0):.2f}); target p99 <= {TARGET_P99_MS:.0f} ms: "
              f"{'MET' if ok_p99 else 'MISSED'} ({m['latency_p99_ms']:.1f} ms)")
        if m["serve_log_tail"]:
            print(f"{r['db']}: serve output (tail):\n{m['serve_log_tail']}")
    print(common.json_line("ingest", {"machine": machine, "results": results}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="sqlite")
    p.add_argument("--seed-tickets", type=int, default=50, help="tickets created before the run, for replies")
    p.add_argument("--reply-share", type=float, default=0.3)
    p.add_argument("--attachment-share", type=float, default=0.1)
    p.add_argument("--orgs", type=int, default=40)
    p.add_argument("--contacts-per-org", type=int, default=5)
    p.add_argument("--seed", type=int, default=8, help="random seed of the message generator")
    p.add_argument("--timeout", type=float, default=1800, help="seconds for each phase at most")
    p.add_argument("--log-level", default="WARNING", help="mailgate's [logging] level during the run")
    p.add_argument("--py-spy", metavar="OUT", help="profile serve with py-spy into OUT ({db} is replaced; .svg/.json/.txt)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help='a config override for mailgate, e.g. --set processing.threads=1 (repeatable)')
    p.add_argument("--keep", action="store_true", help="keep the temp dirs and databases")
    args = p.parse_args(argv)
    common.install_signal_handlers()
    machine = common.machine()
    directory = Directory(args.orgs, args.contacts_per_org)
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    results = [run_one(kind, args, directory) for kind in kinds]
    report(results, machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
