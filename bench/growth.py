"""Growth benchmark (issue #8): per-message processing time with a big database against a
(nearly) empty one.

    .venv/bin/python -m bench.growth [--tickets 1000000] [--db sqlite|postgresql] [--messages 500]

For each size — --baseline-tickets (default 1,000: "empty", but with enough tickets for
the replies to refer to) and --tickets — a fresh database gets its schema from `mailgate db
upgrade`, then organisations, contacts, tickets, their inbound records, Seen rows and
thread Message-IDs by bulk SQL (one transaction of executemany on SQLite, COPY on
PostgreSQL), and the ticket counter is set so new keys continue. Then --messages messages
(after --warmup ones not timed) go through the real pipeline in this process
(`mailgate.core.pipeline.Pipeline(app).process`, one transaction each, notifications included):
new tickets, and replies to random existing tickets — by "[SD-n]" in the subject (In-Reply-To
a signed notification Message-ID) or only by In-Reply-To/References to the ticket's original
Message-ID, which is in thread_message. Both sizes get the same stream of messages: the
replies' targets are drawn so that they have the same statuses in both (most old tickets are
closed, so a reply to one opens a follow-up ticket, as in life).

Prints ms/message (mean, p50, p90, p99) for both sizes, the ratio, a table and a
`BENCH_JSON {...}` line. --profile runs both sizes under cProfile (slower, the ratio stays
comparable) and prints the big run's profile.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import pstats
import random
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench import common
from bench.common import SUPPORT, log, mb, percentile
from bench.mailgen import SUBJECTS_DE, SUBJECTS_EN, SENTENCES_DE, SENTENCES_EN, Directory, Generator, TicketRef

TARGET_RATIO = 1.3
# The key counter of the prefix SD (mailgate.tickets.service.allocate_key: one row per prefix).
COUNTER_SQL = ("INSERT INTO counter (name, value) VALUES ('ticket:SD', %s) "
               "ON CONFLICT (name) DO UPDATE SET value = excluded.value")

# Status of ticket n by (n-1) % 20: an old desk is mostly closed.
STATUS_BY_RESIDUE = ["closed"] * 14 + ["resolved"] * 2 + ["in_progress"] * 2 + ["opened", "clarification"]
EPOCH = datetime(2023, 11, 1, tzinfo=timezone.utc)
SPAN = timedelta(days=3 * 365)


# --- the synthetic history: ticket n, deterministic ----------------------------------------------------


class History:
    def __init__(self, directory: Directory, tickets: int):
        self.dir, self.tickets = directory, tickets
        self.contacts = len(directory.contacts)
        self.step = SPAN / max(tickets, 1)
        self.descriptions = [
            "Hello,\n\n" + " ".join(random.Random(i).sample(pool, 3)) + "\n\nBest regards"
            for i, pool in enumerate([SENTENCES_EN] * 5 + [SENTENCES_DE] * 2)
        ]

    def creator(self, n: int):
        return self.dir.contacts[(n * 7919) % self.contacts]

    def status(self, n: int) -> str:
        return STATUS_BY_RESIDUE[(n - 1) % 20]

    def summary(self, n: int) -> str:
        c = self.creator(n)
        pool = SUBJECTS_DE if c.language == "de" else SUBJECTS_EN
        return f"{pool[n % len(pool)]} #{n}"

    def message_id(self, n: int) -> str:
        return f"<seed-{n}@mail.customer{self.creator(n).org:05d}.example>"

    def created(self, n: int) -> datetime:
        return EPOCH + self.step * n

    def ref(self, n: int, notification_id: str | None) -> TicketRef:
        return TicketRef(f"SD-{n}", self.summary(n), self.creator(n), self.message_id(n), notification_id, self.status(n))


def id_hash(message_id: str) -> str:
    # mailgate.mail.refs.id_hash, repeated so that a change there shows up as a failed lookup
    # (replies by thread becoming new tickets) rather than silently measuring something else.
    return hashlib.sha256(message_id.strip().removeprefix("<").removesuffix(">").strip().lower().encode()).hexdigest()


# --- bulk load ------------------------------------------------------------------------------------------


def _rows(history: History, state_dir: Path, sqlite: bool):
    """(table, columns, row iterator) in insertion order."""
    T = history.tickets
    when = (lambda d: d.strftime("%Y-%m-%d %H:%M:%S.%f")) if sqlite else (lambda d: d)
    yes, no = (1, 0) if sqlite else (True, False)
    d = history.dir
    orgs = ((o + 1, d.org_name(o), None) for o in range(d.orgs))
    contacts = ((c.index + 1, c.email, c.name, c.org + 1, c.language, yes) for c in d.contacts)

    def tickets():
        for n in range(1, T + 1):
            c = history.creator(n)
            status = history.status(n)
            created = history.created(n)
            changed = when(created + timedelta(days=3))
            yield (n, f"SD-{n}", "request", status, "in_progress" if status == "clarification" else None, None,
                   history.summary(n), history.descriptions[n % 7], c.index + 1, c.org + 1, yes, no, None, None,
                   when(created), changed, changed, changed, 0)

    attachments = str(state_dir / "attachments")

    def inbound():
        for n in range(1, T + 1):
            c = history.creator(n)
            mid = history.message_id(n)
            created = history.created(n)
            digest = hashlib.sha256(b"raw %d" % n).hexdigest()
            yield (n, f"{n:020d}-bench", mid, id_hash(mid), "smtp", c.email, SUPPORT, c.email, when(created),
                   when(created + timedelta(seconds=1)), digest, f"{attachments}/{digest[:2]}/{digest}", 2400,
                   "ticket_created", n, None, None, 1)

    def seen():
        for n in range(1, T + 1):
            yield (id_hash(history.message_id(n)), n)

    def thread():
        for n in range(1, T + 1):
            yield (id_hash(history.message_id(n)), n)
            # and the notification mailgate sent about it (a signed id in real life)
            yield (hashlib.sha256(b"mg.SD-%d.notification@example.com" % n).hexdigest(), n)

    return [
        ("organisation", ["id", "name", "region"], orgs, d.orgs),
        ("contact", ["id", "email", "name", "organisation_id", "language", "active"], contacts, len(d.contacts)),
        ("ticket", ["id", "key", "type", "status", "status_before_clarification", "priority", "summary", "description",
                    "creator_id", "organisation_id", "shared", "confidential", "your_reference", "follow_up_of_id",
                    "created_at", "updated_at", "last_customer_feedback_at", "status_changed_at", "reminders_sent"],
         tickets(), T),
        ("inbound", ["id", "spool_id", "message_id", "dedupe_key", "source", "envelope_sender", "envelope_recipients",
                     "from_address", "received_at", "processed_at", "sha256", "raw_path", "size", "outcome", "ticket_id",
                     "comment_id", "error", "attempts"], inbound(), T),
        ("seen", ["dedupe_key", "inbound_id"], seen(), T),
        ("threadmessage", ["id_hash", "ticket_id"], thread(), 2 * T),
    ]


def _check_columns(url: str, plan) -> None:
    """Every NOT NULL column without a default must be one we fill; columns we fill must exist."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        for table, columns, _rows_, _n in plan:
            actual = {c["name"]: c for c in inspector.get_columns(table)}
            unknown = [c for c in columns if c not in actual]
            needed = [name for name, c in actual.items()
                      if not c["nullable"] and c.get("default") is None and name not in columns]
            if unknown or needed:
                raise RuntimeError(f"bench.growth does not match the schema of table {table}: "
                                   f"columns gone {unknown}, NOT NULL columns it does not fill {needed}")
    finally:
        engine.dispose()


def bulk_load(url: str, history: History, state_dir: Path) -> dict:
    sqlite = url.startswith("sqlite")
    plan = _rows(history, state_dir, sqlite)
    _check_columns(url, plan)
    timings = {}
    started = time.monotonic()
    if sqlite:
        import sqlite3

        conn = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
        conn.execute("PRAGMA journal_mode=DELETE")  # no 1 GB WAL for the load
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")  # 1 GB page cache for the load
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("BEGIN")
        for table, columns, rows, n in plan:
            t0 = time.monotonic()
            sql = f"INSERT INTO {table} ({', '.join(_q(c) for c in columns)}) VALUES ({', '.join('?' * len(columns))})"
            conn.executemany(sql, rows)
            timings[table] = round(time.monotonic() - t0, 1)
            log(f"  {table}: {n} rows in {timings[table]}s")
        conn.execute(COUNTER_SQL.replace("%s", "?"), (history.tickets,))
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")  # as mailgate keeps it
        conn.close()
    else:
        import psycopg

        with psycopg.connect(common.driver_url(url)) as conn:
            with conn.cursor() as cur:
                for table, columns, rows, n in plan:
                    t0 = time.monotonic()
                    with cur.copy(f"COPY {table} ({', '.join(_q(c) for c in columns)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                    if "id" in columns:
                        cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                    f"(SELECT COALESCE(MAX(id), 1) FROM {table}))")
                    timings[table] = round(time.monotonic() - t0, 1)
                    log(f"  {table}: {n} rows in {timings[table]}s")
                cur.execute(COUNTER_SQL, (history.tickets,))
            conn.commit()
            conn.autocommit = True
            t0 = time.monotonic()
            conn.execute("VACUUM ANALYZE")  # what autovacuum would have done by the time it is this big
            timings["vacuum_analyze"] = round(time.monotonic() - t0, 1)
    timings["total"] = round(time.monotonic() - started, 1)
    return timings


def _q(column: str) -> str:
    return f'"{column}"'


def db_size(url: str) -> int:
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    r = common.Reader(url)
    try:
        return r.scalar("SELECT pg_database_size(current_database())")
    finally:
        r.close()


# --- the message stream ---------------------------------------------------------------------------------


def stream(directory: Directory, history: History, signer, count: int, seed: int, new_share: float,
           attachment_share: float) -> list:
    """COUNT messages; their structure depends only on SEED, the targets' numbers on the size."""
    structure = random.Random(seed)
    targets = random.Random(seed + 1)
    gen = Generator(directory, seed=seed + 2, run="growth")
    used: set[int] = set()
    per_residue = history.tickets // 20
    if per_residue < 1:
        raise SystemExit("--tickets and --baseline-tickets must be at least 20")
    mails = []
    for _ in range(count):
        attachment = structure.random() < attachment_share
        if structure.random() < new_share:
            mails.append(gen.new_ticket(attachment=attachment))
            continue
        residue = structure.randrange(20)
        by_key = structure.random() < 2 / 3
        close = structure.random() < 0.3
        for _try in range(1000):
            n = 20 * targets.randrange(per_residue) + residue + 1
            if n not in used:
                break
        used.add(n)
        ref = history.ref(n, signer.message_id(f"SD-{n}") if by_key else None)
        mails.append(gen.reply(ref, by_key=by_key, attachment=attachment, close=close and ref.status == "resolved"))
    return mails


# --- one size -------------------------------------------------------------------------------------------


def run_size(tickets: int, args, directory: Directory, label: str) -> dict:
    from mailgate.app import App
    from mailgate.config import load
    from mailgate.core.pipeline import Pipeline
    from mailgate.core.spool import Envelope

    with common.temp_dir(f"growth-{label}", keep=args.keep) as workdir, common.database(args.db, workdir, f"growth_{label}", args.keep) as url:
        config = common.write_config(workdir, url)
        t0 = time.monotonic()
        common.cli(config, "db", "upgrade")
        upgrade_s = time.monotonic() - t0
        history = History(directory, tickets)
        log(f"{label}: bulk load of {tickets} tickets ({args.db})")
        timings = bulk_load(url, history, workdir / "state")
        size = db_size(url)
        log(f"{label}: built in {timings['total']}s, database {mb(size):.0f} MB")

        app = App(load(config))
        app.prepare()
        pipeline = Pipeline(app)
        mails = stream(directory, history, app.signer, args.warmup + args.messages, args.seed, args.new_share,
                       args.attachment_share)
        times, outcomes = [], {}
        # Both sizes run under the profiler when asked, so that the ratio stays comparable.
        profiler = cProfile.Profile() if args.profile else None
        for i, mail in enumerate(mails):
            spool_id = f"{time.time_ns():020d}-{uuid.uuid4().hex}"
            envelope = Envelope(sender=mail.sender, recipients=list(mail.recipients), source="smtp")
            measured = i >= args.warmup
            if measured and profiler:
                profiler.enable()
            t = time.perf_counter()
            result = pipeline.process(spool_id, envelope, mail.raw)
            elapsed = time.perf_counter() - t
            if measured and profiler:
                profiler.disable()
            if measured:
                times.append(elapsed)
                key = f"{mail.kind}->{result.outcome}"
                outcomes[key] = outcomes.get(key, 0) + 1
        app.db.dispose()
        profile_text = None
        if profiler:
            buf = io.StringIO()
            stats = pstats.Stats(profiler, stream=buf).strip_dirs()
            stats.sort_stats("cumulative").print_stats(35)
            stats.sort_stats("tottime").print_stats(25)
            profile_text = buf.getvalue()
        return {
            "label": label, "tickets": tickets, "db": args.db, "upgrade_seconds": round(upgrade_s, 1),
            "build_seconds": timings, "db_mb": round(mb(size)), "messages": len(times),
            "mean_ms": sum(times) / len(times) * 1000, "p50_ms": percentile(times, 50) * 1000,
            "p90_ms": percentile(times, 90) * 1000, "p99_ms": percentile(times, 99) * 1000,
            "max_ms": max(times) * 1000, "outcomes": outcomes, "profile": profile_text,
        }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__.split("\n\n")[0])
    p.add_argument("--tickets", type=int, default=1_000_000, help="tickets in the big database")
    p.add_argument("--baseline-tickets", type=int, default=1000, help='tickets in the "empty" database')
    p.add_argument("--messages", type=int, default=500, help="timed messages per size")
    p.add_argument("--warmup", type=int, default=30, help="messages processed first, not timed")
    p.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--orgs", type=int, default=2000)
    p.add_argument("--contacts-per-org", type=int, default=5)
    p.add_argument("--new-share", type=float, default=0.5, help="share of new tickets (the rest are replies)")
    p.add_argument("--attachment-share", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=8)
    p.add_argument("--profile", action="store_true", help="cProfile the big run; printed at the end")
    p.add_argument("--keep", action="store_true", help="keep the temp dirs")
    args = p.parse_args(argv)
    common.install_signal_handlers()
    machine = common.machine()
    directory = Directory(args.orgs, args.contacts_per_org)
    empty = run_size(args.baseline_tickets, args, directory, "empty")
    big = run_size(args.tickets, args, directory, "big")
    ratio_mean = big["mean_ms"] / empty["mean_ms"]
    ratio_p50 = big["p50_ms"] / empty["p50_ms"]
    print()
    print(f"growth ({args.db}): {args.messages} messages per size after {args.warmup} warm-up; "
          f"{len(directory.contacts)} contacts in {args.orgs} organisations; machine: {machine['nproc']} x {machine['cpu']}, "
          f"load {machine['loadavg_1m_at_start']}")
    print(common.table(
        [[r["label"], r["tickets"], r["db_mb"], r["build_seconds"]["total"], r["mean_ms"], r["p50_ms"], r["p90_ms"],
          r["p99_ms"], r["max_ms"]] for r in (empty, big)],
        ["database", "tickets", "size MB", "build s", "mean ms", "p50 ms", "p90 ms", "p99 ms", "max ms"]))
    print(f"outcomes (kind->outcome): empty {empty['outcomes']}")
    print(f"                          big   {big['outcomes']}")
    print(f"ratio big/empty: mean {ratio_mean:.2f}, p50 {ratio_p50:.2f}; target <= {TARGET_RATIO}: "
          f"{'MET' if ratio_mean <= TARGET_RATIO else 'MISSED'}")
    if args.profile:
        print("(--profile: both sizes ran under cProfile; the times include its overhead)")
    if big["profile"]:
        print("\ncProfile of the big run (measured messages only):")
        print(big["profile"])
    for r in (empty, big):
        r.pop("profile", None)
    print(common.json_line("growth", {"machine": machine, "db": args.db, "empty": empty, "big": big,
                                      "ratio_mean": ratio_mean, "ratio_p50": ratio_p50}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
