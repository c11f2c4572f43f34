"""Prometheus metrics (SPEC §8): messages by outcome, processing time, spool depth, outbox
depth by status, send failures; and per desk (SPEC §11) messages by desk and outcome, tickets
by desk and status. Served at /metrics by the daemon's HTTP listener.

The counters count every message this instance processed, whichever process took it: the
daemon, its worker processes, and each `mailgate deliver` that an MTA starts — thousands of
short-lived processes a day. They live in one small file per instance,
`<state_dir>/metrics.json`, changed under an flock by whoever processed a message (read,
add, write a temporary file, rename) and read by the daemon's collector when Prometheus
scrapes. Why this and not the alternatives:

- prometheus_client's multiprocess mode keeps a file per process id: `deliver` would leave
  one file per delivered message, unbounded, and reading them all at scrape time grows with
  them;
- counting from the database (inbound records by outcome) counts every instance on a shared
  PostgreSQL database, not this one, and a histogram of processing times is not stored there;
- the flock'ed file is bounded (one file, a few hundred bytes, whatever the number of
  processes), per instance like the spool, survives every process exit and restart, and costs
  one lock, one read and one rename per message (~0.1 ms), outside any database transaction.

The file is rewritten by rename, so a process killed mid-write leaves the old counts; a file
that cannot be read (deleted, damaged) starts the counts again from zero, which Prometheus
reads as a counter reset. The depths are not counted but read at scrape time (the outbox
from the database shared by all instances, the spool from this instance's directory).
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from mailgate.errors import first_line

log = logging.getLogger(__name__)

OUTBOX_STATUSES = ("queued", "sent", "failed", "bounced")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Counts:
    """The instance's counters in `<state_dir>/metrics.json`, shared by all its processes."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / "metrics.json"
        self.lock_path = Path(state_dir) / "metrics.lock"

    def add(self, outcome: str | None = None, seconds: float | None = None, send_failure: str | None = None,
            desk: str | None = None) -> None:
        """Count one processed message (OUTCOME at DESK, and SECONDS it took) or one failed
        sending attempt (SEND_FAILURE: temporary or permanent). Never raises: a metric that
        cannot be counted must not fail the message."""
        try:
            with self._locked():
                counts = self.read()
                if outcome is not None:
                    _bump(counts["messages"], outcome)
                if outcome is not None and desk is not None:
                    _bump(counts.setdefault("desks", {}).setdefault(desk, {}), outcome)
                if seconds is not None:
                    processing = counts["processing"]
                    processing["buckets"][bisect.bisect_left(BUCKETS, seconds)] += 1
                    processing["sum"] += seconds
                if send_failure is not None:
                    _bump(counts["send_failures"], send_failure)
                self._write(counts)
        except OSError as e:
            log.warning("cannot count in %s: %s", self.path, first_line(e))

    def read(self) -> dict:
        try:
            counts = json.loads(self.path.read_text())
            if isinstance(counts, dict) and len(counts.get("processing", {}).get("buckets", ())) == len(BUCKETS) + 1:
                return counts
        except (OSError, ValueError):
            pass
        return {"messages": {}, "send_failures": {}, "desks": {},
                "processing": {"buckets": [0] * (len(BUCKETS) + 1), "sum": 0.0}}

    @contextlib.contextmanager
    def _locked(self):
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _write(self, counts: dict) -> None:
        tmp = self.path.with_name(f".metrics.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(counts, separators=(",", ":")))
        os.replace(tmp, self.path)


def _bump(table: dict, key: str) -> None:
    table[key] = table.get(key, 0) + 1


class Metrics:
    """What processing and sending report to (App.metrics), and the /metrics exposition."""

    def __init__(self, app):
        self.app = app
        self.counts = Counts(app.config.state_dir)
        self._registry = None

    def message(self, outcome: str, seconds: float | None, desk: str | None = None) -> None:
        self.counts.add(outcome=outcome, seconds=seconds, desk=desk)

    def send_failed(self, permanent: bool) -> None:
        self.counts.add(send_failure="permanent" if permanent else "temporary")

    def render(self) -> bytes:
        """The exposition text; blocking (it reads files and queries the database): call it
        off the loop."""
        if self._registry is None:
            self._registry = CollectorRegistry()
            self._registry.register(_Collector(self.app, self.counts))
            self._registry.register(self.app.oauth)  # refresh failures and token expiry by account
        return generate_latest(self._registry)


class _Collector:
    """Everything read at scrape time: the instance's counters and the depths."""

    def __init__(self, app, counts: Counts):
        self.app = app
        self.counts = counts

    def collect(self):
        counts = self.counts.read()
        messages = CounterMetricFamily("mailgate_messages", "Inbound messages processed, by outcome", labels=["outcome"])
        for outcome, n in sorted(counts["messages"].items()):
            messages.add_metric([outcome], n)
        yield messages
        by_desk = CounterMetricFamily("mailgate_desk_messages", "Inbound messages processed, by desk and outcome",
                                      labels=["desk", "outcome"])
        for desk, outcomes in sorted(counts.get("desks", {}).items()):
            for outcome, n in sorted(outcomes.items()):
                by_desk.add_metric([desk, outcome], n)
        yield by_desk
        yield self._histogram(counts["processing"])
        failures = CounterMetricFamily("mailgate_send_failures",
                                       "Outbound delivery attempts that failed, by kind (temporary, permanent)",
                                       labels=["kind"])
        for kind in ("temporary", "permanent"):
            failures.add_metric([kind], counts["send_failures"].get(kind, 0))
        yield failures
        spool = GaugeMetricFamily("mailgate_spool_depth", "Messages in this instance's spool, not yet processed")
        spool.add_metric([], self._spool_depth())
        yield spool
        outbox = GaugeMetricFamily("mailgate_outbox_depth", "Outbound messages by status", labels=["status"])
        for status, count in self._outbox_counts().items():
            outbox.add_metric([status], count)
        yield outbox
        tickets = GaugeMetricFamily("mailgate_tickets", "Tickets by desk and status", labels=["desk", "status"])
        for (desk, status), count in sorted(self._ticket_counts().items()):
            tickets.add_metric([desk, status], count)
        yield tickets

    @staticmethod
    def _histogram(processing: dict) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, n in zip([*map(str, BUCKETS), "+Inf"], processing["buckets"]):
            cumulative += n
            buckets.append((bound, cumulative))
        histogram = HistogramMetricFamily("mailgate_processing_seconds", "Time to process one inbound message")
        histogram.add_metric([], buckets, processing["sum"])
        return histogram

    def _spool_depth(self) -> float:
        try:
            return self.app.spool.depth()
        except OSError:
            return float("nan")  # /healthz says why

    def _ticket_counts(self) -> dict[tuple[str, str], int]:
        """Every ticket of the database by desk and status (an index-only count: ix_ticket_desk_status)."""
        from sqlmodel import func, select

        from mailgate.models import Ticket

        try:
            with self.app.db.read_session() as s:
                return {(desk, status): count for desk, status, count in
                        s.exec(select(Ticket.desk, Ticket.status, func.count()).group_by(Ticket.desk, Ticket.status))}
        except Exception as e:  # a scrape during a database outage still shows the rest
            log.warning("tickets by desk unavailable: %s", first_line(e))
            return {}

    def _outbox_counts(self) -> dict[str, int]:
        from sqlmodel import func, select

        from mailgate.models import Outbound

        counts = dict.fromkeys(OUTBOX_STATUSES, 0)
        try:
            with self.app.db.read_session() as s:
                for status, count in s.exec(select(Outbound.status, func.count()).group_by(Outbound.status)):
                    counts[status] = count
        except Exception as e:  # a scrape during a database outage still shows the rest
            log.warning("outbox depth unavailable: %s", first_line(e))
        return counts
