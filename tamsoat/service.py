"""``tamsoat serve``: wires the embedded default — database, spool, DICOM SCP, job runner, web app."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from dicom_gateway.assembly import record_instance
from dicom_gateway.scp import StorageSCP, StoredInstance
from dicom_gateway.spool import Spool
from tamsoat.app import create_app
from tamsoat.core.db import Database, migrate
from tamsoat.core.settings import Settings
from tamsoat.jobs import EmbeddedRunner
from tamsoat.tasks import TaskContext

log = logging.getLogger(__name__)


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        migrate(settings.db_url)
        self.db = Database(settings.db_url)
        self.spool = Spool(settings.spool_path)
        self.spool.recover()
        self.ctx = TaskContext(settings=settings, db=self.db)
        self.runner = EmbeddedRunner(self.ctx, workers=settings.workers)
        self.scp = StorageSCP(settings.dicom, self.spool, self._on_stored)
        self.app = create_app(self.db, probe=self._probe, wake_workers=self.runner.wake)

    def _on_stored(self, stored: StoredInstance) -> None:
        with self.db.session() as s:
            record_instance(s, stored)

    def _probe(self) -> dict[str, Any]:
        return {"dicom_listening": self.scp.is_running, "workers_alive": self.runner.alive}

    def start_background(self) -> None:
        """Start everything except the web server."""
        if not self.settings.dicom.allowed_peers:
            log.warning("dicom.allow_list_empty any calling AE title may store to this service")
        self.runner.start()
        self.scp.start()
        log.info("service.started dicom_port=%s web_port=%s home=%s", self.scp.port, self.settings.web.port,
                 self.settings.home)

    def stop(self) -> None:
        self.scp.stop()
        self.runner.stop()
        self.db.dispose()
        log.info("service.stopped")

    def serve_forever(self) -> None:
        self.start_background()
        try:
            server = uvicorn.Server(uvicorn.Config(self.app, host=self.settings.web.host,
                                                   port=self.settings.web.port, log_level="warning"))
            server.run()
        finally:
            self.stop()
