"""``tamsoat train`` then ``tamsoat evaluate``: the pipeline runs end to end on a tiny configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tamsoat.cli import app
from tamsoat.core.settings import REPO_ROOT
from training.export import export_onnx, replace_card_section

runner = CliRunner()


@pytest.mark.slow
def test_train_export_and_evaluate_tiny(tmp_path: Path) -> None:
    run = tmp_path / "run"
    trained = runner.invoke(app, ["train", "--config", str(REPO_ROOT / "training/configs/tiny.yaml"),
                                  "--out", str(run)])
    assert trained.exit_code == 0, trained.output
    assert (run / "checkpoint_best.pt").is_file() and (run / "metrics.jsonl").is_file()

    model = tmp_path / "models" / "tiny" / "0.0.1"
    export_onnx(run / "checkpoint_best.pt", model, model_id="tiny", version="0.0.1")
    out = tmp_path / "eval"
    evaluated = runner.invoke(app, ["evaluate", "--model", str(model), "--model",
                                    str(REPO_ROOT / "models/lung-nodule-phantom/0.1.0"),
                                    "--phantoms", "2", "--tiny", "--out", str(out)])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((out / "evaluation.json").read_text())
    assert set(report["models"]) == {"tiny/0.0.1", "lung-nodule-phantom/0.1.0"}
    for m in report["models"].values():
        assert m["scans"] == 2 and m["nodules"] == report["nodules"] > 0
        assert set(m["by_size_band"]) and "sens@1" in m
        assert sum(b["nodules"] for b in m["by_diameter"].values()) == m["nodules"]
    assert (out / "froc.png").read_bytes()[:4] == b"\x89PNG"
    card = (out / "evaluation.md").read_text()
    assert "## tiny/0.0.1" in card and "CPM" in card and ">= 6 mm" in card
    assert "| metric |" in evaluated.output

    # --card writes the FROC section into the model's own card, linking the plot inside the folder.
    carded = runner.invoke(app, ["evaluate", "--model", str(model), "--phantoms", "2", "--tiny",
                                 "--out", str(model / "evaluation"), "--card"])
    assert carded.exit_code == 0, carded.output
    card_text = (model / "model_card.md").read_text()
    assert "## FROC on 2 held-out tiny phantoms" in card_text and "](evaluation/froc.png)" in card_text
    assert "Not evaluated at export time" not in card_text and "## Limitations" in card_text
    assert "Against the project's targets" in card_text and "--card" in card_text
    refused = runner.invoke(app, ["evaluate", "--model", str(model), "--phantoms", "1", "--tiny",
                                  "--out", str(tmp_path / "elsewhere"), "--card"])
    assert refused.exit_code == 2 and "--card needs" in refused.output


def test_card_section_is_replaced_not_appended() -> None:
    card = "# m\n\n## What it is\n\nx\n\n## FROC on 5 phantoms\n\nold\n\n## Limitations\n\ny\n"
    once = replace_card_section(card, "## FROC on 9 phantoms\n\nnew\n")
    assert once == "# m\n\n## What it is\n\nx\n\n## FROC on 9 phantoms\n\nnew\n\n## Limitations\n\ny\n"
    assert replace_card_section(once, "## FROC on 9 phantoms\n\nnew\n") == once
    fresh = replace_card_section("# m\n\n## Limitations\n\ny\n", "## FROC\n\nz\n")
    assert fresh == "# m\n\n## FROC\n\nz\n\n## Limitations\n\ny\n"


def test_train_and_evaluate_refuse_bad_input(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)])
    assert missing.exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: -3\n")
    result = runner.invoke(app, ["train", "--config", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "tamsoat:" in result.output
    no_model = runner.invoke(app, ["evaluate", "--model", str(tmp_path), "--phantoms", "1", "--tiny"])
    assert no_model.exit_code == 2 and "no manifest.yaml" in no_model.output


def test_train_names_a_missing_starting_model(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text((REPO_ROOT / "training/configs/tiny.yaml").read_text() + "init_from: nowhere/0.9.0\n")
    result = runner.invoke(app, ["train", "--config", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "init_from" in result.output and "does not exist" in result.output
