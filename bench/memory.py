"""Memory benchmark (issue #8): RSS of a running `mailgate serve` over 10,000 messages, and what
one message with a 25 MB attachment adds.

    .venv/bin/python -m bench.memory [--messages 10000] [--connections 4] [--big-mb 25] [--db sqlite|postgresql]

A fresh temp dir, database and config (smtp.max_message_size 64 MiB); contacts imported;
one `serve` for the whole run. --seed-tickets new tickets first (so replies have targets),
then the messages (the ingest mix) over --connections sessions as fast as they are
accepted, while VmRSS is sampled every second, until every message is processed. The curve
is reported in 10 points (by time) with the messages processed by then, and whether it
levels off: the RSS growth per 1,000 messages processed over the second half and over the
last 30 % of the run (the verdict: under 1 MB per 1,000 over the last 30 %).

Then, on the same warmed-up process: VmHWM is reset (/proc/PID/clear_refs), one new ticket
with a --big-mb MB attachment is sent and processed; RSS before, after, and the peak (VmHWM,
and VmRSS sampled every 50 ms) are reported: the issue's target is that it adds at most
3 x its size. Prints a table and a `BENCH_JSON {...}` line.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench import common, smtpload
from bench.common import Reader, RssSampler, Serve, log, mb
from bench.ingest import seed
from bench.mailgen import Directory, Generator, big_attachment_mail

TARGET_PEAK_MB = 150
TARGET_BIG_FACTOR = 3.0


def curve(samples, points: int = 10) -> list[dict]:
    """POINTS samples spread evenly over the run (the last one at its end)."""
    if not samples:
        return []
    end = samples[-1][0]
    out = []
    for i in range(1, points + 1):
        t = end * i / points
        s = min(samples, key=lambda x: abs(x[0] - t))
        out.append({"t_s": round(s[0], 1), "rss_mb": round(mb(s[1]), 1), "processed": s[2]})
    return out


def levelling(samples, messages: int) -> dict:
    """RSS growth over the second half of the run, per 1,000 messages processed then."""
    good = [s for s in samples if s[2] is not None]
    if len(good) < 4:
        return {"levels_off": None}
    half = [s for s in good if s[2] >= messages / 2] or good[len(good) // 2:]
    first, last = half[0], half[-1]
    processed = max(1, last[2] - first[2])
    per_1000 = mb(last[1] - first[1]) / processed * 1000
    max_second_half = max(s[1] for s in half)
    tail = [s for s in good if s[2] >= messages * 0.7] or good[-max(2, len(good) // 3):]
    tail_per_1000 = mb(tail[-1][1] - tail[0][1]) / max(1, tail[-1][2] - tail[0][2]) * 1000
    return {
        "second_half_growth_mb": round(mb(last[1] - first[1]), 1),
        "second_half_growth_mb_per_1000_messages": round(per_1000, 2),
        "max_rss_first_half_mb": round(mb(max((s[1] for s in good if s[2] < messages / 2), default=0)), 1),
        "max_rss_second_half_mb": round(mb(max_second_half), 1),
        "last_30pct_growth_mb": round(mb(tail[-1][1] - tail[0][1]), 1),
        "last_30pct_growth_mb_per_1000_messages": round(tail_per_1000, 2),
        # levels off: under 1 MB per 1,000 messages over the last 30 % of the run (a leak keeps
        # its slope; a warming cache and allocator arenas flatten out)
        "levels_off": tail_per_1000 < 1.0,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--big-mb", type=float, default=25.0, help="size of the one big attachment (0: skip)")
    p.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--seed-tickets", type=int, default=50)
    p.add_argument("--orgs", type=int, default=40)
    p.add_argument("--contacts-per-org", type=int, default=5)
    p.add_argument("--seed", type=int, default=8)
    p.add_argument("--timeout", type=float, default=7200, help="seconds for the run at most")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    common.install_signal_handlers()
    machine = common.machine()
    directory = Directory(args.orgs, args.contacts_per_org)

    with common.temp_dir("memory", keep=args.keep) as workdir, common.database(args.db, workdir, "memory", args.keep) as url:
        config = common.write_config(workdir, url, max_message_size=64 * 1024 * 1024)
        csv = workdir / "contacts.csv"
        csv.write_text(directory.csv())
        common.cli(config, "contact", "import", str(csv), "--create-orgs")
        gen = Generator(directory, seed=args.seed, run="memory")
        log(f"seeding {args.seed_tickets} tickets")
        refs = seed(config, url, directory, gen, args.seed_tickets, 600)
        mails = gen.mix(args.messages, refs)
        big_mail = big_attachment_mail(gen, directory.contacts[0], int(args.big_mb * 1024 * 1024)) if args.big_mb else None

        with Serve(config) as serve:
            reader = Reader(url)
            base = reader.count("inbound")
            processed = lambda: reader.count("inbound") - base
            rss_start = serve.status("VmRSS")
            log(f"sending {len(mails)} messages over {args.connections} connections; RSS {mb(rss_start):.1f} MB")
            started = time.monotonic()
            with RssSampler(serve.pid, 1.0, processed) as sampler:
                load = smtpload.send_all(serve.smtp_port, mails, args.connections, total_timeout=args.timeout)
                log(f"accepted {load.accepted} in {load.seconds:.0f}s; waiting for processing")
                common.wait_until(lambda: processed() >= load.accepted, args.timeout, 0.5, "processing")
                time.sleep(1.5)  # one more sample after the last message
            run_seconds = time.monotonic() - started
            hwm_run = serve.status("VmHWM")
            rss_after_run = serve.status("VmRSS")
            outcomes = reader.by("inbound", "outcome")
            log(f"{args.messages} processed in {run_seconds:.0f}s; RSS {mb(rss_after_run):.1f} MB, peak {mb(hwm_run):.1f} MB")

            big = None
            if big_mail:
                time.sleep(3)
                # the daemon's and its worker processes' peaks alike
                reset = all([common.reset_peak_rss(pid) for pid in [serve.pid, *common.children(serve.pid)]])
                rss_before = serve.status("VmRSS")
                before_count = processed()
                log(f"sending one {len(big_mail.raw) / 1e6:.1f} MB message ({args.big_mb} MB attachment); RSS {mb(rss_before):.1f} MB")
                with RssSampler(serve.pid, 0.05) as fine:
                    big_load = smtpload.send_all(serve.smtp_port, [big_mail], 1, timeout=600, total_timeout=900)
                    common.wait_until(lambda: processed() > before_count, 900, 0.2, "the big message")
                    time.sleep(3)
                rss_after = serve.status("VmRSS")
                peak = max(serve.status("VmHWM") if reset else 0, max((s[1] for s in fine.samples), default=0))
                size = args.big_mb * 1024 * 1024
                outcome = reader.rows("SELECT outcome, error FROM inbound ORDER BY id DESC LIMIT 1")[0]
                big = {
                    "attachment_mb": args.big_mb, "message_mb": round(mb(len(big_mail.raw)), 1),
                    "accepted": big_load.accepted, "smtp_seconds": round(big_load.seconds, 2),
                    "outcome": outcome[0], "error": outcome[1],
                    "rss_before_mb": round(mb(rss_before), 1), "rss_after_mb": round(mb(rss_after), 1),
                    "peak_mb": round(mb(peak), 1), "peak_added_mb": round(mb(peak - rss_before), 1),
                    "after_added_mb": round(mb(rss_after - rss_before), 1),
                    "peak_added_factor": round((peak - rss_before) / size, 2),
                    "hwm_reset": reset,
                }
            reader.close()
            exit_code = serve.stop()

    points = curve(sampler.samples)
    level = levelling(sampler.samples, load.accepted)
    print()
    print(f"memory ({args.db}): {args.messages} messages over {args.connections} connections, "
          f"{load.accepted} accepted in {load.seconds:.0f}s, all processed after {run_seconds:.0f}s; "
          f"machine: {machine['nproc']} x {machine['cpu']}, load {machine['loadavg_1m_at_start']}")
    print(common.table([[p["t_s"], p["processed"], p["rss_mb"]] for p in points], ["t s", "processed", "RSS MB"]))
    print(f"RSS at start {mb(rss_start):.1f} MB; peak (VmHWM) over the run {mb(hwm_run):.1f} MB "
          f"(target <= {TARGET_PEAK_MB} MB: {'MET' if mb(hwm_run) <= TARGET_PEAK_MB else 'MISSED'}); "
          f"after the run {mb(rss_after_run):.1f} MB")
    print(f"levels off: {level.get('levels_off')} ({level})")
    print(f"outcomes: {outcomes}")
    if big:
        print(f"big message: {big}")
        print(f"{args.big_mb} MB attachment adds {big['peak_added_mb']} MB at peak = {big['peak_added_factor']} x its size "
              f"(target <= {TARGET_BIG_FACTOR}: {'MET' if big['peak_added_factor'] <= TARGET_BIG_FACTOR else 'MISSED'}); "
              f"{big['after_added_mb']} MB still held after")
    print(common.json_line("memory", {
        "machine": machine, "db": args.db, "messages": args.messages, "connections": args.connections,
        "accepted": load.accepted, "errors": load.errors[:5], "accept_seconds": load.seconds, "run_seconds": run_seconds,
        "rss_start_mb": round(mb(rss_start), 1), "peak_rss_mb": round(mb(hwm_run), 1),
        "rss_after_run_mb": round(mb(rss_after_run), 1), "curve": points, "levelling": level, "outcomes": outcomes,
        "samples": [(round(t, 1), round(mb(r), 1), n) for t, r, n in sampler.samples], "big": big, "serve_exit": exit_code,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
