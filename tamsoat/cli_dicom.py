"""``tamsoat dicom …`` and ``tamsoat outbox …``: the gateway's commands for a PACS administrator.

    tamsoat dicom echo DEST            C-ECHO a configured destination (or AE@host:port)
    tamsoat dicom fetch --study UID --from PACS   C-FIND + C-MOVE a past study into the flow
    tamsoat outbox list [--state S]    what waits to be sent, what was sent, what was dead-lettered and why
    tamsoat outbox retry ID            send an item again (a dead-lettered one gets fresh attempts)
"""

from __future__ import annotations

import json
import re
import time
from typing import Annotated

import typer

from tamsoat.cli_common import ConfigOpt, HomeOpt, fail, open_database, settings_from
from tamsoat.core.settings import Destination, Settings

dicom_app = typer.Typer(no_args_is_help=True, help="DICOM networking: verify and query peers.")
outbox_app = typer.Typer(no_args_is_help=True, help="Results waiting for, or refused by, the destinations.")

_PEER = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")


def register(app: typer.Typer) -> None:
    """Mount the ``dicom`` and ``outbox`` command groups on the main CLI."""
    app.add_typer(dicom_app, name="dicom")
    app.add_typer(outbox_app, name="outbox")


def resolve_destination(settings: Settings, dest: str) -> Destination:
    """A configured destination by name, or an ad-hoc peer written ``AE@host:port``."""
    for d in settings.destinations:
        if d.name == dest:
            return d
    m = _PEER.match(dest)
    if m is None:
        names = ", ".join(d.name for d in settings.destinations) or "none configured"
        raise fail(f"unknown destination {dest!r} (configured: {names}; or write AE@host:port)", 2)
    try:
        return Destination(name="adhoc", ae_title=m["ae"], host=m["host"], port=int(m["port"]))
    except ValueError as exc:
        raise fail(f"invalid peer {dest!r}: {exc}", 2) from exc


@dicom_app.command("echo")
def echo(
    dest: Annotated[str, typer.Argument(help="Destination name from the settings, or AE@host:port.")],
    config: ConfigOpt = None, home: HomeOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds for connect and each answer.")] = 10.0,
) -> None:
    """Verify a DICOM peer with C-ECHO (exit code 0 when it answers success)."""
    from dicom_gateway.scu import ScuTimeouts
    from dicom_gateway.scu import echo as c_echo

    settings = settings_from(config, home=home)
    destination = resolve_destination(settings, dest)
    started = time.perf_counter()
    result = c_echo(destination, settings.dicom.ae_title,
                    timeouts=ScuTimeouts(connect=timeout, acse=timeout, dimse=timeout, network=timeout),
                    tls_config=settings.dicom.tls)
    ms = (time.perf_counter() - started) * 1000
    peer = f"{destination.ae_title}@{destination.host}:{destination.port}"
    if not result.ok:
        raise fail(f"C-ECHO to {peer} failed: {result.message}")
    typer.echo(f"C-ECHO {settings.dicom.ae_title} -> {peer}: success (0x0000) in {ms:.0f} ms")


@outbox_app.command("list")
def outbox_list(
    config: ConfigOpt = None, home: HomeOpt = None,
    state: Annotated[str | None, typer.Option(help="pending, committing, sent, committed or dead.")] = None,
    destination: Annotated[str | None, typer.Option(help="Only this destination.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List outbox items, newest first, with the last status and the reason of any failure."""
    from dicom_gateway.outbox import list_entries
    from tamsoat.core.domain import OutboxState

    if state is not None and state not in {s.value for s in OutboxState}:
        raise fail(f"unknown state {state!r}: use {', '.join(s.value for s in OutboxState)}", 2)
    db = open_database(settings_from(config, home=home))
    with db.session() as s:
        entries = list_entries(s, state, destination, limit)
    if as_json:
        for e in entries:
            typer.echo(json.dumps({
                "id": e.id, "destination": e.destination, "state": e.state, "attempts": e.attempts,
                "last_status": e.last_status_hex or None, "error": e.error, "sop_instance_uid": e.sop_instance_uid,
                "study_instance_uid": e.study_instance_uid, "created_at": e.created_at.isoformat(),
                "next_attempt_at": e.next_attempt_at.isoformat(),
                "sent_at": e.sent_at.isoformat() if e.sent_at else None,
                "committed_at": e.committed_at.isoformat() if e.committed_at else None,
            }))
        return
    if not entries:
        typer.echo("outbox is empty" if state is None else f"no {state} items")
        return
    typer.echo(f"{'ID':>6}  {'DESTINATION':<14} {'STATE':<10} {'TRIES':>5}  {'STATUS':<7} {'WHEN':<19}  REASON")
    for e in entries:
        when = e.sent_at if e.sent_at else e.next_attempt_at
        typer.echo(f"{e.id:>6}  {e.destination[:14]:<14} {e.state:<10} {e.attempts:>5}  {e.last_status_hex or '-':<7} "
                   f"{when.strftime('%Y-%m-%d %H:%M:%S'):<19}  {e.error or ''}")


@outbox_app.command("retry")
def outbox_retry(
    item_id: Annotated[int, typer.Argument(help="Outbox item id (see `tamsoat outbox list`).")],
    config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """Send an item again now: a dead-lettered item gets a fresh set of attempts, a pending one skips its wait.
    The running service picks it up within a second."""
    import getpass

    from dicom_gateway.outbox import OutboxError, retry_item

    db = open_database(settings_from(config, home=home))
    try:
        with db.session() as s:
            entry = retry_item(s, item_id, actor=f"cli:{getpass.getuser()}")
    except OutboxError as exc:
        raise fail(exc.message) from exc
    typer.echo(f"outbox item {entry.id} to {entry.destination} queued again (was dead or waiting)")


@dicom_app.command("fetch")
def fetch(
    study: Annotated[str, typer.Option("--study", help="Study Instance UID to pull.")],
    source: Annotated[str, typer.Option("--from", help="PACS: destination name from the settings, or AE@host:port.")],
    move_to: Annotated[str | None, typer.Option("--to", help="AE title the PACS sends to (default: ours; the PACS "
                                                             "must know its address).")] = None,
    config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """Pull a past study from a PACS into the flow: C-FIND it, then C-MOVE it to our SCP, where it is
    spooled, assembled and analysed like any other study."""
    from dicom_gateway.qr import QueryError, find_study, move_study

    settings = settings_from(config, home=home)
    pacs = resolve_destination(settings, source)
    target = move_to or settings.dicom.ae_title
    try:
        matches = find_study(pacs, study, settings.dicom.ae_title, tls_config=settings.dicom.tls)
    except (QueryError, ValueError) as exc:
        raise fail(f"C-FIND at {pacs.ae_title} failed: {exc}") from exc
    if not matches:
        raise fail(f"{pacs.ae_title} has no study {study}")
    count = matches[0].instances
    typer.echo(f"{pacs.ae_title} has study {study}" + (f" ({count} instances)" if count is not None else "")
               + f"; moving it to {target} ...")
    try:
        result = move_study(pacs, study, settings.dicom.ae_title, target, tls_config=settings.dicom.tls)
    except QueryError as exc:
        raise fail(f"C-MOVE from {pacs.ae_title} failed: {exc}") from exc
    summary = f"completed {result.completed}, failed {result.failed}, warnings {result.warning}"
    if not result.ok:
        status = "no final response" if result.status is None else f"status 0x{result.status:04X}"
        raise fail(f"C-MOVE from {pacs.ae_title} to {target} ended with {status}: {summary}")
    typer.echo(f"C-MOVE done: {summary}")
