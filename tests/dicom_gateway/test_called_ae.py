"""Called AE titles: the SCP answers to its own title and ``dicom.extra_ae_titles`` and rejects any other
with the standard A-ASSOCIATE-RJ reason; the title a study came in on is recorded with it.

Real peers only: DCMTK echoscu/storescu and a pynetdicom requestor on 127.0.0.1."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydicom.uid import generate_uid
from pynetdicom import AE

from dicom_gateway.assembly import record_instance
from dicom_gateway.metrics import REGISTRY
from dicom_gateway.scp import StoredInstance
from tamsoat.core.db import Database
from tamsoat.core.settings import AllowedPeer, DicomSettings
from tamsoat.core.tables import Study
from tests.dicom_gateway.gateway_helpers import SCP_AE, RunningSCP, needs_dcmtk, run_tool, start_scp

EXTRA = "TAMSOAT_RES"
VERIFICATION = "1.2.840.10008.1.1"
# A-ASSOCIATE-RJ (PS3.8 9.3.4): rejected-permanent, DICOM UL service-user, and the diagnostic
CALLING_NOT_RECOGNISED = (0x01, 0x01, 0x03)
CALLED_NOT_RECOGNISED = (0x01, 0x01, 0x07)


@pytest.fixture
def scp(tmp_path: Path, db: Database) -> Iterator[RunningSCP]:
    """An SCP called TAMSOAT and TAMSOAT_RES whose instances are recorded in the database."""
    def to_db(stored: StoredInstance) -> None:
        with db.engine.begin() as conn:
            record_instance(conn, stored)

    server = start_scp(tmp_path, extra_ae_titles=[EXTRA], forward=to_db)
    try:
        yield server
    finally:
        server.scp.stop(grace_s=1)


def _associate(port: int, called_ae: str, calling_ae: str = "MODALITY") -> tuple[int, int, int] | None:
    """None when the association is established (then released), else the A-ASSOCIATE-RJ's
    (result, source, diagnostic)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if assoc.is_established:
        assoc.release()
        return None
    rsp = assoc.acceptor.primitive
    assert assoc.is_rejected and rsp is not None
    assert rsp.result is not None and rsp.result_source is not None and rsp.diagnostic is not None
    return int(rsp.result), int(rsp.result_source), int(rsp.diagnostic)


def _rejected_count() -> float:
    value = REGISTRY.get_sample_value("tamsoat_dicom_associations_total",
                                      {"calling_ae": "(unlisted)", "result": "rejected"})
    return value or 0.0


def _echo(port: int, called_ae: str) -> tuple[int, str]:
    result = run_tool("echoscu", "-v", "-aec", called_ae, "-aet", "MODALITY", "-to", "10", "127.0.0.1", str(port))
    return result.returncode, result.stdout + result.stderr


@needs_dcmtk
def test_echoscu_own_and_extra_titles_accepted_unknown_rejected(scp: RunningSCP) -> None:
    assert _echo(scp.port, SCP_AE)[0] == 0
    assert _echo(scp.port, EXTRA)[0] == 0
    rc, output = _echo(scp.port, "ELSEWHERE")
    assert rc != 0
    assert "Association Rejected" in output
    assert "Rejected Permanent" in output and "Service User" in output
    assert "Called AE Title Not Recognized" in output
    assert _echo(scp.port, SCP_AE)[0] == 0  # still serving


def test_unknown_called_ae_is_rejected_with_the_standard_reason(
    scp: RunningSCP, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dicom_gateway.scp")
    before = _rejected_count()
    assert _associate(scp.port, SCP_AE) is None
    assert _associate(scp.port, EXTRA) is None
    assert _associate(scp.port, "ELSEWHERE") == CALLED_NOT_RECOGNISED
    assert _associate(scp.port, "tamsoat_res") == CALLED_NOT_RECOGNISED  # AE titles are case-sensitive
    assert _rejected_count() == before + 2
    assert ("dicom.assoc.rejected reason=called_ae_not_recognised calling_ae=MODALITY called_ae=ELSEWHERE "
            "peer=127.0.0.1") in caplog.text
    assert f"dicom.assoc.accepted calling_ae=MODALITY called_ae={EXTRA} peer=127.0.0.1" in caplog.text


def test_calling_ae_is_checked_before_called_ae(tmp_path: Path) -> None:
    server = start_scp(tmp_path, allowed_peers=[AllowedPeer(ae_title="MODALITY", host="127.0.0.1")],
                       extra_ae_titles=[EXTRA])
    try:
        assert _associate(server.port, EXTRA) is None
        assert _associate(server.port, "ELSEWHERE") == CALLED_NOT_RECOGNISED
        assert _associate(server.port, EXTRA, calling_ae="INTRUDER") == CALLING_NOT_RECOGNISED
        assert _associate(server.port, "ELSEWHERE", calling_ae="INTRUDER") == CALLING_NOT_RECOGNISED
    finally:
        server.scp.stop(grace_s=1)


def test_without_extra_titles_only_the_own_title_is_answered(running_scp: RunningSCP) -> None:
    assert _associate(running_scp.port, SCP_AE) is None
    assert _associate(running_scp.port, EXTRA) == CALLED_NOT_RECOGNISED
    assert _associate(running_scp.port, "ANY-SCP") == CALLED_NOT_RECOGNISED  # pynetdicom's default


@needs_dcmtk
def test_the_study_records_the_called_ae_title(
    scp: RunningSCP, db: Database, ct_factory: Callable[..., Path]
) -> None:
    studies = {SCP_AE: generate_uid(), EXTRA: generate_uid()}
    for called, study_uid in studies.items():
        files = [ct_factory(study_uid=study_uid, series_uid=generate_uid()) for _ in range(2)]
        result = run_tool("storescu", "-aec", called, "-aet", "MODALITY", "-to", "10", "127.0.0.1",
                          str(scp.port), *map(str, files))
        assert result.returncode == 0, result.stderr
    got = {(i.study_instance_uid, i.called_ae_title) for i in scp.sink.instances}
    assert got == {(uid, called) for called, uid in studies.items()}
    with db.session() as s:
        for called, uid in studies.items():
            study = s.get(Study, uid)
            assert study is not None and study.called_ae_title == called


def test_extra_ae_titles_are_validated_and_stripped() -> None:
    settings = DicomSettings(ae_title="TAMSOAT", extra_ae_titles=[" TAMSOAT_RES ", "CAD"])
    assert settings.extra_ae_titles == ["TAMSOAT_RES", "CAD"]
    assert settings.called_ae_titles == {"TAMSOAT", "TAMSOAT_RES", "CAD"}
    assert DicomSettings().extra_ae_titles == []
    for bad in ("MUCH_TOO_LONG_AE_TITLE", "A\\B", "   ", ""):
        with pytest.raises(ValidationError, match="extra_ae_titles"):
            DicomSettings(extra_ae_titles=[bad])
