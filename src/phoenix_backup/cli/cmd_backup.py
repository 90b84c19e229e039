"""`phx backup`."""

from __future__ import annotations

import click

from phoenix_backup.cli import render
from phoenix_backup.cli.app import Out, cli, common, load_config, scope_options
from phoenix_backup.errors import ExitStatus
from phoenix_backup.ops import context
from phoenix_backup.ops.context import Environment


@cli.command()
@click.option("--dry-run", is_flag=True, help="Show what would be saved, with sizes; write nothing.")
@scope_options()
@click.option("--tag", "tags", multiple=True, help="Tag the snapshot (repeatable).")
@click.option("--time", "time_text", help="Record this time (RFC 3339 with offset) instead of now.")
@common
def backup(
    out: Out,
    envx: Environment,
    config_path: str | None,
    dry_run: bool,
    scope: str | None,
    tags: tuple[str, ...],
    time_text: str | None,
) -> ExitStatus:
    """Take one snapshot of the workspace and its databases.

    Example: phx backup --tag nightly
    """
    from phoenix_backup.cli.main import BACKUP_TRIM_THRESHOLD, keep_freed_heap

    keep_freed_heap(BACKUP_TRIM_THRESHOLD)
    cfg = load_config(out, envx, config_path)
    if not dry_run:
        # What needs no key is checked before its scrypt: a mistake costs no key derivation.
        if time_text is not None:
            context.parse_time(time_text)
        # A missing workspace is the backup's to say, after hooks.preBackup (which may mount it) and
        # recorded as a failed run (state file, notification); it fails before the repository is
        # opened, so no key is derived for it ahead either.
        if cfg.workspace.is_dir():
            context.unlock_ahead(cfg, envx)
    # Loaded after the key is derived: its modules need not be in memory during scrypt.
    from phoenix_backup.ops import backup as backup_op

    result = backup_op.backup(cfg, envx, scope=scope or "full", tags=tags, time_text=time_text, dry_run=dry_run)  # type: ignore[arg-type]
    out.result(result.to_json(), render.backup(result, out.verbose))
    # What failed goes to stderr as well, where a wrapper script or a terminal sees it beside --json.
    for item in result.incomplete:
        out.problem(f"not saved: {item['path']}: {item['error']}")
    for item in result.damaged:
        out.problem(f"damaged: {item['path']}: {item['error']}")
    out.failed_targets(result.targets)
    if result.lock_left is not None:
        out.problem(result.lock_left)
    return result.exit_status
