"""``tamsoat dataset …`` and ``tamsoat models …``: the research loop from the command line.

    tamsoat dataset export --out DIR [--since DATE] [--snapshot-name NAME] --as USER
    tamsoat dataset verify DIR
    tamsoat models list
    tamsoat models register DIR --version X [--model-id ID] --as USER
    tamsoat models shadow ID VERSION | --off --as USER
    tamsoat models shadow-report ID [--version X] [--json] --as USER
    tamsoat models promote ID VERSION --as USER
    tamsoat models rollback ID --as USER

The commands run as the local operator: ``--as USER`` (default: the login name) must be an active user of
the installation with the role the command needs (researcher or admin; admin to change deployments), and
the audit trail records the actor as ``cli:<user>``.
"""

from __future__ import annotations

import getpass
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from tamsoat.cli_common import ConfigOpt, HomeOpt, fail, open_database, settings_from
from tamsoat.core.domain import Role
from tamsoat.core.settings import Settings

dataset_app = typer.Typer(no_args_is_help=True, help="Research snapshots of reviewed studies (de-identified).")
models_app = typer.Typer(no_args_is_help=True, help="Model versions: register, shadow, promote, roll back.")

AsOpt = Annotated[str | None, typer.Option("--as", help="Act as this tamsoat user (default: your login name); "
                                                        "the role is checked in the database.")]
RESEARCH = (Role.RESEARCHER, Role.ADMIN)
ADMIN = (Role.ADMIN,)


def register(app: typer.Typer) -> None:
    """Mount the ``dataset`` and ``models`` command groups on the main CLI."""
    app.add_typer(dataset_app, name="dataset")
    app.add_typer(models_app, name="models")


def _operator(db: Any, user: str | None, roles: tuple[Role, ...]) -> str:
    """``cli:<user>`` once ``user`` is known to hold one of ``roles``; exit 1 otherwise."""
    from tamsoat.research import AccessDenied, check_user

    name = user or getpass.getuser()
    try:
        with db.session() as s:
            check_user(s, name, roles)
    except AccessDenied as exc:
        raise fail(f"{exc}; use --as USER (see `tamsoat users add`)") from exc
    return f"cli:{name}"


@dataset_app.command("export")
def dataset_export(
    out: Annotated[Path, typer.Option("--out", help="Folder that receives the snapshot folder.", file_okay=False)],
    since: Annotated[str | None, typer.Option(help="Only studies signed on or after this date (YYYY-MM-DD).")] = None,
    snapshot_name: Annotated[str | None, typer.Option("--snapshot-name", help="Name of the snapshot folder "
                                                      "(default: snapshot-<time>-<random>).")] = None,
    as_user: AsOpt = None, config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """Export signed studies as a de-identified snapshot: DICOM (PS3.15 Basic Profile), volumes, labels,
    manifest with sha256 and a datasheet. Researchers and admins only; audited."""
    from tamsoat.research import export_dataset, since_datetime
    from training.snapshot import SnapshotError

    settings = settings_from(config, home=home)
    db = open_database(settings)
    actor = _operator(db, as_user, RESEARCH)
    try:
        when = since_datetime(since)
    except ValueError as exc:
        raise fail(f"--since {since!r} is not a date (YYYY-MM-DD)", 2) from exc
    try:
        summary = export_dataset(db, settings, actor, out, since=when, name=snapshot_name)
    except (SnapshotError, OSError) as exc:
        raise fail(f"export failed: {exc}") from exc
    c = summary.counts
    typer.echo(f"snapshot {summary.snapshot_id}: {c['cases']} cases ({c['patients']} patients), {c['positives']} "
               f"positives, {c['hard_negatives']} hard negatives, {sum(c['excluded'].values())} studies left out; "
               f"{summary.path} (manifest sha256 {summary.manifest_sha256})")


@dataset_app.command("verify")
def dataset_verify(path: Annotated[Path, typer.Argument(help="A snapshot folder.", file_okay=False)]) -> None:
    """Check every file of a snapshot against its manifest."""
    from training.snapshot import verify_snapshot

    problems = verify_snapshot(path)
    if problems:
        for p in problems:
            typer.echo(p, err=True)
        raise fail(f"{path} is not intact ({len(problems)} problems)")
    typer.echo(f"{path}: every file matches the manifest")


def _registry(settings: Settings) -> Any:
    from inference.manifest import ManifestError
    from inference.registry import Registry

    try:
        return Registry(settings.models_dir)
    except ManifestError as exc:
        raise fail(str(exc)) from exc


@models_app.command("list")
def models_list(config: ConfigOpt = None, home: HomeOpt = None,
                as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """Registered models and versions; which one analyses studies, which one runs in shadow."""
    from tamsoat.deployments import deployments

    settings = settings_from(config, home=home)
    db = open_database(settings)
    with db.session() as s:
        rows = deployments(s, _registry(settings), settings.routing_file)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        marks = []
        for v in r["versions"]:
            tag = " (active)" if v == r["active_version"] else " (shadow)" if v == r["shadow_version"] else ""
            marks.append(v + tag)
        typer.echo(f"{r['model_id']}: {', '.join(marks)}" + ("" if r["pinned"] else "  [not pinned: newest wins]"))


def _deploy(action: str, settings: Settings, db: Any, fn: Any, *args: Any) -> Any:
    from tamsoat.deployments import DeploymentError

    try:
        with db.session() as s:
            row = fn(s, _registry(settings), settings.routing_file, *args)
            return {"active": row.active_version, "previous": row.previous_version, "shadow": row.shadow_version}
    except DeploymentError as exc:
        raise fail(f"cannot {action}: {exc}") from exc


@models_app.command("register")
def models_register(
    path: Annotated[Path, typer.Argument(help="Model folder: manifest.yaml, model.onnx, model_card.md "
                                              "(as training.export writes it).", file_okay=False)],
    version: Annotated[str, typer.Option(help="The new version (semantic version, e.g. 0.2.0).")],
    model_id: Annotated[str | None, typer.Option(help="Register under this model id (default: the manifest's).")]
    = None,
    as_user: AsOpt = None, config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """Copy a model folder into the models folder as a new version (new Device UID, sha256 of every file,
    model card). It does not analyse studies until promoted; the version in use is pinned first."""
    from tamsoat.deployments import register_version
    from training.register import RegistrationError

    settings = settings_from(config, home=home)
    db = open_database(settings)
    actor = _operator(db, as_user, RESEARCH)
    try:
        registered = register_version(db, settings, path, version, actor, model_id=model_id)
    except (RegistrationError, OSError) as exc:
        raise fail(f"cannot register {path}: {exc}") from exc
    m = registered.manifest
    typer.echo(f"registered {m.id} {m.version} in {registered.directory} (Device UID {m.device_uid}); "
               f"run it in shadow with `tamsoat models shadow {m.id} {m.version}`")


@models_app.command("shadow")
def models_shadow(
    model_id: str,
    version: Annotated[str | None, typer.Argument(help="The version to run in shadow.")] = None,
    off: Annotated[bool, typer.Option("--off", help="Stop running a version in shadow.")] = False,
    as_user: AsOpt = None, config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """Run a registered version after every clinical analysis; its findings are stored, never shown."""
    from tamsoat.deployments import set_shadow

    if (version is None) == (not off):
        raise fail("give a VERSION, or --off", 2)
    settings = settings_from(config, home=home)
    db = open_database(settings)
    actor = _operator(db, as_user, ADMIN)
    state = _deploy("set the shadow version", settings, db, set_shadow, model_id, None if off else version, actor)
    typer.echo(f"{model_id}: active {state['active']}, shadow {state['shadow'] or 'none'}")


@models_app.command("shadow-report")
def models_shadow_report(
    model_id: str,
    version: Annotated[str | None, typer.Option(help="Only this shadow version.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The whole report as JSON (with every study).")] = False,
    as_user: AsOpt = None, config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """How the shadow version's findings agree with the radiologists' decisions on signed studies."""
    from tamsoat.core import audit
    from tamsoat.deployments import shadow_report

    settings = settings_from(config, home=home)
    db = open_database(settings)
    actor = _operator(db, as_user, RESEARCH)
    with db.session() as s:
        report = shadow_report(s, model_id, version)
        audit.record(s, actor, "shadow.report_viewed", model_id, version=version or "")
    if as_json:
        typer.echo(json.dumps(report, indent=1, default=str))
        return
    if not report["versions"]:
        typer.echo(f"{model_id}: no shadow runs yet")
    for v in report["versions"]:
        t, r = v["totals"], v["rates"]
        typer.echo(f"{model_id} {v['version']} in shadow: {v['studies_compared']} signed studies compared "
                   f"({v['studies_pending_review']} awaiting review); shadow findings {t.get('shadow_findings', 0)}: "
                   f"agree {t.get('agree', 0)}, disagree {t.get('disagree', 0)}, extra {t.get('extra', 0)}; "
                   f"sensitivity vs the final read: shadow {r['shadow_sensitivity']}, "
                   f"clinical {r['clinical_sensitivity']}")


@models_app.command("promote")
def models_promote(model_id: str, version: str, as_user: AsOpt = None, config: ConfigOpt = None,
                   home: HomeOpt = None) -> None:
    """Make a registered version the one that analyses studies (admins; audited; `rollback` undoes it)."""
    from tamsoat.deployments import promote

    settings = settings_from(config, home=home)
    db = open_database(settings)
    actor = _operator(db, as_user, ADMIN)
    state = _deploy("promote", settings, db, promote, model_id, version, actor)
    typer.echo(f"{model_id}: {state['active']} is active (was {state['previous']}) since "
               f"{datetime.now().astimezone():%Y-%m-%d %H:%M}; the next analysis uses it")


@models_app.command("rollback")
def models_rollback(model_id: str, as_user: AsOpt = None, config: ConfigOpt = None, home: HomeOpt = None) -> None:
    """Promote the version the last promotion replaced."""
    from tamsoat.deployments import rollback

    settings = settings_from(config, home=home)
    db = open_database(settings)
    actor = _operator(db, as_user, ADMIN)
    state = _deploy("roll back", settings, db, rollback, model_id, actor)
    typer.echo(f"{model_id}: rolled back to {state['active']} (from {state['previous']})")
