"""`phx unlock`."""

from __future__ import annotations

import click

from phoenix_backup.cli.app import Out, cli, common, load_config
from phoenix_backup.errors import ExitStatus, shown_each
from phoenix_backup.ops import unlock as unlock_op
from phoenix_backup.ops.context import Environment


@cli.command()
@click.option(
    "--all", "remove_all", is_flag=True, help="Remove every lock, also fresh ones (only when no Phoenix runs)."
)
@common
def unlock(out: Out, envx: Environment, config_path: str | None, remove_all: bool) -> ExitStatus:
    """Remove locks left by crashed runs, saying whose they were.

    Example: phx unlock
    """
    cfg = load_config(out, envx, config_path)
    removed = unlock_op.unlock(cfg, envx, remove_all=remove_all)
    text = shown_each(f"removed {info.describe()}" for info in removed) or "no stale locks"
    out.result([{"name": i.name, "description": i.describe()} for i in removed], text)
    return ExitStatus.OK
