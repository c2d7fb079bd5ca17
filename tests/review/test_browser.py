"""The radiologist's day in a real browser (Playwright driving Debian's chromium), end to end:
log in, worklist, open a study, scroll, accept, edit, reject, add, sign; the SR that a DCMTK
storescp receives holds exactly those decisions, passes dciodvfy and round-trips through highdicom.

Set TAMSOAT_SCREENSHOTS=1 to (re)write docs/worklist.png and docs/viewer.png from this run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from review.imaging import SeriesGeometry
from tamsoat.core.domain import StudyState
from tamsoat.core.settings import Destination
from tamsoat.core.tables import Finding, OutboxItem, Report, Study
from tamsoat.tasks import TaskContext, report_study, send_outbox
from tests.review.checks import dciodvfy_errors, read_sr
from tests.review.conftest import LiveServer, Web, free_port, need_tool
from tests.review.seed import PASSWORD, seed_study

pytestmark = [pytest.mark.slow, pytest.mark.dcmtk]
DOCS = Path(__file__).resolve().parents[2] / "docs"


def _wait(page: Any, selector: str, timeout: float = 15000) -> None:
    page.wait_for_selector(selector, timeout=timeout)


def _slice(page: Any) -> int:
    return int(page.get_attribute("#image", "data-slice"))


def _go_to_slice(page: Any, k: int) -> None:
    page.keyboard.press("Home")
    page.wait_for_selector('#image[data-slice="0"]')
    for _ in range(k):
        page.keyboard.press("ArrowDown")
    page.wait_for_selector(f'#image[data-slice="{k}"]')


def _screen_point(page: Any, geometry: SeriesGeometry, col: float, row: float) -> tuple[float, float]:
    """Where image pixel (col, row) is on the screen at zoom 1 (the viewer's own layout rule)."""
    box = page.locator("#image").bounding_box()
    w, h = box["width"], box["height"]
    cs, rs = geometry.col_spacing_mm, geometry.row_spacing_mm
    s = min(w / (geometry.columns * cs), h / (geometry.rows * rs)) * 0.98
    ox = (w - geometry.columns * cs * s) / 2
    oy = (h - geometry.rows * rs * s) / 2
    return box["x"] + ox + col * cs * s, box["y"] + oy + row * rs * s


def test_radiologist_reviews_signs_and_pacs_receives_the_sr(web: Web, browser: Any, tmp_path: Path) -> None:
    # The PACS: DCMTK storescp on loopback.
    pacs_dir = tmp_path / "pacs"
    pacs_dir.mkdir()
    port = free_port()
    storescp = subprocess.Popen([need_tool("storescp"), "--aetitle", "PACS", "--output-directory", str(pacs_dir),
                                 str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    web.settings.destinations.append(Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port))

    study = seed_study(web.db, web.spool, slices=48)
    seed_study(web.db, web.spool, seed=5, slices=24, patient_name="NGUYEN^VAN AN", patient_id="VN-0107",
               diameters=(7.0, 5.0, 4.0, 6.0), false_positive=False)
    claimed = seed_study(web.db, web.spool, seed=8, slices=24, patient_name="TRAN^THI MAI", patient_id="VN-0311",
                         diameters=(10.0, 6.5, 4.5, 5.0), model=("lung-nodule-phantom", "0.2.0"))
    signed = seed_study(web.db, web.spool, seed=9, slices=24, patient_name="LE^HOANG NAM", patient_id="VN-0420",
                        diameters=(5.0, 4.0, 3.5, 6.0), false_positive=False)
    with web.db.session() as s:  # one study already signed by a colleague, to show on the worklist
        for f in s.query(Finding).filter(Finding.id.in_(signed.finding_ids)):
            f.decision, f.decided_by = "accept", "binh"
        row = s.get(Study, signed.uid)
        row.state, row.signed_by, row.lung_rads = StudyState.SIGNED.value, "binh", "2"
        other = s.get(Study, claimed.uid)  # a colleague is reading this one: the claim shows on the worklist
        other.claimed_by, other.claimed_at = "binh", datetime.now(UTC)
    geometry = SeriesGeometry.from_files(study.paths)
    ids = study.finding_ids
    shots = os.environ.get("TAMSOAT_SCREENSHOTS") == "1"

    with LiveServer(web.app) as server:
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # Log in; the login page comes first.
        page.goto(server.url + "/")
        _wait(page, "#username")
        page.fill("#username", "lan")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        _wait(page, "#worklist")
        rows = page.locator("#worklist tbody tr[data-uid]")
        assert rows.count() == 3  # the signed study is not in the to-do list
        assert rows.first.get_attribute("data-uid") == study.uid  # the most suspicious first (4B)
        if shots:
            page.goto(server.url + "/?state=all")
            _wait(page, "#worklist")
            page.screenshot(path=str(DOCS / "worklist.png"))
            page.goto(server.url + "/")

        # Open the study: claimed, first finding selected, its slice shown.
        page.click(f"tr[data-uid='{study.uid}'] a.patient")
        _wait(page, "#image[data-rendered-ms]")
        _wait(page, "#release")
        first = _slice(page)

        # Scroll by keys and by wheel; every change of a loaded slice is far under 100 ms.
        times = []
        for n in range(1, 13):
            page.keyboard.press("ArrowDown")
            page.wait_for_selector(f'#image[data-slice="{first + n}"]')
            times.append(float(page.get_attribute("#image", "data-rendered-ms")))
        page.mouse.move(*_screen_point(page, geometry, 256, 256))
        page.mouse.wheel(0, -120)
        page.wait_for_selector(f'#image[data-slice="{first + 11}"]')
        assert statistics.median(times) < 100, times

        # Window presets and drag to window.
        page.keyboard.press("2")
        assert "350 / 50" in page.inner_text("#ov-bl")
        page.keyboard.press("1")
        assert "1500 / -600" in page.inner_text("#ov-bl")

        # j/k walk the findings; a accepts the selected one (N1).
        page.keyboard.press("j")
        page.keyboard.press("k")
        page.keyboard.press("a")
        _wait(page, f"li.finding[data-id='{ids[0]}'].dec-accept")

        # Edit N2: diameter and type.
        page.click(f"#edit-{ids[1]}")
        page.fill("#ed-diameter", "11")
        page.select_option("#ed-type", "part_solid")
        page.click("#ed-confirm")
        _wait(page, f"li.finding[data-id='{ids[1]}'].dec-accept")

        # Reject N4 (the false positive) with a reason.
        page.click(f"#reject-{ids[3]}")
        page.select_option("#ed-reason", "vessel")
        page.click("#ed-confirm")
        _wait(page, f"li.finding[data-id='{ids[3]}'].dec-reject")
        if shots:
            page.click(f"li.finding[data-id='{ids[1]}']")
            page.wait_for_timeout(400)
            page.screenshot(path=str(DOCS / "viewer.png"))

        page.click(f"#accept-{ids[2]}")
        _wait(page, f"li.finding[data-id='{ids[2]}'].dec-accept")

        # Add the nodule the AI missed: n, go to its slice, click its centre.
        assert study.missed is not None
        col, row, k = geometry.to_pixel(study.missed.center_mm)
        page.click("#image")
        page.keyboard.press("n")
        _go_to_slice(page, round(k))
        page.mouse.click(*_screen_point(page, geometry, col, row))
        _wait(page, "#ed-diameter")
        page.fill("#ed-diameter", "8")
        page.click("#ed-confirm")
        _wait(page, "li.finding.src-radiologist")

        # Study level: Lung-RADS suggested and editable; sign with s.
        assert page.input_value("#lung-rads") == "4B"
        page.select_option("#lung-rads", "4A")
        page.click("#image")
        page.keyboard.press("s")
        page.click("#confirm-yes")
        _wait(page, "#banner.done")
        assert errors == [], errors
        context.close()

    with web.db.session() as s:
        findings = {f.id: f for f in s.query(Finding)}
        added = [f for f in findings.values() if f.source == "radiologist"]
        assert len(added) == 1
        assert abs(added[0].center_z_mm - study.missed.center_mm[2]) < 2.0  # clicked on the right place
        assert findings[ids[1]].diameter_mm == 11.0 and findings[ids[1]].nodule_type == "part_solid"
        assert findings[ids[3]].decision == "reject" and findings[ids[3]].reason == "vessel"

    # The worker's part: write the report, send it to the PACS.
    ctx = TaskContext(settings=web.settings, db=web.db)
    report_study(ctx, study.uid, {})
    with web.db.session() as s:
        items = [i.id for i in s.query(OutboxItem)]
    try:
        for item in items:
            send_outbox(ctx, str(item), {})
        deadline = time.monotonic() + 30
        while not list(pacs_dir.glob("SR*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        storescp.terminate()
        storescp.wait(10)
    received = list(pacs_dir.glob("SR*"))
    assert len(received) == 1, list(pacs_dir.iterdir())
    assert dciodvfy_errors(received[0]) == []
    ds, groups, comments = read_sr(received[0])
    with web.db.session() as s:
        report = s.query(Report).filter_by(kind="sr").one()
        assert report.sop_instance_uid == ds.SOPInstanceUID
    by_uid = {g.tracking_uid: g for g in groups}
    expected = {findings[ids[0]].tracking_uid, findings[ids[1]].tracking_uid, findings[ids[2]].tracking_uid,
                added[0].tracking_uid}
    assert set(by_uid) == expected  # exactly the accepted, edited and added ones; not the rejected one
    assert by_uid[findings[ids[1]].tracking_uid].measurements == {"Diameter": 11.0}
    assert by_uid[findings[ids[1]].tracking_uid].person == "Nguyen^Lan"
    assert by_uid[added[0].tracking_uid].person == "Nguyen^Lan"
    assert by_uid[added[0].tracking_uid].measurements == {"Diameter": 8.0}
    assert "Certainty of Finding" in by_uid[findings[ids[0]].tracking_uid].measurements
    assert comments == ["Lung-RADS v2022 category 4A"] and ds.VerificationFlag == "VERIFIED"
