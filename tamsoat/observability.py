"""Metrics read from the database at scrape time (outbox depth, jobs, studies) and the outbox part
of the health check. The gateway's own counters live in ``dicom_gateway.metrics``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from dicom_gateway import metrics as gateway_metrics
from dicom_gateway.outbox import oldest_open_age_s, outbox_depth
from tamsoat.core.db import Database
from tamsoat.core.tables import Job, Study

__all__ = ["DatabaseCollector", "outbox_health", "render_metrics"]


class DatabaseCollector(Collector):
    """Gauges computed from the database on each scrape, so every process reports the same truth."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("tamsoat_outbox_items", "Outbox items by destination and state.",
                                  labels=["destination", "state"])
        oldest = GaugeMetricFamily("tamsoat_outbox_oldest_open_seconds",
                                   "Age of the oldest result still waiting to be sent or committed (0: none).")
        jobs = GaugeMetricFamily("tamsoat_jobs", "Jobs by kind and state.", labels=["kind", "state"])
        studies = GaugeMetricFamily("tamsoat_studies", "Studies by state.", labels=["state"])
        with self.db.session() as s:
            for (destination, state), n in sorted(outbox_depth(s).items()):
                depth.add_metric([destination, state], n)
            oldest.add_metric([], oldest_open_age_s(s) or 0.0)
            for kind, state, n in s.execute(
                select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
            ).all():
                jobs.add_metric([str(kind), str(state)], int(n))
            for state, n in s.execute(select(Study.state, func.count()).group_by(Study.state)).all():
                studies.add_metric([str(state)], int(n))
        yield from (depth, oldest, jobs, studies)


def render_metrics(db: Database) -> bytes:
    """The Prometheus text exposition: the gateway's counters, then the database gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(db))
    return generate_latest(gateway_metrics.REGISTRY) + generate_latest(registry)


def outbox_health(db: Database, stuck_after_s: float) -> dict[str, Any]:
    """``outbox_flowing`` is False while a result has waited longer than ``stuck_after_s``."""
    with db.session() as s:
        age = oldest_open_age_s(s)
    return {"outbox_oldest_open_s": None if age is None else round(age, 1),
            "outbox_flowing": age is None or age <= stuck_after_s}
