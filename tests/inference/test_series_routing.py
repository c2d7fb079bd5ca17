"""Routing rules are validated data; the router picks the right series and says why it skipped others."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factory_dicom import AXIAL, ct_header, stack_positions
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from inference.routing import Router, RoutingError, group_by_series, load_rules, parse_rules
from tamsoat.core.settings import PACKAGE_DEFAULTS

STUDY = generate_uid()


def _series(
    count: int,
    step: float = 1.25,
    orientation: Sequence[float] = AXIAL,
    drop: int | None = None,
    **header: Any,
) -> tuple[str, list[Dataset]]:
    uid = generate_uid()
    positions = stack_positions((-150, -150, -300), orientation, step, count)
    headers = [
        ct_header(series_uid=uid, study_uid=STUDY, position=p, orientation=orientation, rows=8, columns=8,
                  instance_number=n + 1, **header)
        for n, p in enumerate(positions)
        if n != drop
    ]
    return uid, headers


@pytest.fixture
def router() -> Router:
    return Router.from_file(PACKAGE_DEFAULTS / "routing.yaml")


def test_default_rules_load() -> None:
    rules = load_rules(PACKAGE_DEFAULTS / "routing.yaml")
    assert rules.model_ids() == {"lung-nodule-phantom"}


def test_picks_the_thin_axial_series_and_says_why_others_were_skipped(router: Router) -> None:
    thin_uid, thin = _series(240, 1.25)
    thick_uid, thick = _series(120, 2.5, description="Chest 2.5mm")
    same_count_uid, same_count = _series(240, 1.5, description="Chest 1.5mm soft")
    scout_uid, scout = _series(2, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), description="Topogram")
    mpr_uid, mpr = _series(
        100, 1.0, orientation=(1, 0, 0, 0, 0, -1), image_type=("DERIVED", "SECONDARY"), description="Coronal 1mm"
    )
    derived_uid, derived = _series(100, 1.0, image_type=("DERIVED", "SECONDARY", "AXIAL"), description="Ax")
    sr_uid, sr = _series(30, modality="SR")
    gap_uid, gap = _series(300, 1.0, drop=150)
    coronal_uid, coronal = _series(80, 1.0, orientation=(1, 0, 0, 0, 0, -1), description="Chest")
    head_uid, head = _series(100, 1.0, body_part="HEAD")
    study = {
        scout_uid: scout, thick_uid: thick, thin_uid: thin, same_count_uid: same_count, mpr_uid: mpr,
        derived_uid: derived, sr_uid: sr, gap_uid: gap, coronal_uid: coronal, head_uid: head,
    }
    decision = router.route(study)
    assert decision is not None
    assert (decision.rule_name, decision.model_id, decision.model_version) == (
        "chest-ct-lung-nodules", "lung-nodule-phantom", None
    )
    assert decision.series_instance_uid == thin_uid
    skipped = decision.skipped
    assert set(skipped) == set(study) - {thin_uid}
    assert all(r.startswith("rule 'chest-ct-lung-nodules': ") for r in skipped.values())
    assert "SeriesDescription 'Topogram' is excluded" in skipped[scout_uid]
    assert f"series {thin_uid} is preferred (240 slices, 1.25 mm apart, this one 120 slices" in skipped[thick_uid]
    assert "this one 240 slices, 1.50 mm apart" in skipped[same_count_uid]
    assert "SeriesDescription 'Coronal 1mm' is excluded" in skipped[mpr_uid]
    assert "ImageType lacks ORIGINAL in 100 of 100 instances" in skipped[derived_uid]
    assert "Modality 'SR' does not match 'CT'" in skipped[sr_uid]
    assert "cannot be made into a volume: the slice spacing is uneven" in skipped[gap_uid]
    assert "not axial (slice normal 90.0 degrees from the patient's z axis)" in skipped[coronal_uid]
    assert "BodyPartExamined 'HEAD' does not match" in skipped[head_uid]


def test_thick_slices_are_refused_and_nothing_left_gives_none(router: Router) -> None:
    uid, thick = _series(40, 5.0)
    few_uid, few = _series(10, 1.0)
    study = {uid: thick, few_uid: few}
    assert router.route(study) is None
    why = router.explain(study)
    assert why[uid] == "rule 'chest-ct-lung-nodules': slices 5.00 mm apart, more than 3.0 mm"
    assert why[few_uid] == "rule 'chest-ct-lung-nodules': 10 slices, fewer than the 20 required"


def test_missing_body_part_is_accepted(router: Router) -> None:
    uid, headers = _series(30)
    for h in headers:
        del h.BodyPartExamined
    decision = router.route({uid: headers})
    assert decision is not None and decision.series_instance_uid == uid


def test_first_fitting_rule_wins_and_preference_is_configurable() -> None:
    rules = parse_rules({
        "rules": [
            {"name": "mr", "model": "mr-model", "match": {"Modality": "MR"}},
            {"name": "ct", "model": "ct-model", "model_version": "1.2.0", "match": {"Modality": "ct"},
             "series": {"min_slices": 5}, "prefer": ["thinnest_slices", "most_slices"]},
        ]
    })
    many_uid, many = _series(50, 2.0)
    thin_uid, thin = _series(30, 1.0)
    decision = Router(rules).route({many_uid: many, thin_uid: thin})
    assert decision is not None
    assert (decision.rule_name, decision.model_id, decision.model_version) == ("ct", "ct-model", "1.2.0")
    assert decision.series_instance_uid == thin_uid
    assert "is preferred" in decision.skipped[many_uid]
    assert Router(rules).explain({many_uid: many, thin_uid: thin}) == {many_uid: decision.skipped[many_uid]}


CALLED_AE_RULES = {
    "rules": [
        {"name": "research-ct", "model": "research-model", "called_ae_titles": ["TAMSOAT_RES", " TAMSOAT_RES2 "],
         "match": {"Modality": "CT"}, "series": {"min_slices": 5}},
        {"name": "any-ct", "model": "ct-model", "match": {"Modality": "CT"}, "series": {"min_slices": 5}},
    ]
}


@pytest.mark.parametrize(
    ("called_ae_title", "rule"),
    [("TAMSOAT_RES", "research-ct"), ("TAMSOAT_RES2", "research-ct"), (" TAMSOAT_RES ", "research-ct"),
     ("TAMSOAT", "any-ct"), ("tamsoat_res", "any-ct"), ("", "any-ct"), (None, "any-ct")],
)
def test_rules_with_called_ae_titles_apply_only_to_studies_received_on_them(
    called_ae_title: str | None, rule: str
) -> None:
    uid, headers = _series(30)
    router = Router(parse_rules(CALLED_AE_RULES))
    decision = router.route({uid: headers}, called_ae_title=called_ae_title)
    assert decision is not None and decision.series_instance_uid == uid
    assert decision.rule_name == rule


def test_called_ae_title_mismatch_is_a_skip_reason() -> None:
    only_research = {"rules": CALLED_AE_RULES["rules"][:1]}
    router = Router(parse_rules(only_research))
    assert router.rules.called_ae_titles() == {"TAMSOAT_RES", "TAMSOAT_RES2"}
    uid, headers = _series(30)
    assert router.route({uid: headers}, called_ae_title="TAMSOAT") is None
    assert router.explain({uid: headers}, called_ae_title="TAMSOAT") == {
        uid: "rule 'research-ct': received on called AE title 'TAMSOAT', not on TAMSOAT_RES, TAMSOAT_RES2"
    }
    assert router.explain({uid: headers}) == {
        uid: "rule 'research-ct': the study's called AE title is unknown (the rule is for TAMSOAT_RES, TAMSOAT_RES2)"
    }
    # Both reasons are kept when the study falls through to a later rule that does not fit either.
    with_mr = {"rules": [*only_research["rules"], {"name": "mr", "model": "mr-model", "match": {"Modality": "MR"}}]}
    why = Router(parse_rules(with_mr)).explain({uid: headers}, called_ae_title="TAMSOAT")[uid]
    assert why == ("rule 'research-ct': received on called AE title 'TAMSOAT', not on TAMSOAT_RES, TAMSOAT_RES2; "
                   "rule 'mr': Modality 'CT' does not match 'MR'")


def test_group_by_series() -> None:
    a_uid, a = _series(3)
    b_uid, b = _series(4)
    grouped = group_by_series([a[0], b[0], a[1], b[1], b[2], a[2], b[3]])
    assert {k: len(v) for k, v in grouped.items()} == {a_uid: 3, b_uid: 4}


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"rules": [{"name": "x", "model": "m", "match": {"SeriesDescription": "(unclosed"}}]},
         r"rule 'x': match: SeriesDescription: '\(unclosed' is not a valid regular expression"),
        ({"rules": [{"name": "x", "model": "m", "exclude": {"SeriesDesc": "a"}}]},
         r"rule 'x': exclude: 'SeriesDesc' is not a DICOM attribute keyword"),
        ({"rules": [{"name": "x", "model": "M O"}]}, r"rule 'x': model: 'M O' is not a model id"),
        ({"rules": [{"model": "m"}]}, r"rule #1: name: Field required"),
        ({"rules": [{"name": "x", "model": "m", "series": {"orientation": "diagonal"}}]},
         r"rule 'x': series.orientation: Input should be 'axial' or 'any'"),
        ({"rules": [{"name": "x", "model": "m", "prefer": ["biggest"]}]}, r"rule 'x': prefer.0: Input should be"),
        ({"rules": [{"name": "x", "model": "m"}, {"name": "x", "model": "n"}]},
         r"rules: rule names must be unique \(x repeated\)"),
        ({"rules": []}, r"rules: List should have at least 1 item"),
        ({"rules": [{"name": "x", "model": "m", "colour": 1}]}, r"rule 'x': colour: Extra inputs are not permitted"),
        ({"rules": [{"name": "x", "model": "m", "called_ae_titles": ["MUCH_TOO_LONG_AE_TITLE"]}]},
         r"rule 'x': called_ae_titles: 'MUCH_TOO_LONG_AE_TITLE' is not an AE title \(1 to 16 printable ASCII"),
        ({"rules": [{"name": "x", "model": "m", "called_ae_titles": ["A\\B"]}]},
         r"rule 'x': called_ae_titles: 'A\\\\B' is not an AE title"),
        ({"rules": [{"name": "x", "model": "m", "called_ae_titles": ["   "]}]},
         r"rule 'x': called_ae_titles: '   ' is not an AE title"),
        ({"rules": [{"name": "x", "model": "m", "called_ae_titles": []}]},
         r"rule 'x': called_ae_titles: an empty list matches no study"),
        ({"rules": [{"name": "x", "model": "m", "called_ae_titles": "TAMSOAT_RES"}]},
         r"rule 'x': called_ae_titles: Input should be a valid list"),
    ],
)
def test_rule_errors_name_the_rule(rules: dict[str, Any], message: str) -> None:
    with pytest.raises(RoutingError, match=r"^routing rules are invalid: " + message):
        parse_rules(rules)


def test_rules_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text("rules: [", encoding="utf-8")
    with pytest.raises(RoutingError, match=re.escape(f"routing rules {path} are not valid YAML")):
        load_rules(path)
    with pytest.raises(RoutingError, match="cannot read routing rules"):
        load_rules(tmp_path / "absent.yaml")


def test_series_geometry_is_checked_from_headers_alone(router: Router) -> None:
    # A tilted gantry series: positions straight along z, planes tilted.
    tilt = np.radians(12)
    orientation = (1.0, 0.0, 0.0, 0.0, float(np.cos(tilt)), float(np.sin(tilt)))
    uid = generate_uid()
    headers = [
        ct_header(series_uid=uid, study_uid=STUDY, position=(0, 0, 1.25 * k), orientation=orientation, rows=8,
                  columns=8)
        for k in range(30)
    ]
    assert router.route({uid: headers}) is None
    assert "not stacked along their normal" in router.explain({uid: headers})[uid]
