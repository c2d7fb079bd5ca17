"""``tamsoat demo``: a synthetic chest CT with nodules, sent by C-STORE to a running service."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pydicom

from dicom_gateway.scu import send_files
from tamsoat.core.settings import Destination
from training.phantom import make_phantom
from training.series import write_ct_series, write_ground_truth


def run_demo(*, host: str, port: int, called_ae: str, calling_ae: str, seed: int, slices: int,
             out: Path | None) -> str:
    """Generate, send, and return a few lines telling the user where to look. Raises RuntimeError."""
    with tempfile.TemporaryDirectory(prefix="tamsoat-demo-") as tmp:
        folder = out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        phantom = make_phantom(seed, shape_kji=(slices, 512, 512))
        paths = write_ct_series(phantom, folder / "series", seed=seed)
        write_ground_truth(phantom, folder / "ground_truth.json")
        t_gen = time.perf_counter() - t0
        dest = Destination(name="service", ae_title=called_ae, host=host, port=port)
        t1 = time.perf_counter()
        results = send_files(dest, paths, calling_ae)
        t_send = time.perf_counter() - t1
        failed = [r for r in results if r.outcome != "success"]
        if failed:
            raise RuntimeError(
                f"{len(failed)} of {len(paths)} instances were not stored by {called_ae}@{host}:{port}: "
                f"{failed[0].message}"
            )
        study_uid = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    nodules = "\n".join(
        f"  - {n.kind} nodule, {n.diameter_mm:.1f} mm at ({n.center_mm[0]:.1f}, {n.center_mm[1]:.1f}, "
        f"{n.center_mm[2]:.1f}) mm" for n in phantom.nodules
    )
    kept = f"\nSeries and ground truth kept in {folder}" if out else ""
    return (
        f"Sent {len(paths)} CT instances (512x512, 1.25 mm slices) of study {study_uid} to "
        f"{called_ae}@{host}:{port} in {t_send:.1f} s (generated in {t_gen:.1f} s).\n"
        f"The phantom holds these nodules (ground truth):\n{nodules}\n"
        f"The study is analysed once no instance has arrived for the quiet period. Then:\n"
        f"  curl -H 'Authorization: Bearer <token>' http://127.0.0.1:8000/api/v1/studies/{study_uid}\n"
        f"  (make a token with: tamsoat users add NAME --role radiologist && tamsoat tokens create NAME)\n"
        f"API documentation: http://127.0.0.1:8000/docs{kept}"
    )
