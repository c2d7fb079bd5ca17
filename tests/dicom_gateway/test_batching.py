"""The batching (group-commit) instance sink."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from dicom_gateway.assembly import record_instance
from dicom_gateway.batching import BatchingSink
from dicom_gateway.ingest import StoredInstance
from tamsoat.core.db import Database
from tamsoat.core.tables import Instance, Study

BASE = StoredInstance(
    sop_instance_uid="1.2.3.4.0", sop_class_uid="1.2.840.10008.5.1.4.1.1.2", study_instance_uid="1.2.3",
    series_instance_uid="1.2.3.4", transfer_syntax_uid="1.2.840.10008.1.2.1", path="x/0.dcm", sha256="a" * 64,
    size=10, version=1, duplicate=False, calling_ae_title="CT1", called_ae_title="TAMSOAT",
    peer_address="127.0.0.1", attributes={"Modality": "CT"},
)


def test_concurrent_first_instances_of_one_study_all_succeed(db: Database) -> None:
    """Eight associations bringing the first instances of one new study at the same moment: every
    instance is recorded and there is one study (unbatched, the losers of the race got 0xC001)."""
    sink = BatchingSink(db, record_instance)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def association(n: int) -> None:
        start.wait()
        for i in range(10):
            try:
                sink(replace(BASE, sop_instance_uid=f"1.2.3.4.{n}.{i}", path=f"x/{n}.{i}.dcm"))
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=association, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    sink.close()
    assert errors == []
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 80
        assert s.scalar(select(func.count()).select_from(Study)) == 1


def test_a_failing_instance_fails_alone(db: Database) -> None:
    def record(conn: Connection, stored: StoredInstance) -> None:
        if stored.sop_instance_uid.endswith(".bad"):
            raise ValueError("cannot record this one")
        record_instance(conn, stored)

    sink = BatchingSink(db, record)
    results: dict[str, str] = {}
    start = threading.Barrier(6)

    def send(sop: str) -> None:
        start.wait()
        try:
            sink(replace(BASE, sop_instance_uid=sop, path=f"x/{sop}.dcm"))
            results[sop] = "ok"
        except ValueError:
            results[sop] = "failed"

    sops = ["1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.bad", "1.2.3.4.3", "1.2.3.4.4", "1.2.3.4.5"]
    threads = [threading.Thread(target=send, args=(sop,)) for sop in sops]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    sink.close()
    assert results == {sop: ("failed" if sop.endswith("bad") else "ok") for sop in sops}
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 5
    with pytest.raises(RuntimeError, match="stopped"):
        sink(BASE)


def test_a_lone_caller_records_in_its_own_thread(db: Database) -> None:
    """No hand-over to another thread when nobody else is recording (one association)."""
    threads: list[threading.Thread] = []

    def record(conn: Connection, stored: StoredInstance) -> None:
        threads.append(threading.current_thread())
        record_instance(conn, stored)

    sink = BatchingSink(db, record)
    for i in range(3):
        sink(replace(BASE, sop_instance_uid=f"1.2.3.4.{i}", path=f"x/{i}.dcm"))
    sink.close()
    assert threads == [threading.current_thread()] * 3


def test_a_dropped_connection_is_replaced(db: Database) -> None:
    sink = BatchingSink(db, record_instance)
    sink(replace(BASE, sop_instance_uid="1.2.3.4.1", path="x/1.dcm"))
    assert sink._connection is not None
    sink._connection.invalidate()  # as after the database server restarted
    sink(replace(BASE, sop_instance_uid="1.2.3.4.2", path="x/2.dcm"))
    sink.close()
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 2


def test_close_records_what_is_queued_and_releases_the_connection(db: Database) -> None:
    sink = BatchingSink(db, record_instance)
    sink(BASE)
    sink.close()
    assert sink._connection is None
    with pytest.raises(RuntimeError, match="stopped"):
        sink(replace(BASE, sop_instance_uid="1.2.3.4.9"))
