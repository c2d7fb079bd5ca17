"""``tamsoat models show|verify [ID [VERSION]]``: read the model registry from the command line.

Adds two commands to the ``models`` group (``tamsoat models list``, ``register``, ... live in
``tamsoat.cli_research``). Neither needs the database: they read ``models_dir`` only.

    tamsoat models show lung-nodule-phantom [0.1.0] [--json]
    tamsoat models verify [ID [VERSION]]      # every registered model when no ID is given
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
import yaml

from tamsoat.cli_common import ConfigOpt, HomeOpt, fail, settings_from

IdArg = Annotated[str | None, typer.Argument(help="Model id (default: every registered model).")]
VersionArg = Annotated[str | None, typer.Argument(help="Version (default: the newest).")]


def _registry(config: Any, home: Any) -> Any:
    from inference.manifest import ManifestError
    from inference.registry import Registry

    settings = settings_from(config, home=home)
    try:
        return Registry(settings.models_dir)
    except ManifestError as exc:
        raise fail(str(exc)) from exc


def _get(registry: Any, model_id: str, version: str | None) -> Any:
    from inference.registry import ModelNotFoundError

    try:
        return registry.get(model_id, version)
    except ModelNotFoundError as exc:
        raise fail(str(exc)) from exc


def models_show(model_id: Annotated[str, typer.Argument(help="Model id.")], version: VersionArg = None,
                config: ConfigOpt = None, home: HomeOpt = None,
                as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """A model's manifest (validated), its folder, runtime and weights sha256."""
    model = _get(_registry(config, home), model_id, version)
    data = model.manifest.model_dump(mode="json")
    data["directory"] = str(model.directory)
    data["weights_sha256"] = model.manifest.weights_sha256
    data["model_file"] = model.manifest.model_file
    if as_json:
        typer.echo(json.dumps(data, indent=1))
    else:
        typer.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120).rstrip())


def models_verify(model_id: IdArg = None, version: VersionArg = None, config: ConfigOpt = None,
                  home: HomeOpt = None) -> None:
    """Recompute the sha256 of every file each manifest lists; exit 1 with a sentence on a difference."""
    from inference.registry import ModelIntegrityError, verify_files

    registry = _registry(config, home)
    if model_id is None:
        if version is not None:
            raise fail("a VERSION needs a model ID", 2)
        targets = [registry.get(m, v) for m in registry.model_ids() for v in registry.versions(m)]
    else:
        targets = [_get(registry, model_id, version)]
    if not targets:
        raise fail(f"no models registered in {registry.models_dir}")
    for model in targets:
        try:
            verify_files(model)
        except ModelIntegrityError as exc:
            raise fail(str(exc)) from exc
        m = model.manifest
        typer.echo(f"{m.id} {m.version}: {len(m.files)} file(s) match the manifest ({m.runtime}, weights "
                   f"{m.weights_sha256[:12]}…)")


def register(models_app: typer.Typer) -> None:
    """Add ``show`` and ``verify`` to the ``models`` command group."""
    models_app.command("show")(models_show)
    models_app.command("verify")(models_verify)
