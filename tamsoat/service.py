"""``tamsoat serve``: wires the embedded default — database, spool, DICOM SCP, job runner, web app."""

from __future__ import annotations

import functools
import gc
import logging
import signal
import threading
from typing import Any

import uvicorn

from dicom_gateway.assembly import record_instance
from dicom_gateway.batching import BatchingSink
from dicom_gateway.commitment import CommitmentReport
from dicom_gateway.outbox import apply_commitment_report
from dicom_gateway.scp import StorageSCP
from dicom_gateway.scu import send_files
from dicom_gateway.spool import Spool
from tamsoat.app import create_app
from tamsoat.core.db import Database, migrate
from tamsoat.core.settings import Settings
from tamsoat.jobs import EmbeddedRunner
from tamsoat.observability import outbox_health
from tamsoat.tasks import TaskContext

log = logging.getLogger(__name__)


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        migrate(settings.db_url)
        self.db = Database(settings.db_url)
        self.spool = Spool(settings.spool_path, keep_cached=settings.spool_page_cache)
        self.spool.recover()
        self.ctx = TaskContext(settings=settings, db=self.db,
                               sender=functools.partial(send_files, tls_config=settings.dicom.tls))
        engine = self.ctx.analyzer  # validates the routing rules and every model manifest now, not at the first study
        unserved = engine.router.rules.called_ae_titles() - settings.dicom.called_ae_titles
        if unserved:  # the SCP rejects these called AE titles: no study can match them
            log.warning("routing.called_ae_not_served titles=%s", ",".join(sorted(unserved)))
        self.runner = EmbeddedRunner(self.ctx, workers=settings.workers)
        # Instances arriving together share a commit (group commit).
        self.sink = BatchingSink(self.db, record_instance)
        self.scp = StorageSCP(settings.dicom, self.spool, self.sink, commitment_sink=self._on_commitment)
        self.app = create_app(self.db, probe=self._probe, wake_workers=self.runner.wake, settings=settings)
        # STOW-RS stores through the SCP's ingest path (one way in for every instance).
        self.app.state.ingestor = self.scp.ingestor
        self.app.state.ae_title = settings.dicom.ae_title

    def _on_commitment(self, report: CommitmentReport, calling_ae: str) -> None:
        with self.db.session() as s:
            apply_commitment_report(s, report, actor=calling_ae or "dicom")
        self.runner.wake()

    def _probe(self) -> dict[str, Any]:
        return {"dicom_listening": self.scp.is_running, "workers_alive": self.runner.alive,
                **outbox_health(self.db, self.settings.outbox_stuck_after_s)}

    def start_background(self) -> None:
        """Start everything except the web server."""
        # What starting made (modules, models, routing: ~500k objects with torch and MONAI) lives as
        # long as the process: out of the cyclic collector's sight, a full collection no longer
        # walks it (~200 ms holding the GIL, a pause for every association and request).
        gc.collect()
        gc.freeze()
        self.runner.start()
        self.scp.start()
        log.info("service.started dicom_port=%s web_port=%s home=%s frozen_objects=%d", self.scp.port,
                 self.settings.web.port, self.settings.home, gc.get_freeze_count())

    def stop(self) -> None:
        self.scp.stop()
        self.sink.close()
        self.runner.stop()
        self.db.dispose()
        log.info("service.stopped")

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop everything cleanly (SCP, instance writer, workers)."""
        if threading.current_thread() is threading.main_thread():
            # uvicorn shuts the web server down on these signals and then raises them again with the
            # handlers it found: with the default SIGTERM handler that killed the process before
            # stop() ran. Ours turns it into SystemExit, so the finally below runs.
            signal.signal(signal.SIGTERM, _exit_on_signal)
        self.start_background()
        try:
            server = uvicorn.Server(uvicorn.Config(self.app, host=self.settings.web.host,
                                                   port=self.settings.web.port, log_level="warning"))
            server.run()
        finally:
            self.stop()


def _exit_on_signal(signum: int, _frame: object) -> None:
    log.info("service.stopping signal=%s", signal.Signals(signum).name)
    raise SystemExit(128 + signum)
