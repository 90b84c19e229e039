"""`phx list`."""

from __future__ import annotations

import click

from phoenix_backup.cli import render
from phoenix_backup.cli.app import (
    SCOPES,
    Out,
    check_target,
    cli,
    common,
    load_config,
    repo_option,
    target_option,
)
from phoenix_backup.errors import ExitStatus
from phoenix_backup.ops import list as list_op
from phoenix_backup.ops.context import Environment
from phoenix_backup.repo.snapshot import Selection


@cli.command(name="list")
@click.option("--host", metavar="HOST", help="Only the snapshots of this host.")
@click.option("--scope", type=click.Choice(SCOPES), help="Only the snapshots of this scope.")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="TAG",
    help="Only the snapshots carrying this tag (repeatable: all of them).",
)
@click.option("--last", type=click.IntRange(min=1), metavar="N", help="Only the N newest of the snapshots selected.")
@target_option
@repo_option
@common
def list_cmd(
    out: Out,
    envx: Environment,
    config_path: str | None,
    host: str | None,
    scope: str | None,
    tags: tuple[str, ...],
    last: int | None,
    target: str | None,
) -> ExitStatus:
    """List snapshots, oldest first: id, name, time, size, bytes added, files, databases, tags, targets.

    Example: phx list --json

    Example: phx list --scope full --last 5
    """
    cfg = load_config(out, envx, config_path)
    check_target(target, cfg, envx)
    every = list_op.list_snapshots(cfg, envx, target=target)
    chosen = {s.id for s in Selection(host, scope, tags, last).apply([s.snapshot for s in every])}
    snaps = [s for s in every if s.snapshot.id in chosen]
    text = render.snapshots(snaps) if snaps or not every else f"none of the {len(every)} snapshots is selected"
    out.result([s.to_json() for s in snaps], text, data=True)
    return ExitStatus.OK
