"""`phx restore`."""

from __future__ import annotations

from pathlib import Path

import click

from phoenix_backup.cli import render
from phoenix_backup.cli.app import Out, check_target, cli, common, load_config, scope_options
from phoenix_backup.errors import ExitStatus
from phoenix_backup.ops import restore as restore_op
from phoenix_backup.ops.context import Environment


@cli.command()
@click.option("--latest", "latest", is_flag=True, help="Restore the most recent snapshot.")
@click.option("--backup", "ref", help="Snapshot id, unique id prefix or name (2026-03-15-14-30).")
@scope_options
@click.option("--config-only", "scope", flag_value="config", help="Configuration files only.")
@click.option("--path", "paths", multiple=True, help="Only paths matching this glob (repeatable).")
@click.option("--to", "to", type=click.Path(file_okay=False), help="Restore below this folder instead of in place.")
@click.option("--target", help="Read from this target only (only `local` in this version).")
@click.option("--dry-run", is_flag=True, help="Show the plan; write nothing.")
@click.option("--yes", "--force", "yes", is_flag=True, help="Do not ask before overwriting.")
@common
def restore(
    out: Out,
    envx: Environment,
    config_path: str | None,
    latest: bool,
    ref: str | None,
    scope: str | None,
    paths: tuple[str, ...],
    to: str | None,
    target: str | None,
    dry_run: bool,
    yes: bool,
) -> ExitStatus:
    """Restore all or part of a snapshot, in place or below --to.

    Example: phx restore --latest --to /tmp/agent-restored
    """
    from phoenix_backup.errors import UsageError

    if latest and ref:
        raise UsageError("give either --latest or --backup ID, not both")
    if not latest and not ref:
        raise UsageError("say which snapshot to restore: --latest or --backup ID (see `phx list`)")
    cfg = load_config(out, envx, config_path)
    check_target(target)
    result = restore_op.restore(
        cfg,
        envx,
        ref=ref or "latest",
        scope=scope or "full",  # type: ignore[arg-type]
        paths=paths,
        to=Path(to).absolute() if to else None,
        dry_run=dry_run,
        yes=yes,
    )
    out.result(result.to_json(), render.restore(result, out.verbose))
    return result.exit_status
