"""CPU per message (issue 16): what processing one message costs in CPU time, in-process, with
the statements it sends — robust on a busy machine, where wall-clock rates are not.

    .venv/bin/python -m bench.cpu [--db sqlite|postgresql] [--messages 300] [--kind new3|mix] [--profile]

A fresh database gets organisations of three contacts (`contact import`), so that a new ticket
is mailed to three people: its creator and two colleagues. --messages mails are spooled, then
the runner works the spool in this process (`Runner.run_once`: claim, process in one
transaction with the notifications, settle) after --warmup mails not counted; CPU time
(user + system of this process, `time.process_time`) and the SQL statements sent are divided
by the messages. `--kind new3`: new tickets without attachments, each with three
notifications; `--kind mix`: the ingest benchmark's mix (30 % replies, 10 % with a 50 KB
attachment). `--profile` prints cProfile's view of the counted run.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time

from bench import common
from bench.common import SUPPORT, log
from bench.mailgen import Directory, Generator


def _spool(app, mails) -> None:
    from mailgate.core.spool import Envelope

    for mail in mails:
        app.spool.put(mail.raw, Envelope(sender=mail.sender, recipients=list(mail.recipients), source="smtp"))


def _statements(engine) -> list[int]:
    import sqlalchemy as sa

    count = [0]
    sa.event.listen(engine, "before_cursor_execute", lambda *a, **k: count.__setitem__(0, count[0] + 1))
    return count


def _mails(directory: Directory, kind: str, count: int, seed: int, tickets) -> list:
    gen = Generator(directory, seed=seed, run=f"cpu{seed}")
    if kind == "new3":
        return [gen.new_ticket() for _ in range(count)]
    return gen.mix(count, tickets)


def _seed_refs(app, directory: Directory, gen: Generator, count: int) -> list:
    """COUNT tickets to reply to (the mix's replies), processed before anything is counted."""
    from bench.mailgen import TicketRef
    from mailgate.core.runner import Runner

    mails = [gen.new_ticket(sender=directory.contacts[i % len(directory.contacts)]) for i in range(count)]
    _spool(app, mails)
    done = Runner(app).run_once()
    refs = []
    by_id = {m.message_id: m for m in mails}
    for _spool_id, handled in done:
        result = handled.result
        inbound = result.inbound if result else None
        mail = by_id.get(inbound.message_id if inbound else None)
        if mail and result.ticket:
            creator = next(c for c in directory.contacts if c.email == mail.sender)
            refs.append(TicketRef(result.ticket, mail.subject, creator, mail.message_id,
                                  app.signer.message_id(result.ticket)))
    return refs


def run(args) -> dict:
    from mailgate.app import App
    from mailgate.config import load
    from mailgate.core.runner import Runner

    directory = Directory(args.orgs, 3)
    with common.temp_dir("cpu", keep=args.keep) as workdir, common.database(args.db, workdir, "cpu", args.keep) as url:
        config = common.write_config(workdir, url)
        csv = workdir / "contacts.csv"
        csv.write_text(directory.csv())
        common.cli(config, "contact", "import", str(csv), "--create-orgs")
        app = App(load(config))
        app.prepare()
        runner = Runner(app).warm_up()
        refs = _seed_refs(app, directory, Generator(directory, seed=args.seed + 1, run="cpuseed"), 40) \
            if args.kind == "mix" else []
        warm = _mails(directory, args.kind, args.warmup, args.seed + 2, refs)
        _spool(app, warm)
        runner.run_once()
        mails = _mails(directory, args.kind, args.messages, args.seed, refs)
        _spool(app, mails)
        statements = _statements(app.db.engine)
        profiler = cProfile.Profile() if args.profile else None
        log(f"processing {len(mails)} messages ({args.kind}, {args.db})")
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        done = runner.run_once()
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        outcomes: dict[str, int] = {}
        notifications = 0
        for _spool_id, handled in done:
            result = handled.result
            outcomes[result.outcome if result else handled.disposition.value] = \
                outcomes.get(result.outcome if result else handled.disposition.value, 0) + 1
            notifications += len(result.notifications) if result else 0
        app.db.dispose()
        n = len(done)
        report = {"db": args.db, "kind": args.kind, "messages": n, "cpu_ms_per_message": cpu / n * 1000,
                  "wall_ms_per_message": wall / n * 1000, "statements_per_message": statements[0] / n,
                  "notifications_per_message": notifications / n, "outcomes": outcomes}
        if profiler:
            buf = io.StringIO()
            stats = pstats.Stats(profiler, stream=buf).strip_dirs()
            stats.sort_stats("cumulative").print_stats(args.profile_lines)
            stats.sort_stats("tottime").print_stats(args.profile_lines)
            report["profile"] = buf.getvalue()
        return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--kind", choices=["new3", "mix"], default="new3")
    p.add_argument("--messages", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--orgs", type=int, default=40)
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--profile-lines", type=int, default=40)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    common.install_signal_handlers()
    machine = common.machine()
    report = run(args)
    profile = report.pop("profile", None)
    print(f"cpu ({args.db}, {args.kind}): {report['messages']} messages after {args.warmup} warm-up; "
          f"load {machine['loadavg_1m_at_start']}")
    print(common.table([[report["cpu_ms_per_message"], report["wall_ms_per_message"],
                         report["statements_per_message"], report["notifications_per_message"]]],
                       ["CPU ms/msg", "wall ms/msg", "statements/msg", "notifications/msg"]))
    print(f"outcomes: {report['outcomes']}")
    if profile:
        print(profile)
    print(common.json_line("cpu", {"machine": machine, **report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
