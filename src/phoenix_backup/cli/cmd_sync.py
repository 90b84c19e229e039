"""`phx sync`."""

from __future__ import annotations

import click

from phoenix_backup.cli import render
from phoenix_backup.cli.app import Out, check_target, cli, common, load_config
from phoenix_backup.errors import ExitStatus
from phoenix_backup.ops import sync as sync_op
from phoenix_backup.ops.context import Environment


@cli.command()
@click.option("--target", metavar="NAME", help="Sync this replica only (git, s3 or r2; default: every replica).")
@common
def sync(out: Out, envx: Environment, config_path: str | None, target: str | None) -> ExitStatus:
    """Copy to the other targets what they lack from the first target (after an outage).

    Each replica gets the key slots, packs and index objects it is missing, then the snapshot
    objects, oldest first. Exit 3 when some targets failed, 1 when all did.

    Example: phx sync --target s3
    """
    cfg = load_config(out, envx, config_path)
    check_target(target, cfg)
    result = sync_op.sync(cfg, envx, target=target)
    out.result(result.to_json(), render.sync(result), data=result.exit_status != ExitStatus.OK)
    out.failed_targets(result.targets)
    return result.exit_status
