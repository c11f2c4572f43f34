"""Hostile-input campaign (issue 13): every shape of tests/hostile.py at growing sizes, random
mutations of the fixture corpus (and of the real-world corpus when it is there), and a
sample through the real pipeline — each timed and its peak memory traced.

    .venv/bin/python -m bench.hostile [--max-mb 4] [--mutations 2000] [--pipeline 60] [--seed 1]

Per case: `parse()` then `quotes.new_text()`, timed, then again under tracemalloc for the
peak of Python allocations (C libraries' own buffers not included); the pipeline sample goes through `pipe.deliver` on a
temporary SQLite database and its process peak RSS is reported. A case fails when anything
but `UnparseableMessage` escapes. Prints a table of the worst cases and a `BENCH_JSON {...}`
line with every figure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from mailgate.mail import quotes
from mailgate.mail.parse import UnparseableMessage, parse
from tests import hostile, realworld

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "emails"


def measure(raw: bytes) -> dict:
    """Time of one untraced run, then the peak of a traced one (tracemalloc slows Python-level
    loops several times over, so the two are not measured together)."""
    started = time.perf_counter()
    outcome = _read(raw)
    seconds = time.perf_counter() - started
    tracemalloc.start()
    _read(raw)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"bytes": len(raw), "seconds": seconds, "peak": peak, "outcome": outcome}


def _read(raw: bytes) -> str:
    try:
        parsed = parse(raw)
        quotes.new_text(parsed.text, parsed.subject)
    except UnparseableMessage as e:
        return "refused: " + str(e)[:50]
    except BaseException as e:  # what the campaign is looking for
        return f"ERROR {type(e).__name__}: {str(e)[:80]}"
    return "parsed"


def shape_cases(max_bytes: int):
    """Every shape at sizes growing by 4 up to MAX_BYTES of message."""
    for name, make in hostile.SHAPES.items():
        unit = max(1, len(make(1000)) - len(make(0))) / 1000 if name not in ("deep nesting",) else 60
        n = 1000
        while True:
            raw = make(n)
            yield f"{name} n={n}", raw
            if len(raw) * 4 > max_bytes or n > 10_000_000 or (make(0) == make(n)):
                break
            n = max(n * 4, int(max_bytes / 16 / unit))


def corpus() -> list[bytes]:
    mails = [p.read_bytes() for p in sorted(FIXTURES.rglob("*.eml"))]
    if realworld.available():
        mails += [c.raw for c in realworld.zammad_cases()] + [raw for _, raw in realworld.other_mail()]
    return mails


def mutated(raw: bytes, rng: random.Random) -> bytes:
    """RAW with one hostile change: cut, bytes flipped, a slice repeated, boundary-like lines,
    wrapped in nested multiparts, or a header made deep."""
    kind = rng.randrange(6)
    at = rng.randrange(len(raw) + 1)
    if kind == 0:
        return raw[:at]
    if kind == 1:
        data = bytearray(raw)
        for _ in range(rng.randint(1, 50)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 2:
        piece = raw[at:at + rng.randint(1, 200)]
        return raw[:at] + piece * rng.randint(10, 5000) + raw[at:]
    if kind == 3:
        return raw[:at] + b"\r\n--" + bytes(rng.randrange(33, 127) for _ in range(8)) + b"\r\n" * rng.randint(1, 3000) + raw[at:]
    if kind == 4:
        body = raw
        for i in range(rng.randint(1, 40)):
            body = (b'Content-Type: multipart/mixed; boundary="w%d"\r\n\r\n--w%d\r\n' % (i, i) + body
                    + b"\r\n--w%d--\r\n" % i)
        return hostile.FROM + b"Subject: wrapped\r\n" + body
    return b"To: support@example.com, " + b"(" * rng.randint(100, 5000) + b"\r\n" + raw


def pipeline_sample(cases, count: int) -> list[dict]:
    """The first COUNT of CASES through `pipe.deliver` on a temporary database."""
    from mailgate import config as config_module
    from mailgate import contacts
    from mailgate.app import App
    from mailgate.ingest import pipe
    from tests.support import SUPPORT, write_config

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = write_config(root / "c.toml", root / "state", f"sqlite:///{root / 'db'}",
                            {"policy": {"max_new_tickets_per_sender_per_hour": 0}, "logging": {"level": "ERROR"}})
        app = App(config_module.load(path)).prepare()
        with app.db.session() as s:
            contacts.add_organisation(s, "Acme")
            contacts.add_contact(s, "alice@acme.example", "Alice", "Acme")
        results = []
        for name, raw in itertools.islice(cases, count):
            started = time.perf_counter()
            delivery = pipe.deliver(app, raw, "alice@acme.example", SUPPORT)
            outcome = delivery.result.outcome if delivery.result else f"ERROR exit {delivery.exit_code}: {delivery.error}"
            results.append({"case": name, "bytes": len(raw), "seconds": time.perf_counter() - started, "outcome": outcome})
        app.db.dispose()
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-mb", type=float, default=4.0)
    parser.add_argument("--mutations", type=int, default=2000)
    parser.add_argument("--pipeline", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)

    mails = corpus()
    mutations = ((f"mutation {i}", mutated(rng.choice(mails), rng)) for i in range(args.mutations))
    results, biggest = [], []
    for name, raw in itertools.chain(shape_cases(int(args.max_mb * 1024 * 1024)), mutations):
        result = measure(raw)
        result["case"] = name
        results.append(result)
        print(f"{name:40} {len(raw) / 1e6:7.2f} MB {result['seconds']:6.2f} s {result['peak'] / 1e6:7.1f} MB  {result['outcome']}",
              file=sys.stderr)
        if not name.startswith("mutation"):
            biggest = sorted([*biggest, (name, raw)], key=lambda c: -len(c[1]))[:args.pipeline // 2]
    sample = itertools.chain(biggest, ((f"mutation {i}", mutated(rng.choice(mails), rng)) for i in itertools.count()))
    through = pipeline_sample(sample, args.pipeline)
    report(results, through)
    return 1 if any(r["outcome"].startswith("ERROR") for r in [*results, *through]) else 0


def report(results: list[dict], through: list[dict]) -> None:
    worst_time = max(results, key=lambda r: r["seconds"])
    worst_peak = max(results, key=lambda r: r["peak"])
    worst_ratio = max((r for r in results if r["bytes"] > 64 * 1024), key=lambda r: r["peak"] / r["bytes"])
    errors = [r for r in [*results, *through] if r["outcome"].startswith("ERROR")]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"cases run (parse + new_text): {len(results)}; through the pipeline: {len(through)}; errors: {len(errors)}")
    print(f"worst time:   {worst_time['seconds']:.2f} s  ({worst_time['case']}, {worst_time['bytes'] / 1e6:.2f} MB)")
    print(f"worst peak:   {worst_peak['peak'] / 1e6:.1f} MB traced  ({worst_peak['case']}, {worst_peak['bytes'] / 1e6:.2f} MB)")
    print(f"worst ratio:  {worst_ratio['peak'] / worst_ratio['bytes']:.1f} x the message  ({worst_ratio['case']})")
    slowest = max(through, key=lambda r: r["seconds"]) if through else None
    if slowest:
        print(f"pipeline:     slowest {slowest['seconds']:.2f} s ({slowest['case']}); process peak RSS {rss_mb:.0f} MB")
    for r in errors[:20]:
        print(f"  {r['case']}: {r['outcome']}")
    print("BENCH_JSON " + json.dumps({
        "cases": len(results), "pipeline_cases": len(through), "errors": len(errors),
        "worst_seconds": round(worst_time["seconds"], 3), "worst_seconds_case": worst_time["case"],
        "worst_peak_mb": round(worst_peak["peak"] / 1e6, 1), "worst_peak_case": worst_peak["case"],
        "worst_peak_ratio": round(worst_ratio["peak"] / worst_ratio["bytes"], 1),
        "pipeline_worst_seconds": round(slowest["seconds"], 3) if slowest else None,
        "peak_rss_mb": round(rss_mb),
    }))


if __name__ == "__main__":
    sys.exit(main())
