"""End to end: the same CT content sent by DCMTK storescu to two called AE titles of one SCP is analysed by
two different models, chosen by routing rules with ``called_ae_titles``.

SCP (dicom_gateway) -> database rows -> quiet-period close -> ``tamsoat.tasks.analyze_study`` -> Engine.
Models are tiny ONNX graphs (tests/inference/factory_model.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from sqlalchemy import select

from dicom_gateway.assembly import record_instance
from dicom_gateway.scp import StoredInstance
from tamsoat.core.db import Database
from tamsoat.core.domain import StudyState
from tamsoat.core.settings import Settings
from tamsoat.core.tables import Analysis, Study
from tamsoat.research_demo import close_received
from tamsoat.tasks import TaskContext, analyze_study
from tests.dicom_gateway.gateway_helpers import SCP_AE, RunningSCP, needs_dcmtk, run_tool, start_scp
from tests.inference.factory_dicom import write_volume
from tests.inference.factory_model import threshold_model, write_model_folder

RESEARCH_AE = "TAMSOAT_RES"
RULES = {
    "rules": [
        {"name": "research-ct", "model": "lung-nodule-research", "called_ae_titles": [RESEARCH_AE],
         "match": {"Modality": "CT"}, "series": {"min_slices": 20}},
        {"name": "chest-ct", "model": "lung-nodule-phantom", "match": {"Modality": "CT"},
         "series": {"min_slices": 20}},
    ]
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    models = tmp_path / "models"
    write_model_folder(models, threshold_model)
    write_model_folder(models, lambda p: threshold_model(p, level=0.55), model_id="lung-nodule-research")
    routing = tmp_path / "routing.yaml"
    routing.write_text(yaml.safe_dump(RULES), encoding="utf-8")
    return Settings(home=tmp_path, models_dir=models, routing_file=routing, inference_threads=1)


@pytest.fixture
def scp(tmp_path: Path, db: Database, settings: Settings) -> Iterator[RunningSCP]:
    def to_db(stored: StoredInstance) -> None:
        with db.engine.begin() as conn:
            record_instance(conn, stored)

    server = start_scp(tmp_path, extra_ae_titles=[RESEARCH_AE], forward=to_db)
    assert server.spool.root == settings.spool_path  # the worker reads what the SCP spooled
    try:
        yield server
    finally:
        server.scp.stop(grace_s=1)


def _ct_with_a_nodule(out_dir: Path) -> list[Path]:
    """40 axial slices of lung (-800 HU) with a 4 mm bright sphere; new UIDs at every call."""
    k, j, i = np.indices((40, 64, 56))
    inside = ((i - 30) * 0.7) ** 2 + ((j - 30) * 0.75) ** 2 + ((k - 20) * 1.0) ** 2 <= 4.0**2
    return write_volume(out_dir, np.where(inside, 40.0, -800.0), spacing_ijk=(0.7, 0.75, 1.0))


@needs_dcmtk
def test_two_called_ae_titles_route_the_same_content_to_different_models(
    tmp_path: Path, db: Database, settings: Settings, scp: RunningSCP
) -> None:
    studies: dict[str, str] = {}
    for called in (SCP_AE, RESEARCH_AE):
        files = _ct_with_a_nodule(tmp_path / "in" / called)
        result = run_tool("storescu", "-aec", called, "-aet", "MODALITY", "-to", "20", "127.0.0.1",
                          str(scp.port), *map(str, files), timeout=120)
        assert result.returncode == 0, result.stderr
        (studies[called],) = {i.study_instance_uid for i in scp.sink.instances} - set(studies.values())
    assert sorted(close_received(db)) == sorted(studies.values())

    ctx = TaskContext(settings=settings, db=db)
    for uid in studies.values():
        analyze_study(ctx, uid, {})

    with db.session() as s:
        got = {}
        for called, uid in studies.items():
            study = s.get(Study, uid)
            assert study is not None
            assert (study.state, study.called_ae_title) == (StudyState.READY.value, called)
            (analysis,) = s.scalars(select(Analysis).where(Analysis.study_instance_uid == uid)).all()
            got[called] = (analysis.routing_rule, analysis.model_id, len(analysis.findings))
    assert got == {
        SCP_AE: ("chest-ct", "lung-nodule-phantom", 1),
        RESEARCH_AE: ("research-ct", "lung-nodule-research", 1),
    }
