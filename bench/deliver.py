"""The pipe path and the command line's start-up (issue 16): wall time of `mailgate --version` and
of `mailgate deliver`, one message per process as Postfix's pipe transport runs it.

    .venv/bin/python -m bench.deliver [--runs 20] [--db sqlite|postgresql]

A fresh database with one organisation of three contacts; each run of `deliver` is a new ticket
(three notifications). Timed: `mailgate --version`; `deliver` with no daemon running (it
processes the message itself: schema check, parsing, the transaction, in a forked child under
the budget); `deliver` with `mailgate serve` running (handed over its socket; the daemon
answers once the message is processed). Medians of --runs runs each, after one run not timed
(the message files and the interpreter in the page cache), and the user + system CPU the
deliver processes spent. The package is compiled to bytecode first, as `pip install .` (the
README's service install) and `make install` leave it: where Python may not write bytecode at
import (PYTHONDONTWRITEBYTECODE, a read-only tree), a source checkout would be compiled anew by
every process, which is no installation's cost.
"""

from __future__ import annotations

import argparse
import compileall
import resource
import statistics
import subprocess
import sys
import time

from bench import common
from bench.common import SUPPORT, Serve, log
from bench.mailgen import Directory, Generator


def _timed(argv: list[str], stdin: bytes = b"") -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds of the child, the completed process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, capture_output=True, cwd=common.REPO)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc


def _series(runs: int, argv_for, stdin_for=lambda i: b"") -> dict:
    walls, cpus = [], []
    for i in range(runs + 1):
        wall, cpu, proc = _timed(argv_for(i), stdin_for(i))
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv_for(i))} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
        if i:  # the first run warms the page cache
            walls.append(wall)
            cpus.append(cpu)
    return {"median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
            "cpu_median_s": statistics.median(cpus)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.deliver", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    common.install_signal_handlers()
    compileall.compile_dir(str(common.REPO / "mailgate"), quiet=1)
    machine = common.machine()
    directory = Directory(1, 3)
    gen = Generator(directory, seed=16, run="deliver")
    mailgate = common.mailgate_cmd()
    with common.temp_dir("deliver", keep=args.keep) as workdir, \
            common.database(args.db, workdir, "deliver", args.keep) as url:
        config = common.write_config(workdir, url)
        csv = workdir / "contacts.csv"
        csv.write_text(directory.csv())
        common.cli(config, "contact", "import", str(csv), "--create-orgs")
        mails = [gen.new_ticket(sender=directory.contacts[0]).raw for _ in range(2 * (args.runs + 1))]
        deliver = [*mailgate, "--config", str(config), "deliver", "--sender", directory.contacts[0].email,
                   "--recipient", SUPPORT]
        results = {}
        log(f"mailgate --version x {args.runs + 1}")
        results["version"] = _series(args.runs, lambda i: [*mailgate, "--version"])
        log(f"deliver without a daemon x {args.runs + 1}")
        results["deliver_alone"] = _series(args.runs, lambda i: deliver, lambda i: mails[i])
        with Serve(config):
            log(f"deliver handed to a running daemon x {args.runs + 1}")
            results["deliver_daemon"] = _series(args.runs, lambda i: deliver, lambda i: mails[args.runs + 1 + i])
    print()
    print(f"deliver ({args.db}): medians of {args.runs} runs; machine: {machine['nproc']} x {machine['cpu']}, "
          f"load {machine['loadavg_1m_at_start']}")
    print(common.table([[name, r["median_s"], r["min_s"], r["max_s"], r["cpu_median_s"]] for name, r in results.items()],
                       ["what", "median s", "min s", "max s", "CPU s (median)"]))
    print(common.json_line("deliver", {"machine": machine, "db": args.db, "runs": args.runs, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
