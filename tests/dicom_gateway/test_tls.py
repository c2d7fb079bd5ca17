"""DICOM TLS: the SCP with a certificate, requiring client certificates from our CA; DCMTK echoscu and
storescu (built with OpenSSL) and our own SCU as TLS peers."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dicom_gateway.scp import ScpTimeouts, StorageSCP
from dicom_gateway.scu import echo, send_files
from dicom_gateway.spool import Spool
from tamsoat.core.settings import Destination, DicomSettings, DicomTLS
from tests.dicom_gateway.gateway_helpers import SCP_AE, RecordingSink, dataset_bytes, make_ct_dataset, needs_dcmtk

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")


@dataclass
class Pki:
    ca: Path
    server: tuple[Path, Path]  # key, certificate
    client: tuple[Path, Path]
    stranger: tuple[Path, Path]  # signed by another CA


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _issue(folder: Path, name: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-sha256")
    return key, cert


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN={name}", "-sha256")
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = _ca(folder, "tamsoat-test-ca")
    other = _ca(folder, "other-ca")
    return Pki(ca[1], _issue(folder, "TAMSOAT", ca), _issue(folder, "MODALITY", ca), _issue(folder, "STRANGER", other))


@pytest.fixture
def tls_scp(tmp_path: Path, pki: Pki) -> Iterator[tuple[StorageSCP, RecordingSink, Spool]]:
    tls = DicomTLS(cert_file=pki.server[1], key_file=pki.server[0], ca_file=pki.ca)
    settings = DicomSettings(ae_title=SCP_AE, host="127.0.0.1", tls=tls).model_copy(update={"port": 0})
    sink = RecordingSink()
    spool = Spool(tmp_path / "spool", fsync=False)
    scp = StorageSCP(settings, spool, sink, ScpTimeouts(5, 5, 5))
    scp.start()
    try:
        yield scp, sink, spool
    finally:
        scp.stop(grace_s=1)


def _dcmtk_tls(pki: Pki, who: tuple[Path, Path]) -> list[str]:
    return ["+tls", str(who[0]), str(who[1]), "+cf", str(pki.ca)]


@needs_dcmtk
def test_dcmtk_echoscu_over_tls(tls_scp: tuple[StorageSCP, RecordingSink, Spool], pki: Pki) -> None:
    scp = tls_scp[0]
    base = ["echoscu", "-aec", SCP_AE, "-aet", "MODALITY", "-to", "10", "127.0.0.1", str(scp.port)]
    ok = subprocess.run([*base[:1], *_dcmtk_tls(pki, pki.client), *base[1:]], capture_output=True, text=True,
                        timeout=30)
    assert ok.returncode == 0, ok.stderr
    plain = subprocess.run(base, capture_output=True, text=True, timeout=30)
    assert plain.returncode != 0  # no TLS: refused
    stranger = subprocess.run([*base[:1], *_dcmtk_tls(pki, pki.stranger), *base[1:]], capture_output=True,
                              text=True, timeout=30)
    assert stranger.returncode != 0  # a certificate our CA did not sign: refused


@needs_dcmtk
def test_dcmtk_storescu_over_tls(tls_scp: tuple[StorageSCP, RecordingSink, Spool], pki: Pki,
                                 tmp_path: Path) -> None:
    scp, sink, spool = tls_scp
    src = tmp_path / "ct.dcm"
    make_ct_dataset(seed=3, size=64).save_as(src, enforce_file_format=True)
    result = subprocess.run(["storescu", *_dcmtk_tls(pki, pki.client), "-aec", SCP_AE, "-aet", "MODALITY",
                             "-to", "10", "127.0.0.1", str(scp.port), str(src)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    (inst,) = sink.instances
    assert dataset_bytes(spool.path(inst.path)) == dataset_bytes(src)


def test_our_scu_over_tls(tls_scp: tuple[StorageSCP, RecordingSink, Spool], pki: Pki, tmp_path: Path) -> None:
    scp, sink, _spool = tls_scp
    dest = Destination(name="tls", ae_title=SCP_AE, host="127.0.0.1", port=scp.port, tls=True)
    ours = DicomTLS(cert_file=pki.client[1], key_file=pki.client[0], ca_file=pki.ca)
    assert echo(dest, "MODALITY", tls_config=ours).ok
    src = tmp_path / "ct.dcm"
    make_ct_dataset(seed=4).save_as(src, enforce_file_format=True)
    (result,) = send_files(dest, [src], "MODALITY", tls_config=ours)
    assert result.outcome == "success" and len(sink.instances) == 1
    # Without our client certificate the SCP refuses; without TLS too.
    assert not echo(dest, "MODALITY", tls_config=DicomTLS(cert_file=pki.stranger[1], key_file=pki.stranger[0],
                                                          ca_file=pki.ca)).ok
    plain = dest.model_copy(update={"tls": False})
    assert not echo(plain, "MODALITY").ok
