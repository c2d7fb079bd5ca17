"""Group commit for the instance sink: one writer thread records the instances of every association,
and instances that arrive together share one transaction (one commit, one WAL fsync).

Each caller still waits until *its* instance is committed before the SCP answers, so durability is
unchanged; concurrent associations just stop paying one commit each, and no longer race each other
to create the same study row. If a batch fails, its instances are retried one by one, so one bad
instance fails only its own C-STORE.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from dicom_gateway.ingest import StoredInstance
from tamsoat.core.db import Database

__all__ = ["BatchingSink"]

LOG = logging.getLogger(__name__)

Record = Callable[[Session, StoredInstance], None]
_STOP = object()


class BatchingSink:
    """An :data:`~dicom_gateway.ingest.InstanceSink` that calls ``record(session, stored)`` in one
    writer thread, committing up to ``max_batch`` waiting instances together."""

    def __init__(self, db: Database, record: Record, max_batch: int = 64) -> None:
        self.db = db
        self.record = record
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def __call__(self, stored: StoredInstance) -> None:
        future: Future[None] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the instance writer is stopped")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tamsoat-instance-writer", daemon=True)
                self._thread.start()
            self._queue.put((stored, future))
        future.result()  # re-raises the record's exception in the caller (the SCP turns it into a status)

    def close(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
            self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._write(batch)  # type: ignore[arg-type]
            if stop:
                return

    def _write(self, batch: list[tuple[StoredInstance, Future[None]]]) -> None:
        if len(batch) > 1:
            try:
                with self.db.session() as s:
                    for stored, _ in batch:
                        self.record(s, stored)
            except Exception as exc:
                LOG.warning("instance_writer.batch_failed size=%d error=%s; recording one by one", len(batch),
                            type(exc).__name__)
            else:
                for _, future in batch:
                    future.set_result(None)
                return
        for stored, future in batch:
            try:
                self._write_one(stored)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)

    def _write_one(self, stored: StoredInstance) -> None:
        for attempt in range(3):
            try:
                with self.db.session() as s:
                    self.record(s, stored)
                return
            except (IntegrityError, OperationalError):
                # Another gateway process created the same study meanwhile, or the database was
                # busy: a fresh transaction sees the other's work.
                if attempt == 2:
                    raise
