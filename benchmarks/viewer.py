"""Viewer slice-change latency on loopback, against a reference: a static-file fetch of the same bytes.

    .venv/bin/python benchmarks/viewer.py [--slices 200] [--requests 200] [--no-browser]

It seeds a 512x512 synthetic CT series (no model needed), serves the real app with uvicorn on
127.0.0.1, and measures:

* server, cold: GET /studies/{uid}/slices/{k} the first time (DICOM decoded from the spool);
* server, warm: the same request again (decoded slice cached);
* reference: GET of a static file holding the very same 512 KiB, from the same server;
* browser (Debian's chromium via Playwright, unless --no-browser): from the key press to the
  slice painted in the canvas, as the page itself times it (performance.now() around fetch, window
  and draw), for slices not yet loaded and for slices already prefetched.

Prints medians and p95 in ms and the ratio of the warm slice fetch to the static reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi.staticfiles import StaticFiles

from tamsoat.app import create_app
from tamsoat.core.db import Database, migrate
from tests.review.conftest import CHROMIUM, CHROMIUM_ARGS, LiveServer, make_settings
from tests.review.seed import PASSWORD, add_users, login, seed_study


def _stats(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return f"median {statistics.median(values):7.2f} ms   p95 {p95:7.2f} ms   (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tamsoat-bench-") as tmp_name:
        tmp = Path(tmp_name)
        url = f"sqlite:///{tmp / 'bench.db'}"
        migrate(url)
        db = Database(url)
        settings = make_settings(tmp)
        add_users(db)
        t0 = time.perf_counter()
        study = seed_study(db, settings.spool_path, slices=args.slices)
        print(f"seeded {args.slices} slices of 512x512 in {time.perf_counter() - t0:.1f} s")
        app = create_app(db, settings=settings)
        static_dir = tmp / "static"
        static_dir.mkdir()
        app.mount("/bench-static", StaticFiles(directory=static_dir), name="bench-static")

        with LiveServer(app) as server:
            from fastapi.testclient import TestClient

            with TestClient(app, base_url=server.url) as tc:  # only to log in and copy the cookie
                login(tc, "lan")
                cookie = tc.cookies.get("tamsoat_session")
            with httpx.Client(base_url=server.url, cookies={"tamsoat_session": cookie or ""}) as http:
                n = min(args.requests, args.slices)
                cold, warm, static = [], [], []
                for k in range(n):
                    t = time.perf_counter()
                    r = http.get(f"/studies/{study.uid}/slices/{k}")
                    cold.append((time.perf_counter() - t) * 1000)
                    r.raise_for_status()
                (static_dir / "slice.bin").write_bytes(r.content)
                for _ in range(3):  # warm up both paths
                    http.get(f"/studies/{study.uid}/slices/0")
                    http.get("/bench-static/slice.bin")
                for i in range(args.requests):
                    k = i % args.slices
                    t = time.perf_counter()
                    http.get(f"/studies/{study.uid}/slices/{k}").raise_for_status()
                    warm.append((time.perf_counter() - t) * 1000)
                    t = time.perf_counter()
                    http.get("/bench-static/slice.bin").raise_for_status()
                    static.append((time.perf_counter() - t) * 1000)
            print(f"slice bytes: {len(r.content)} (int16 HU, {len(r.content) // 2 // 512}x512)")
            print(f"server, cold slice (decode DICOM): {_stats(cold)}")
            print(f"server, warm slice (cached):       {_stats(warm)}")
            print(f"reference, static file same bytes: {_stats(static)}")
            print(f"ratio warm slice / static file: {statistics.median(warm) / statistics.median(static):.2f}")
            print(f"ratio cold slice / static file: {statistics.median(cold) / statistics.median(static):.2f}")

            if not args.no_browser and Path(CHROMIUM).exists():
                _browser(server.url, study.uid, args.slices)


def _browser(base: str, study_uid: str, slices: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(f"{base}/login")
        page.fill("#username", "lan")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("#worklist")
        page.goto(f"{base}/studies/{study_uid}")
        page.wait_for_selector("#image[data-rendered-ms]")
        page.click("#image")
        page.keyboard.press("Home")
        page.wait_for_selector('#image[data-slice="0"]')
        fresh, cached = [], []
        # Jump ahead by 30 slices (Page Down x3), beyond what is prefetched: a slice not loaded yet.
        k = 0
        while k + 30 < slices:
            k += 30
            for _ in range(3):
                page.keyboard.press("PageDown")
            page.wait_for_selector(f'#image[data-slice="{k}"]')
            page.wait_for_timeout(300)
            fresh.append(float(page.get_attribute("#image", "data-rendered-ms") or "nan"))
        page.wait_for_timeout(1500)  # let the prefetch fill the neighbourhood
        for _ in range(20):
            k -= 1
            page.keyboard.press("ArrowUp")
            page.wait_for_selector(f'#image[data-slice="{k}"]')
            cached.append(float(page.get_attribute("#image", "data-rendered-ms") or "nan"))
        browser.close()
    fresh = [v for v in fresh if v == v]
    print(f"browser, key -> painted, slice not loaded yet: {_stats(fresh)}")
    print(f"browser, key -> painted, slice prefetched:     {_stats(cached)}")


if __name__ == "__main__":
    main()
