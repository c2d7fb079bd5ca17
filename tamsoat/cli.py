"""The ``tamsoat`` command line. Errors end with one sentence on stderr and a non-zero exit code."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from tamsoat import cli_dicom, cli_jobs, cli_models, cli_research, cli_training
from tamsoat.cli_common import ConfigOpt, HomeOpt, fail, open_database, settings_from, setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="tamsoat: on-premise AI screening service (DICOM gateway, lung-nodule AI, review, reports).")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
users_app = typer.Typer(no_args_is_help=True, help="Manage local users.")
tokens_app = typer.Typer(no_args_is_help=True, help="Manage API tokens.")
app.add_typer(config_app, name="config")
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")
app.command()(cli_training.train)
app.command()(cli_training.evaluate)
cli_dicom.register(app)  # tamsoat dicom …, tamsoat outbox …
cli_jobs.register(app)  # tamsoat jobs list|retry
cli_research.register(app)  # tamsoat dataset …, tamsoat models …
cli_models.register(cli_research.models_app)  # tamsoat models show|verify

@app.command()
def serve(
    config: ConfigOpt = None, home: HomeOpt = None,
    dicom_port: Annotated[int | None, typer.Option(help="DICOM SCP port (default 11112).")] = None,
    web_port: Annotated[int | None, typer.Option(help="Web/API port (default 8000).")] = None,
    web_host: Annotated[str | None, typer.Option(help="Web/API bind address (default 127.0.0.1).")] = None,
    quiet_period: Annotated[float | None, typer.Option(help="Seconds without new instances before a study "
                                                             "is closed and analysed.")] = None,
) -> None:
    """Start the service: DICOM SCP, job workers and the web app (embedded default: SQLite, local spool)."""
    flags: dict[str, Any] = {"home": home, "quiet_period_s": quiet_period}
    dicom = {k: v for k, v in {"port": dicom_port}.items() if v is not None}
    web = {k: v for k, v in {"port": web_port, "host": web_host}.items() if v is not None}
    if dicom:
        flags["dicom"] = dicom
    if web:
        flags["web"] = web
    settings = settings_from(config, **flags)
    setup_logging(settings.log_level)
    from tamsoat.service import Service

    try:
        service = Service(settings)
    except (OSError, ValueError, LookupError, RuntimeError) as exc:
        raise fail(f"cannot start: {exc}") from exc
    typer.echo(f"tamsoat {settings.dicom.ae_title} listening: DICOM {settings.dicom.host}:{settings.dicom.port}, "
               f"web http://{settings.web.host}:{settings.web.port} (API docs at /docs), data in {settings.home}",
               err=True)
    service.serve_forever()


@config_app.command("show")
def config_show(config: ConfigOpt = None, home: HomeOpt = None) -> None:
    """Print the effective settings (file < environment < flags) as YAML."""
    settings = settings_from(config, home=home)
    data = json.loads(settings.model_dump_json())
    data["effective"] = {"database_url": settings.db_url, "spool_dir": str(settings.spool_path),
                         "reports_dir": str(settings.reports_path)}
    typer.echo(yaml.safe_dump(data, sort_keys=False))


@users_app.command("add")
def users_add(
    name: str,
    role: Annotated[str, typer.Option(help="radiologist, admin, researcher or integration (STOW-RS, metrics).")],
    config: ConfigOpt = None, home: HomeOpt = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the web login password from the "
                                                 "first line of standard input.")] = False,
    password_prompt: Annotated[bool, typer.Option("--password", help="Ask for the web login password "
                                                  "(typed twice, not shown).")] = False,
    display_name: Annotated[str | None, typer.Option(help="Name shown in the pages and signed reports, "
                                                     "DICOM style: Family^Given.")] = None,
) -> None:
    """Add a local user (with a password for the web pages, or API tokens only)."""
    from tamsoat.core.domain import Role
    from tamsoat.core.users import UserError, add_user

    try:
        role_value = Role(role)
    except ValueError as exc:
        raise fail(f"unknown role {role!r}: use radiologist, admin, researcher or integration", 2) from exc
    password: str | None = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif password_prompt:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if password is not None and len(password) < 8:
        raise fail("the password must have at least 8 characters", 2)
    db = open_database(settings_from(config, home=home))
    try:
        with db.session() as s:
            user = add_user(s, name, role_value, password=password)
            if display_name:
                user.display_name = display_name
    except UserError as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"added user {name} ({role_value.value}{', web login' if password else ''})")


@tokens_app.command("create")
def tokens_create(name: str, config: ConfigOpt = None, home: HomeOpt = None) -> None:
    """Create an API token for a user and print it (it is shown only this once)."""
    from tamsoat.core.users import UserError, create_token

    db = open_database(settings_from(config, home=home))
    try:
        with db.session() as s:
            secret = create_token(s, name)
    except UserError as exc:
        raise fail(str(exc)) from exc
    typer.echo(secret)


@app.command()
def demo(
    host: Annotated[str, typer.Option(help="Host of the running service.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="DICOM port of the running service.")] = 11112,
    called_ae: Annotated[str, typer.Option(help="AE title of the service.")] = "TAMSOAT",
    calling_ae: Annotated[str, typer.Option(help="Our AE title.")] = "TAMSOAT_DEMO",
    seed: Annotated[int, typer.Option(help="Phantom seed (same seed, same study).")] = 7,
    slices: Annotated[int, typer.Option(help="Number of 1.25 mm slices.", min=20, max=600)] = 300,
    out: Annotated[Path | None, typer.Option(help="Keep the generated series in this folder.")] = None,
) -> None:
    """Generate a synthetic chest-CT study with nodules and send it by C-STORE to a running service."""
    from tamsoat.demo import run_demo

    try:
        summary = run_demo(host=host, port=port, called_ae=called_ae, calling_ae=calling_ae, seed=seed,
                           slices=slices, out=out)
    except RuntimeError as exc:
        raise fail(str(exc)) from exc
    typer.echo(summary)


def main() -> None:
    app()
