"""Helpers shared by the ``tamsoat`` command modules: options, settings, database, errors."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tamsoat.core.settings import ConfigError, Settings, load_settings

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.", dir_okay=False)]
HomeOpt = Annotated[Path | None, typer.Option("--home", help="Data folder (default $TAMSOAT_HOME or ~/.tamsoat).")]


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"tamsoat: {message}", err=True)
    return typer.Exit(code)


def settings_from(config: Path | None, **flags: Any) -> Settings:
    try:
        return load_settings(config, **flags)
    except ConfigError as exc:
        raise fail(str(exc), 2) from exc


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("pynetdicom", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def open_database(settings: Settings) -> Any:
    from tamsoat.core.db import Database, migrate

    migrate(settings.db_url)
    return Database(settings.db_url)
