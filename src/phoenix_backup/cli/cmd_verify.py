"""`phx verify`."""

from __future__ import annotations

import click

from phoenix_backup.cli import render
from phoenix_backup.cli.app import (
    Out,
    check_target,
    cli,
    common,
    complete_snapshots,
    latest_options,
    load_config,
    repo_option,
    target_option,
    thaw_option,
)
from phoenix_backup.errors import ExitStatus
from phoenix_backup.ops import context
from phoenix_backup.ops.context import Environment


@cli.command()
@click.option("--backup", "ref", help="Check this snapshot only.", shell_complete=complete_snapshots)
@target_option
@thaw_option
@click.option(
    "--read-data",
    is_flag=True,
    help="Read and check every byte of every pack, and prove every file against its SHA-256 as a restore does.",
)
@click.option(
    "--subset",
    "subset",
    metavar="PCT",
    help="Read only PCT percent of the packs (implies --read-data); each run continues where the last one stopped.",
)
@latest_options
@repo_option
@common
def verify(
    out: Out,
    envx: Environment,
    config_path: str | None,
    ref: str | None,
    target: str | None,
    thaw_timeout: float,
    read_data: bool,
    subset: str | None,
) -> ExitStatus:
    """Check the repository's structure, or with --read-data every byte.

    With --subset PCT only that share of the packs is read, starting where the previous subset run
    stopped, so a weekly `--subset 25` reads every pack once a month.

    Example: phx verify --read-data --subset 25
    """
    cfg = load_config(out, envx, config_path)
    check_target(target, cfg, envx)
    envx.thaw_timeout = thaw_timeout
    percent = _percent(subset) if subset is not None else None
    context.unlock_ahead(cfg, envx)
    # Loaded after the key is derived: its modules need not be in memory during scrypt.
    from phoenix_backup.ops import verify as verify_op

    result = verify_op.verify(cfg, envx, ref=ref, read_data=read_data, subset=percent)
    out.result(result.to_json(), render.verify(result, out.verbose), data=not result.ok)
    return result.exit_status


def _percent(text: str) -> float:
    from phoenix_backup.errors import UsageError

    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        value = float("nan")
    if not 0 < value <= 100:
        raise UsageError(f"--subset takes a percentage above 0 and at most 100, like 25 or 2.5% (got {text!r})")
    return value
