"""Register a model folder as a new version: ``models/<id>/<version>/`` with a new Device UID, the sha256 of
every file in the manifest, and a model card that says where the version comes from.

The source folder is what ``training.export.export_onnx`` writes (``model.onnx``, ``manifest.yaml``,
``model_card.md``), optionally with ``evaluation.json`` (``training.froc``) and ``lineage.json``
(``training.finetune``). Registering only adds files: which version the service runs is decided by a
promotion (``tamsoat models promote``), never by registering.
"""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from inference.manifest import MANIFEST_NAME, ManifestError, parse_manifest, version_key
from inference.registry import RegisteredModel, file_sha256, verify_files

CARD = "model_card.md"
EVALUATION = "evaluation.json"
LINEAGE = "lineage.json"
EXTRA_FILES = (EVALUATION, LINEAGE)


class RegistrationError(ValueError):
    """A model folder cannot be registered; the message says why."""


def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def registration_section(manifest: dict[str, Any], evaluation: dict[str, Any] | None,
                         lineage: dict[str, Any] | None, registered_at: datetime) -> list[str]:
    """The model card's "Registration" section: identity, lineage, and the evaluation against the parent."""
    lines = ["", "## Registration", "",
             f"- Registered {registered_at:%Y-%m-%d %H:%M} UTC as `{manifest['id']}` `{manifest['version']}`, "
             f"Device UID `{manifest['device_uid']}`.",
             "- Registered versions do not analyse studies until an admin promotes them "
             "(`tamsoat models promote`); they may first run in shadow (`tamsoat models shadow`)."]
    if lineage:
        parent = lineage.get("parent") or {}
        snap = lineage.get("snapshot") or {}
        if parent:
            lines.append(f"- Parent: `{parent.get('id')}` `{parent.get('version')}` (weights sha256 "
                         f"`{str(parent.get('weights_sha256', ''))[:16]}…`), {lineage.get('init', 'fine-tuned')}.")
        if snap:
            lines.append(f"- Training data: research snapshot `{snap.get('id')}` (manifest sha256 "
                         f"`{str(snap.get('manifest_sha256', ''))[:16]}…`, {snap.get('cases')} cases, "
                         f"{snap.get('positives')} positives, {snap.get('hard_negatives')} hard negatives)"
                         + (" plus synthetic phantoms" if lineage.get("phantoms") else "") + ".")
        if lineage.get("steps") is not None:
            lines.append(f"- Fine-tuning: {lineage['steps']} steps, config `{lineage.get('config', '')}`.")
    if evaluation:
        models = evaluation.get("models", {})
        names = list(models)
        lines += ["", f"### Evaluation: {evaluation.get('data', '')}", "",
                  "| metric | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
        rows = [("CPM (mean sensitivity at 1/8..8 FP per scan)", "cpm")]
        rows += [(f"sensitivity at {fp:g} FP per scan", f"sens@{fp:g}") for fp in (0.5, 1.0, 2.0, 4.0)]
        rows += [("sensitivity at the operating point", "op_sensitivity"),
                 ("false positives per scan at the operating point", "op_fp_per_scan")]
        for title, key in rows:
            lines.append(f"| {title} | " + " | ".join(_fmt(models[n].get(key)) for n in names) + " |")
        bands = sorted({b for n in names for b in models[n].get("by_size_band", {})})
        for band in bands:
            lines.append(f"| sensitivity at the operating point, {band} | " + " | ".join(
                _fmt(models[n].get("by_size_band", {}).get(band, {}).get("op_sensitivity")) for n in names) + " |")
        kinds = sorted({k for n in names for k in models[n].get("by_type", {})})
        for kind in kinds:
            lines.append(f"| sensitivity at the operating point, {kind} | " + " | ".join(
                _fmt(models[n].get("by_type", {}).get(kind, {}).get("op_sensitivity")) for n in names) + " |")
    return lines


def next_minor(versions: list[str]) -> str:
    """The version after the newest of ``versions``: minor + 1 (``0.1.0`` -> ``0.2.0``); ``0.1.0`` for none."""
    if not versions:
        return "0.1.0"
    newest = max(versions, key=version_key)
    major, minor = (int(x) for x in newest.split(".")[:2])
    return f"{major}.{minor + 1}.0"


def register_model(src: Path, models_dir: Path, *, version: str, model_id: str | None = None,
                   now: datetime | None = None) -> RegisteredModel:
    """Copy the model folder ``src`` to ``models_dir/<id>/<version>`` as a new version and return it.

    A new Device UID is drawn; the manifest lists the sha256 of the model, the card and the evaluation and
    lineage files when present. Refuses an existing version. The folder appears complete or not at all.
    """
    src, models_dir = Path(src), Path(models_dir)
    try:
        data = yaml.safe_load((src / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RegistrationError(f"{src} has no readable {MANIFEST_NAME}: {exc}") from exc
    if not isinstance(data, dict):
        raise RegistrationError(f"{src / MANIFEST_NAME} is not a manifest")
    try:
        version_key(version)
    except ManifestError as exc:
        raise RegistrationError(str(exc)) from exc
    model_id = model_id or str(data.get("id", ""))
    target = models_dir / model_id / version
    if target.exists():
        raise RegistrationError(f"{model_id} {version} is already registered ({target})")
    now = now or datetime.now(UTC)
    model_files = [name for name in data.get("files", {}) if name != CARD]
    evaluation = json.loads((src / EVALUATION).read_text()) if (src / EVALUATION).is_file() else None
    lineage = json.loads((src / LINEAGE).read_text()) if (src / LINEAGE).is_file() else None
    manifest = {**data, "id": model_id, "version": version, "device_uid": f"2.25.{uuid.uuid4().int}"}
    # Beside the model folders, one level up, so a registry scan (``*/*/manifest.yaml``) never sees it half-made.
    tmp = models_dir / f".register-{model_id}-{version}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in [*model_files, *(n for n in EXTRA_FILES if (src / n).is_file())]:
            if not (src / name).is_file():
                raise RegistrationError(f"{src} lacks {name}, which its manifest lists")
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, tmp / name)
        card = (src / CARD).read_text(encoding="utf-8") if (src / CARD).is_file() else f"# {model_id} {version}\n"
        old_uid = str(data.get("device_uid", ""))
        if old_uid:
            card = card.replace(old_uid, manifest["device_uid"])
        old_title = f"{data.get('id')} {data.get('version')}"
        card = card.replace(old_title, f"{model_id} {version}", 1)
        card = card.rstrip("\n") + "\n" + "\n".join(registration_section(manifest, evaluation, lineage, now)) + "\n"
        (tmp / CARD).write_text(card, encoding="utf-8")
        copied = [*model_files, *(n for n in EXTRA_FILES if (tmp / n).is_file()), CARD]
        manifest["files"] = {name: file_sha256(tmp / name) for name in copied}
        try:
            parsed = parse_manifest(manifest, source=f"the manifest for {model_id} {version}")
        except ManifestError as exc:
            raise RegistrationError(str(exc)) from exc
        (tmp / MANIFEST_NAME).write_text(yaml.safe_dump(manifest, sort_keys=False, width=120), encoding="utf-8")
        verify_files(RegisteredModel(parsed, tmp))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return RegisteredModel(parsed, target)
