"""Every common transfer syntax, produced by DCMTK (pydicom + pylibjpeg-openjpeg for JPEG 2000) and sent
by DCMTK storescu proposing it: accepted, stored byte-exactly as received, decodable when needed."""

from __future__ import annotations

import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from tests.dicom_gateway.gateway_helpers import SCP_AE, RunningSCP, dataset_bytes, make_ct_dataset, needs_dcmtk

pytestmark = [needs_dcmtk, pytest.mark.dcmtk]


def dcmtk(*args: str) -> Callable[[Path, Path], None]:
    def make(src: Path, out: Path) -> None:
        result = subprocess.run([*args, str(src), str(out)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr

    return make


def j2k(src: Path, out: Path) -> None:
    ds = dcmread(src)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.save_as(out, enforce_file_format=True)


def inflate(data: bytes) -> bytes:
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)


def copy(src: Path, out: Path) -> None:
    out.write_bytes(src.read_bytes())


# (transfer syntax, how the file is made, storescu's proposal option, lossless)
CASES = {
    "implicit-le": (ImplicitVRLittleEndian, dcmtk("dcmconv", "+ti"), "-xi", True),
    "explicit-le": (ExplicitVRLittleEndian, copy, "-xe", True),
    "deflated": (DeflatedExplicitVRLittleEndian, dcmtk("dcmconv", "+td"), "-xd", True),
    "explicit-be": (ExplicitVRBigEndian, dcmtk("dcmconv", "+tb"), "-xb", True),
    "jpeg-baseline": (JPEGBaseline8Bit, dcmtk("dcmcjpeg", "+eb"), "-xy", False),
    "jpeg-lossless-sv1": (JPEGLosslessSV1, dcmtk("dcmcjpeg", "+e1"), "-xs", True),
    "jpeg-ls-lossless": (JPEGLSLossless, dcmtk("dcmcjpls", "+el"), "-xt", True),
    "jpeg-2000-lossless": (JPEG2000Lossless, j2k, "-xv", True),
    "rle-lossless": (RLELossless, dcmtk("dcmcrle"), "-xr", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_transfer_syntax_stored_exactly_as_received(running_scp: RunningSCP, tmp_path: Path, case: str) -> None:
    syntax, make, propose, lossless = CASES[case]
    plain = tmp_path / "plain.dcm"
    make_ct_dataset(seed=11, size=64).save_as(plain, enforce_file_format=True)
    src = tmp_path / f"{case}.dcm"
    make(plain, src)
    assert dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax

    result = subprocess.run(["storescu", "-R", propose, "-aec", SCP_AE, "-aet", "MODALITY", "-to", "10", "-v",
                             "127.0.0.1", str(running_scp.port), str(src)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr

    (inst,) = running_scp.sink.instances
    assert inst.transfer_syntax_uid == syntax
    stored = running_scp.spool.path(inst.path)
    if syntax == DeflatedExplicitVRLittleEndian:
        # storescu inflates the file and deflates it again for the wire (padding to an even length),
        # so the bytes received are not the file's; what arrived was stored, and inflates the same.
        assert inflate(dataset_bytes(stored)).rstrip(b"\0") == inflate(dataset_bytes(src)).rstrip(b"\0")
    else:
        assert dataset_bytes(stored) == dataset_bytes(src), "stored exactly as received"
    ds = dcmread(stored)
    assert ds.file_meta.TransferSyntaxUID == syntax
    # Decoded only when needed (inference): the pixel plugins can.
    pixels = ds.pixel_array
    reference = dcmread(src).pixel_array
    assert pixels.shape == (64, 64)
    assert np.array_equal(pixels, reference)
    if lossless:
        assert np.array_equal(pixels, dcmread(plain).pixel_array)
