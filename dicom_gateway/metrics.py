"""Prometheus counters of the gateway, in a registry of its own (``REGISTRY``).

Counted where things happen (the ingest path, the SCP, the sender); state that lives in the
database (outbox depth, jobs) is read at scrape time by ``tamsoat.observability``. Labels carry AE
titles, destination names and status codes, never patient data.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = [
    "ASSOCIATIONS",
    "BYTES_RECEIVED",
    "INSTANCES_RECEIVED",
    "REGISTRY",
    "SEND_ATTEMPTS",
    "SEND_RETRIES",
    "STORE_SECONDS",
    "status_label",
]

REGISTRY = CollectorRegistry(auto_describe=True)

INSTANCES_RECEIVED = Counter(
    "tamsoat_dicom_instances_received",
    "Instances offered to the gateway, by calling AE title (or STOW-RS user), source, outcome "
    "(stored, duplicate, rejected) and the status answered.",
    ["calling_ae", "source", "outcome", "status"],
    registry=REGISTRY,
)
BYTES_RECEIVED = Counter(
    "tamsoat_dicom_received_bytes",
    "Data set bytes received and stored (duplicates included), by calling AE title and source.",
    ["calling_ae", "source"],
    registry=REGISTRY,
)
STORE_SECONDS = Histogram(
    "tamsoat_dicom_store_seconds",
    "Time from a complete data set to its answer: header check, durable spool write, database row.",
    ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
ASSOCIATIONS = Counter(
    "tamsoat_dicom_associations",
    "Association requests to the SCP by calling AE title and result (accepted, rejected).",
    ["calling_ae", "result"],
    registry=REGISTRY,
)
SEND_ATTEMPTS = Counter(
    "tamsoat_outbox_send_attempts",
    "C-STORE attempts of outbox items by destination and outcome (success, retry, dead).",
    ["destination", "outcome"],
    registry=REGISTRY,
)
SEND_RETRIES = Counter(
    "tamsoat_outbox_send_retries",
    "Outbox sends that failed transiently and were scheduled again with backoff, by destination.",
    ["destination"],
    registry=REGISTRY,
)


def status_label(status: int) -> str:
    return f"0x{status:04X}"
