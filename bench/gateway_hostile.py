"""The adversarial campaign of issue 13: every hostile shape of tests/hostile.py at growing
scales up to the size limit, the `hang` and `hog` failpoints (a library bug that loops or
allocates without end), each over SMTP to a real `mailgate serve` at the default limits, with
an ordinary mail right after it. Reports the cases run, the worst time to an outcome, the
worst time for the ordinary mail behind a case, and the peak RSS of the daemon and its
workers together (sampled every 10 ms).

    .venv/bin/python -m bench.gateway_hostile [--db sqlite|postgresql] [--scales 1,4,16,64]

(The shapes come from tests/gateway_hostile.py, which the CI share of this campaign uses too.)
"""

from __future__ import annotations

import argparse
import os
import smtplib
import time

from bench import common
from tests import gateway_hostile as hostile

MB = 1024 * 1024
MAX_SIZE = 26214400  # smtp.max_message_size at its default


def _send(port: int, raw: bytes) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
        try:
            client.sendmail(hostile.FROM, [common.SUPPORT], raw)
        except smtplib.SMTPDataError as e:
            return e.smtp_code
    return 250


def _wait_record(reader: common.Reader, message_id: str, timeout: float = 300) -> str:
    quoted = message_id.replace("'", "''")
    sql = f"SELECT outcome FROM inbound WHERE message_id = '{quoted}'"
    return common.wait_until(lambda: (rows := reader.rows(sql)) and rows[0][0], timeout, 0.05,
                             f"an outcome for {message_id}")


def _wait_ticket(reader: common.Reader, summary: str, timeout: float = 300) -> None:
    quoted = summary.replace("'", "''")
    common.wait_until(lambda: reader.scalar(f"SELECT COUNT(*) FROM ticket WHERE summary = '{quoted}'"),
                      timeout, 0.05, f"the ticket {summary}")


def campaign(db: str, scales: list[int]) -> dict:
    from mailgate.mail.headers import message_id_of

    cases = []
    env_points = "pipeline=hang:FAILPOINT-HANG,parse=hog:FAILPOINT-HOG"  # one action per point
    with common.temp_dir("hostile") as workdir, common.database(db, workdir, "hostile") as url:
        config = common.write_config(workdir, url, log_level="INFO",
                                     extra={"outbound": {"max_per_recipient_per_hour": 6}})
        common.cli(config, "org", "add", "Acme")
        common.cli(config, "contact", "add", hostile.FROM, "--name", "Alice Adams", "--org", "Acme")
        os.environ["MAILGATE_FAILPOINTS"] = env_points
        serve = common.Serve(config).start()
        reader = common.Reader(url)
        n = 0
        try:
            _send(serve.smtp_port, hostile.ordinary(0))
            _wait_ticket(reader, "Ordinary 0")
            work = [(name, scale) for scale in scales for name in hostile.SHAPES]
            work += [("failpoint_hang", 1), ("failpoint_hog", 1)]
            with hostile.PeakRss(serve.pid) as rss:
                for name, scale in work:
                    n += 1
                    raw = (hostile.ordinary(n).replace(b"Subject: Ordinary", b"Subject: FAILPOINT-"
                                                       + name.split("_")[1].upper().encode() + b" x")
                           if name.startswith("failpoint") else hostile.SHAPES[name](scale, n))
                    if len(raw) > MAX_SIZE:
                        continue
                    rss.take()
                    started = time.monotonic()
                    code = _send(serve.smtp_port, raw)
                    outcome = _wait_record(reader, message_id_of(raw)) if code == 250 else f"smtp {code}"
                    to_outcome = time.monotonic() - started
                    behind = time.monotonic()
                    _send(serve.smtp_port, hostile.ordinary(n + 10_000))
                    _wait_ticket(reader, f"Ordinary {n + 10_000}")
                    case = {"case": name, "scale": scale, "bytes": len(raw), "outcome": outcome,
                            "seconds_to_outcome": to_outcome, "ordinary_after_seconds": time.monotonic() - behind,
                            "peak_rss_mb": common.mb(rss.take())}
                    cases.append(case)
                    common.log(f"{name} ×{scale}: {len(raw)} bytes → {outcome} in {to_outcome:.1f}s, "
                               f"ordinary after it {case['ordinary_after_seconds']:.1f}s, "
                               f"peak {case['peak_rss_mb']:.0f} MB")
            peak = rss.peak
        finally:
            reader.close()
            serve.stop()
            os.environ.pop("MAILGATE_FAILPOINTS", None)
    return {"cases": cases, "peak_rss_mb": common.mb(peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--scales", default="1,4,16,64")
    args = parser.parse_args()
    common.install_signal_handlers()
    result = campaign(args.db, [int(s) for s in args.scales.split(",")])
    cases = result["cases"]
    print(common.table([[c["case"], c["scale"], c["bytes"], c["outcome"], c["seconds_to_outcome"],
                         c["ordinary_after_seconds"], c["peak_rss_mb"]] for c in cases],
                       ["case", "scale", "bytes", "outcome", "s to outcome", "s ordinary after", "peak MB"]))
    worst = max(cases, key=lambda c: c["seconds_to_outcome"])
    worst_rss = max(cases, key=lambda c: c["peak_rss_mb"])
    summary = {"db": args.db, "cases_run": len(cases), "worst_seconds_to_outcome": worst["seconds_to_outcome"],
               "worst_case": f"{worst['case']} ×{worst['scale']}",
               "worst_ordinary_after_seconds": max(c["ordinary_after_seconds"] for c in cases),
               "peak_rss_mb": result["peak_rss_mb"], "peak_rss_case": f"{worst_rss['case']} ×{worst_rss['scale']}",
               "machine": common.machine()}
    print(common.json_line("hostile", summary))


if __name__ == "__main__":
    main()
