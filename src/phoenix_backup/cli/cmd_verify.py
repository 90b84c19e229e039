"""`phx verify`."""

from __future__ import annotations

import click

from phoenix_backup.cli import render
from phoenix_backup.cli.app import Out, check_target, cli, common, load_config
from phoenix_backup.errors import ExitStatus
from phoenix_backup.ops import verify as verify_op
from phoenix_backup.ops.context import Environment


@cli.command()
@click.option("--backup", "ref", help="Check this snapshot only.")
@click.option("--target", help="Check this target only (only `local` in this version).")
@click.option("--read-data", is_flag=True, help="Read and check every byte of every pack.")
@common
def verify(
    out: Out, envx: Environment, config_path: str | None, ref: str | None, target: str | None, read_data: bool
) -> ExitStatus:
    """Check the repository's structure, or with --read-data every byte.

    Example: phx verify --read-data
    """
    cfg = load_config(out, envx, config_path)
    check_target(target)
    result = verify_op.verify(cfg, envx, ref=ref, read_data=read_data)
    out.result(result.to_json(), render.verify(result))
    return result.exit_status
