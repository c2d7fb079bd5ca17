"""Query/retrieve SCU against DCMTK dcmqrscp: `tamsoat dicom fetch --study UID --from PACS` finds the study
and has the PACS C-MOVE it to our SCP."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from dicom_gateway.qr import QueryError, find_study, move_study
from tamsoat.cli import app
from tamsoat.core.settings import Destination
from tests.dicom_gateway.gateway_helpers import (
    SCP_AE,
    RunningSCP,
    dataset_bytes,
    free_port,
    make_ct_dataset,
    needs_dcmtk,
    wait_for_port,
)

pytestmark = [needs_dcmtk, pytest.mark.dcmtk]


@dataclass
class Qrscp:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def destination(self) -> Destination:
        return Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=self.port)


@pytest.fixture
def pacs(tmp_path: Path, running_scp: RunningSCP) -> Iterator[Qrscp]:
    """dcmqrscp as the PACS; it knows our SCP as TAMSOAT (C-MOVE destination)."""
    storage = tmp_path / "qr-db"
    storage.mkdir()
    port = free_port()
    cfg = tmp_path / "dcmqrscp.cfg"
    cfg.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n\n"
        "HostTable BEGIN\n"
        f"tamsoat = ({SCP_AE}, 127.0.0.1, {running_scp.port})\n"
        "HostTable END\n\nVendorTable BEGIN\nVendorTable END\n\n"
        "AETable BEGIN\n"
        f"PACS {storage} RW (200, 1024mb) ANY\n"
        "AETable END\n"
    )
    proc = subprocess.Popen(["dcmqrscp", "-c", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield Qrscp(port, proc)
    finally:
        proc.terminate()
        proc.wait(10)


def load_pacs(pacs: Qrscp, folder: Path, n: int) -> tuple[str, list[Path]]:
    folder.mkdir()
    study, series = generate_uid(), generate_uid()
    files = []
    for i in range(n):
        path = folder / f"{i}.dcm"
        make_ct_dataset(study_uid=study, series_uid=series, seed=i).save_as(path, enforce_file_format=True)
        files.append(path)
    result = subprocess.run(["storescu", "-aec", "PACS", "-aet", "LOADER", "127.0.0.1", str(pacs.port),
                             *map(str, files)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return str(study), files


def test_find_and_move_a_study_into_our_scp(pacs: Qrscp, running_scp: RunningSCP, tmp_path: Path) -> None:
    study, files = load_pacs(pacs, tmp_path / "src", 5)
    (match,) = find_study(pacs.destination, study, "TAMSOAT")
    assert match.study_instance_uid == study and match.instances in (None, 5)  # dcmqrscp does not count
    assert find_study(pacs.destination, "1.2.3.4.5", "TAMSOAT") == []

    result = move_study(pacs.destination, study, "TAMSOAT", SCP_AE)
    assert result.ok and (result.completed, result.failed) == (5, 0)
    got = {i.sop_instance_uid: i for i in running_scp.sink.instances}
    assert len(got) == 5 and {i.study_instance_uid for i in got.values()} == {study}
    by_sop = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    for sop, inst in got.items():
        assert dataset_bytes(running_scp.spool.path(inst.path)) == dataset_bytes(by_sop[sop])


def test_move_to_an_unknown_ae_fails_with_the_pacs_status(pacs: Qrscp, tmp_path: Path) -> None:
    study, _ = load_pacs(pacs, tmp_path / "src", 1)
    result = move_study(pacs.destination, study, "TAMSOAT", "NOBODY")
    assert not result.ok and result.status is not None and 0xA800 <= result.status <= 0xA8FF  # destination unknown


def test_unreachable_pacs_is_a_query_error() -> None:
    with pytest.raises(QueryError, match="could not associate"):
        find_study(Destination(name="x", ae_title="PACS", host="127.0.0.1", port=1), "1.2.3", "TAMSOAT")


def test_cli_fetch(pacs: Qrscp, running_scp: RunningSCP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAMSOAT_HOME", str(tmp_path / "home"))
    study, _ = load_pacs(pacs, tmp_path / "src", 3)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"dicom: {{ae_title: {SCP_AE}}}\n"
                   f"destinations:\n  - {{name: pacs, ae_title: PACS, host: 127.0.0.1, port: {pacs.port}}}\n")
    runner = CliRunner()
    result = runner.invoke(app, ["dicom", "fetch", "--study", study, "--from", "pacs", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert f"PACS has study {study}" in result.output
    assert "completed 3, failed 0" in result.output
    assert len(running_scp.sink.instances) == 3
    missing = runner.invoke(app, ["dicom", "fetch", "--study", "1.2.3.4", "--from", "pacs", "--config", str(cfg)])
    assert missing.exit_code == 1 and "has no study 1.2.3.4" in missing.output
