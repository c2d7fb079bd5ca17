"""Group commit for the instance sink: instances that arrive together share one transaction (one
commit, one WAL fsync), whichever association brought them.

There is no writer thread. A caller queues its instance, then takes the commit lock; the caller
that gets it (the leader) records every instance queued by then in one transaction and tells their
callers how it went; a caller whose instance a leader already recorded returns at once. With one
association each instance is recorded in its own caller's thread, with no hand-over; with several,
the instances that queued while a commit ran go together in the next.

Each caller still waits until *its* instance is committed before the SCP answers, so durability is
unchanged; concurrent associations just stop paying one commit each, and no longer race each other
to create the same study row. If a batch fails, its instances are retried one by one, so one bad
instance fails only its own C-STORE.

The sink keeps one database connection (checking one out of the pool and back, and an ORM session,
for every batch cost more than the statements); a connection the database dropped is replaced.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

from dicom_gateway.ingest import StoredInstance
from tamsoat.core.db import Database

__all__ = ["BatchingSink"]

LOG = logging.getLogger(__name__)

Record = Callable[[Connection, StoredInstance], None]


class _Entry:
    """One queued instance and, once a leader has recorded it, how that went."""

    __slots__ = ("done", "error", "stored")

    def __init__(self, stored: StoredInstance) -> None:
        self.stored = stored
        self.done = False
        self.error: BaseException | None = None


class BatchingSink:
    """An :data:`~dicom_gateway.ingest.InstanceSink` that calls ``record(connection, stored)``,
    committing up to ``max_batch`` waiting instances together (thread-safe)."""

    def __init__(self, db: Database, record: Record, max_batch: int = 64) -> None:
        self.db = db
        self.record = record
        self.max_batch = max_batch
        self._queue: list[_Entry] = []
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()  # held by the leader while it records a batch
        self._connection: Connection | None = None  # used only under the commit lock
        self._closed = False

    def __call__(self, stored: StoredInstance) -> None:
        """Record ``stored``; returns once it is committed, else raises what recording it raised
        (the SCP turns that into a status)."""
        entry = _Entry(stored)
        with self._queue_lock:
            if self._closed:
                raise RuntimeError("the instance writer is stopped")
            self._queue.append(entry)
        while not entry.done:
            with self._commit_lock:
                if not entry.done:
                    self._lead()
        if entry.error is not None:
            raise entry.error

    def close(self) -> None:
        """Refuse new instances, let the ones already queued be recorded, release the connection."""
        with self._queue_lock:
            self._closed = True
        with self._commit_lock:
            while self._queue:
                self._lead()
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _lead(self) -> None:
        with self._queue_lock:
            batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
        try:
            self._write(batch)
        finally:  # interrupted (e.g. KeyboardInterrupt in the leader): its followers must not wait on
            for entry in batch:
                if not entry.done:
                    entry.error = RuntimeError("recording was interrupted")
                    entry.done = True

    def _write(self, batch: list[_Entry]) -> None:
        if len(batch) > 1:
            try:
                with self._transaction() as conn:
                    for entry in batch:
                        self.record(conn, entry.stored)
            except Exception as exc:
                LOG.warning("instance_writer.batch_failed size=%d error=%s; recording one by one", len(batch),
                            type(exc).__name__)
            else:
                for entry in batch:
                    entry.done = True
                return
        for entry in batch:
            try:
                self._write_one(entry.stored)
            except BaseException as exc:
                entry.error = exc
            entry.done = True

    def _write_one(self, stored: StoredInstance) -> None:
        for attempt in range(3):
            try:
                with self._transaction() as conn:
                    self.record(conn, stored)
                return
            except (IntegrityError, OperationalError):
                # Another gateway process created the same study meanwhile, or the database was
                # busy: a fresh transaction sees the other's work.
                if attempt == 2:
                    raise

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A transaction on the kept connection: commits on success, rolls back on error."""
        conn = self._connection
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                conn.close()
            conn = self._connection = self.db.engine.connect()
        with conn.begin():
            yield conn
