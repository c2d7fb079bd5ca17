"""``tamsoat dataset …`` and ``tamsoat models …``: the local operator acts as a named user whose role is
checked in the database, and the audit trail records ``cli:<user>``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from review import decisions
from review.decisions import Actor
from tamsoat.cli import app
from tamsoat.core.db import Database, migrate
from tamsoat.core.domain import Decision, Role
from tamsoat.core.settings import Settings
from tamsoat.core.tables import AuditEvent, ModelDeployment
from tamsoat.core.users import add_user
from tamsoat.research_demo import Identity
from tests.inference.factory_model import threshold_model, write_model_folder
from tests.research_support import seed_ready_study

runner = CliRunner()
MODEL = "lung-nodule-phantom"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TAMSOAT_HOME", str(home))
    monkeypatch.setenv("TAMSOAT_MODELS_DIR", str(tmp_path / "models"))
    write_model_folder(tmp_path / "models", threshold_model, version="0.1.0")
    settings = Settings(home=home)
    migrate(settings.db_url)
    db = Database(settings.db_url)
    with db.session() as s:
        add_user(s, "rad", Role.RADIOLOGIST)
        add_user(s, "res", Role.RESEARCHER)
        add_user(s, "boss", Role.ADMIN)
    uid, _, ids = seed_ready_study(db, settings.spool_path, tmp_path / "in", Identity("CLI^TEST", "C-1"), seed=700)
    actor = Actor("rad", "")
    with db.session() as s:
        study = decisions.get_study(s, uid)
        for fid, d in zip(ids, (Decision.ACCEPT, Decision.ACCEPT, Decision.REJECT), strict=True):
            decisions.decide(s, study, fid, d, actor, reason="scar", auto_claim=True)
        decisions.sign(s, study, actor)
    db.dispose()
    return home


def _db(home: Path) -> Database:
    return Database(f"sqlite:///{home / 'tamsoat.db'}")


def test_dataset_export_checks_the_operator(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "snapshots"
    refused = runner.invoke(app, ["dataset", "export", "--out", str(out), "--as", "rad"])
    assert refused.exit_code == 1 and "has the role 'radiologist'" in refused.output
    ghost = runner.invoke(app, ["dataset", "export", "--out", str(out), "--as", "nobody"])
    assert ghost.exit_code == 1 and "no active user named 'nobody'" in ghost.output
    bad_date = runner.invoke(app, ["dataset", "export", "--out", str(out), "--as", "res", "--since", "May"])
    assert bad_date.exit_code == 2
    ok = runner.invoke(app, ["dataset", "export", "--out", str(out), "--as", "res", "--snapshot-name", "s1"])
    assert ok.exit_code == 0, ok.output
    assert "snapshot s1: 1 cases (1 patients), 2 positives, 1 hard negatives" in ok.output
    assert runner.invoke(app, ["dataset", "verify", str(out / "s1")]).exit_code == 0
    (out / "s1" / "labels.json").write_text("{}")
    broken = runner.invoke(app, ["dataset", "verify", str(out / "s1")])
    assert broken.exit_code == 1 and "labels.json has changed" in broken.output
    again = runner.invoke(app, ["dataset", "export", "--out", str(out), "--as", "res", "--snapshot-name", "s1"])
    assert again.exit_code == 1 and "already exists" in again.output
    with _db(home).session() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action.like("dataset.%")).order_by(AuditEvent.id)).all()
        assert [(e.actor, e.action, e.target) for e in events] == [
            ("cli:res", "dataset.export_requested", "s1"), ("cli:res", "dataset.exported", "s1")]


def test_models_register_shadow_promote_rollback(home: Path, tmp_path: Path) -> None:
    candidate = write_model_folder(tmp_path / "candidates", lambda p: threshold_model(p, level=0.6), version="0.0.1")
    (candidate / "model_card.md").write_text(f"# candidate — {MODEL} 0.0.1\n\nDevice UID `2.25.123456789`.\n")
    (candidate / "evaluation.json").write_text(json.dumps({"data": "2 phantoms", "models": {
        "current": {"cpm": 0.5, "by_size_band": {}, "by_type": {}}, "new": {"cpm": 0.6, "by_size_band": {},
                                                                          "by_type": {}}}}))
    r = runner.invoke(app, ["models", "register", str(candidate), "--version", "0.2.0", "--as", "rad"])
    assert r.exit_code == 1 and "researcher or admin" in r.output
    r = runner.invoke(app, ["models", "register", str(candidate), "--version", "0.2.0", "--as", "res"])
    assert r.exit_code == 0, r.output
    folder = Path(str(tmp_path / "models")) / MODEL / "0.2.0"
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    assert manifest["version"] == "0.2.0" and manifest["device_uid"] != "2.25.123456789"
    assert set(manifest["files"]) == {"model.onnx", "model_card.md", "evaluation.json"}
    card = (folder / "model_card.md").read_text()
    assert manifest["device_uid"] in card and "2.25.123456789" not in card and "| CPM" in card
    again = runner.invoke(app, ["models", "register", str(candidate), "--version", "0.2.0", "--as", "res"])
    assert again.exit_code == 1 and "already registered" in again.output
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0 and f"{MODEL}: 0.1.0 (active), 0.2.0" in listed.output  # pinned: not newest
    assert runner.invoke(app, ["models", "shadow", MODEL, "0.2.0", "--as", "res"]).exit_code == 1
    r = runner.invoke(app, ["models", "shadow", MODEL, "0.2.0", "--as", "boss"])
    assert r.exit_code == 0 and "shadow 0.2.0" in r.output
    r = runner.invoke(app, ["models", "shadow-report", MODEL, "--as", "res"])
    assert r.exit_code == 0 and "no shadow runs yet" in r.output
    assert runner.invoke(app, ["models", "promote", MODEL, "0.2.0", "--as", "res"]).exit_code == 1
    r = runner.invoke(app, ["models", "promote", MODEL, "0.2.0", "--as", "boss"])
    assert r.exit_code == 0 and "0.2.0 is active (was 0.1.0)" in r.output
    r = runner.invoke(app, ["models", "promote", MODEL, "0.2.0", "--as", "boss"])
    assert r.exit_code == 1 and "already the active version" in r.output
    r = runner.invoke(app, ["models", "rollback", MODEL, "--as", "boss"])
    assert r.exit_code == 0 and "rolled back to 0.1.0" in r.output
    with _db(home).session() as s:
        row = s.get(ModelDeployment, MODEL)
        assert row is not None and (row.active_version, row.previous_version) == ("0.1.0", "0.2.0")
        events = s.scalars(select(AuditEvent).where(AuditEvent.action.like("model.%")).order_by(AuditEvent.id)).all()
        assert [(e.actor, e.action) for e in events] == [
            ("cli:res", "model.deployment_pinned"), ("cli:res", "model.registered"), ("cli:boss", "model.shadow_set"),
            ("cli:boss", "model.promoted"), ("cli:boss", "model.rolled_back")]
