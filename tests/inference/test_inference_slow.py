"""Full-size checks: a 300-slice 512x512 series, and the shipped model on a phantom (slow)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from factory_dicom import write_volume

from inference.dicom_series import load_series
from inference.pipeline import analyze_series
from inference.registry import Registry
from tamsoat.core.settings import REPO_ROOT

SHIPPED_MODEL = "lung-nodule-phantom"


@pytest.mark.slow
def test_load_series_300_slices_of_512(tmp_path: Path) -> None:
    hu = np.full((300, 512, 512), -1000.0, dtype=np.float32)
    hu[:, 100:400, 80:430] = -800.0
    hu[150, 256, 255] = 100.0
    paths = write_volume(tmp_path, hu, origin=(-179.6, -179.6, -400.0), spacing_ijk=(0.7, 0.7, 1.0),
                         shuffle_seed=11)
    del hu
    start = time.perf_counter()
    volume = load_series(paths)
    seconds = time.perf_counter() - start
    print(f"load_series: 300 x 512 x 512 in {seconds:.2f} s")
    assert volume.array.shape == (300, 512, 512)
    k, j, i = np.unravel_index(int(np.argmax(volume.array)), volume.array.shape)
    assert (k, j, i) == (150, 256, 255)
    np.testing.assert_allclose(volume.index_to_patient([i, j, k]), (-179.6 + 255 * 0.7, -179.6 + 256 * 0.7, -250.0))
    assert seconds < 15.0  # ~1-2 s on an idle core; generous for shared CI machines


@pytest.mark.slow
def test_shipped_model_finds_a_large_phantom_nodule(tmp_path: Path) -> None:
    models = REPO_ROOT / "models"
    if not (models / SHIPPED_MODEL).is_dir():
        pytest.skip("the shipped model is not in models/ yet")
    phantom_mod = pytest.importorskip("training.phantom")
    series_mod = pytest.importorskip("training.series")
    phantom = phantom_mod.make_phantom(
        101, shape_kji=(120, 256, 256), spacing_ijk=(1.25, 1.25, 1.5), nodule_diameters_mm=[20.0, 12.0]
    )
    paths = series_mod.write_ct_series(phantom, tmp_path / "ct")
    model = Registry(models).load(SHIPPED_MODEL, threads=2)
    result = analyze_series(paths, model)
    print({k: round(v, 2) for k, v in result.timings.items()}, result.detections)
    largest = max(phantom.nodules, key=lambda n: n.diameter_mm)
    distances = [np.linalg.norm(np.subtract(d.center_mm, largest.center_mm)) for d in result.detections]
    assert distances and min(distances) < largest.diameter_mm / 2
