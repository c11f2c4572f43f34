"""Summarise a py-spy raw (collapsed-stack) profile, as written by `bench.ingest --py-spy X.txt`.

    .venv/bin/python -m bench.spysummary /tmp/spy.txt [--under Pipeline.process] [--top 30]

Counts, among the samples whose stack contains --under (default: the pipeline), how many
include each function (inclusive) and how many end in it (self), as shares of those samples.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_FRAME = re.compile(r"^(.*?) \((.*?):\d+\)$")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.spysummary", description=__doc__.split("\n\n")[0])
    p.add_argument("file")
    p.add_argument("--under", default="Pipeline.process", help="only stacks through this function ('' for all)")
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args(argv)
    inclusive, self_, total, everything = Counter(), Counter(), 0, 0
    with open(args.file) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            everything += n
            frames = [_name(fr) for fr in stack.split(";")[1:]]  # the first is the thread
            if args.under:
                idx = next((i for i, fr in enumerate(frames) if fr.startswith(args.under + " ")), None)
                if idx is None:
                    continue
                frames = frames[idx:]
            total += n
            for fr in set(frames):
                inclusive[fr] += n
            if frames:
                self_[frames[-1]] += n
    print(f"{total} of {everything} samples are under {args.under or '(all)'}")
    print("\ninclusive (share of those samples):")
    for fr, n in inclusive.most_common(args.top):
        print(f"  {100 * n / max(total, 1):5.1f}%  {fr}")
    print("\nself:")
    for fr, n in self_.most_common(args.top):
        print(f"  {100 * n / max(total, 1):5.1f}%  {fr}")
    return 0


def _name(frame: str) -> str:
    m = _FRAME.match(frame)
    return f"{m.group(1)} ({m.group(2)})" if m else frame


if __name__ == "__main__":
    raise SystemExit(main())
