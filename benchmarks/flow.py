"""Seconds from the last instance received to findings stored, for the demo study, by stage.

Starts ``tamsoat serve`` on loopback with a temporary home, sends the demo study (``tamsoat demo``),
waits for the findings and prints the breakdown that the service recorded for the analysis. The
reference in the same run is the time DCMTK's storescu→storescp takes to move the same series, so
the ratio says how many "network transfers" of time the AI adds after the last instance.

    .venv/bin/python benchmarks/flow.py [--slices 300] [--quiet-period 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} not listening")


def dcmtk_transfer_s(series: Path) -> float:
    out = Path(tempfile.mkdtemp(prefix="flow-ref-"))
    port = free_port()
    env = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK's switch against 40 ms delayed-ACK stalls per instance
    scp = subprocess.Popen(["storescp", "--output-directory", str(out), str(port)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        t0 = time.perf_counter()
        subprocess.run(["storescu", "+sd", "+r", "127.0.0.1", str(port), str(series)], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0
    finally:
        scp.terminate()
        scp.wait()
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--quiet-period", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="flow-bench-"))
    dicom_port, web_port = free_port(), free_port()
    env = {**os.environ, "TAMSOAT_HOME": str(home)}
    serve = subprocess.Popen(
        [str(BIN / "tamsoat"), "serve", "--dicom-port", str(dicom_port), "--web-port", str(web_port),
         "--quiet-period", str(args.quiet_period)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(web_port)
        wait_port(dicom_port)
        subprocess.run([str(BIN / "tamsoat"), "users", "add", "bench", "--role", "radiologist"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        token = subprocess.run([str(BIN / "tamsoat"), "tokens", "create", "bench"], env=env, check=True,
                               capture_output=True, text=True).stdout.strip()
        series = home / "demo"
        subprocess.run([str(BIN / "tamsoat"), "demo", "--port", str(dicom_port), "--slices", str(args.slices),
                        "--seed", str(args.seed), "--out", str(series)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        api = httpx.Client(base_url=f"http://127.0.0.1:{web_port}", headers={"Authorization": f"Bearer {token}"})
        deadline = time.monotonic() + 600
        study: dict[str, object] = {}
        while time.monotonic() < deadline:
            listing = api.get("/api/v1/studies").json()
            if listing and listing[0]["state"] in ("ready", "failed", "skipped"):
                study = api.get(f"/api/v1/studies/{listing[0]['study_instance_uid']}").json()
                break
            time.sleep(0.5)
        if study.get("state") != "ready":
            raise SystemExit(f"study did not become ready: {study.get('state')} {study.get('error')}")
        timings = study["analysis"]["timings_s"]  # type: ignore[index]
        reference = dcmtk_transfer_s(series / "series")
    finally:
        serve.terminate()
        serve.wait(30)
        shutil.rmtree(home, ignore_errors=True)

    total = timings["last_instance_to_stored_s"]
    print(f"demo study: {args.slices} slices of 512x512, quiet period {args.quiet_period:.1f} s, "
          f"{study['findings']} findings")
    print(f"{'stage':<34}{'seconds':>9}")
    print(f"{'quiet period + queue wait':<34}{total - timings['total']:>9.2f}")
    for stage in ("read", "volume", "resample", "inference", "postprocess"):
        print(f"{'  ' + stage:<34}{timings[stage]:>9.2f}")
    print(f"{'analysis total':<34}{timings['total']:>9.2f}")
    print(f"{'last instance -> findings stored':<34}{total:>9.2f}")
    print(f"reference: DCMTK storescu->storescp of the same series: {reference:.2f} s")
    print(f"ratio (last instance -> findings stored) / (DCMTK transfer): {total / reference:.2f}")


if __name__ == "__main__":
    main()
