"""Prometheus metrics (SPEC §8): messages by outcome, processing time, spool depth, outbox
depth by status, send failures. Served at /metrics by the daemon's HTTP listener.

Counters live in this process; the depths are read when Prometheus scrapes (the outbox from
the database shared by all instances, the spool from this instance's directory).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from mailgate.errors import first_line

log = logging.getLogger(__name__)

OUTBOX_STATUSES = ("queued", "sent", "failed", "bounced")


class Metrics:
    def __init__(self, app):
        self.registry = CollectorRegistry()
        self.messages = Counter(
            "mailgate_messages", "Inbound messages processed, by outcome", ["outcome"], registry=self.registry)
        self.processing = Histogram(
            "mailgate_processing_seconds", "Time to process one inbound message", registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.send_failures = Counter(
            "mailgate_send_failures", "Outbound delivery attempts that failed, by kind (temporary, permanent)",
            ["kind"], registry=self.registry)
        self.registry.register(_Depths(app))
        self.registry.register(app.oauth)  # refresh failures and token expiry by account

    def message(self, outcome: str, seconds: float | None) -> None:
        self.messages.labels(outcome).inc()
        if seconds is not None:
            self.processing.observe(seconds)

    def send_failed(self, permanent: bool) -> None:
        self.send_failures.labels("permanent" if permanent else "temporary").inc()

    def render(self) -> bytes:
        """The exposition text; blocking (it queries the database): call it off the loop."""
        return generate_latest(self.registry)


class _Depths:
    """Gauges read at scrape time."""

    def __init__(self, app):
        self.app = app

    def collect(self):
        spool = GaugeMetricFamily("mailgate_spool_depth", "Messages in this instance's spool, not yet processed")
        spool.add_metric([], self.app.spool.depth())
        yield spool
        outbox = GaugeMetricFamily("mailgate_outbox_depth", "Outbound messages by status", labels=["status"])
        for status, count in self._outbox_counts().items():
            outbox.add_metric([status], count)
        yield outbox

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
