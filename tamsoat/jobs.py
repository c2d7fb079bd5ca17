"""The embedded job runner: worker threads that claim jobs from the database and run the task
functions, plus the sweeper that closes quiet studies. A Celery worker (scale-out) calls the same
task functions through ``run_job``."""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable

from dicom_gateway.assembly import close_quiet_studies
from tamsoat.core import queue
from tamsoat.core.db import Database
from tamsoat.tasks import HEAVY_KINDS, TASKS, RetryLater, TaskContext, on_study_closed

log = logging.getLogger(__name__)


def run_job(ctx: TaskContext, job_id: int, kind: str, key: str, payload: dict[str, object]) -> None:
    """Run one claimed job and record its outcome: done, retry later, or failed with the reason."""
    task = TASKS.get(kind)
    try:
        if task is None:
            raise ValueError(f"unknown job kind {kind!r}")
        task(ctx, key, payload)
    except RetryLater as exc:
        log.warning("job.retry id=%s kind=%s key=%s delay_s=%.1f reason=%s", job_id, kind, key, exc.delay_s, exc)
        with ctx.db.session() as s:
            queue.retry_later(s, job_id, exc.delay_s, str(exc))
        return
    except Exception as exc:
        log.error("job.failed id=%s kind=%s key=%s error=%s", job_id, kind, key, exc)
        log.debug("job.failed traceback\n%s", traceback.format_exc())
        with ctx.db.session() as s:
            queue.fail(s, job_id, f"{type(exc).__name__}: {exc}")
        return
    with ctx.db.session() as s:
        queue.finish(s, job_id)


class EmbeddedRunner:
    """Worker threads and a study sweeper inside the service process."""

    def __init__(self, ctx: TaskContext, workers: int, poll_s: float = 0.25) -> None:
        self.ctx = ctx
        self.workers = workers
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wake = threading.Event()

    def start(self) -> None:
        with self.ctx.db.session() as s:
            n = queue.requeue_interrupted(s)
        if n:
            log.warning("jobs.requeued_interrupted count=%d", n)
        # Analysis is heavy: one worker takes it; the others keep sending results meanwhile.
        for i in range(self.workers):
            self._spawn(f"worker-{i}", lambda name: self._work(name, None))
        self._spawn("sender", lambda name: self._work(name, tuple(k for k in TASKS if k not in HEAVY_KINDS)))
        self._spawn("sweeper", lambda _name: self._sweep())

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)

    @property
    def alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def _spawn(self, name: str, target: Callable[[str], None]) -> None:
        t = threading.Thread(target=target, args=(name,), name=f"tamsoat-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def _work(self, name: str, kinds: tuple[str, ...] | None) -> None:
        db: Database = self.ctx.db
        while not self._stop.is_set():
            try:
                with db.session() as s:
                    job = queue.claim(s, name, kinds)
                    claimed = None if job is None else (job.id, job.kind, job.key, dict(job.payload))
                if claimed is None:
                    self._wake.wait(self.poll_s)
                    self._wake.clear()
                    continue
                run_job(self.ctx, *claimed)
            except Exception:
                log.exception("worker.error worker=%s", name)
                self._stop.wait(1.0)

    def _sweep(self) -> None:
        while not self._stop.is_set():
            try:
                with self.ctx.db.session() as s:
                    closed = close_quiet_studies(s, self.ctx.settings.quiet_period_s, on_study_closed)
                if closed:
                    self._wake.set()
            except Exception:
                log.exception("sweeper.error")
            self._stop.wait(min(1.0, self.ctx.settings.quiet_period_s / 4))
