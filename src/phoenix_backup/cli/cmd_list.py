"""`phx list`."""

from __future__ import annotations

from phoenix_backup.cli import render
from phoenix_backup.cli.app import Out, check_target, cli, common, load_config, repo_option, target_option
from phoenix_backup.errors import ExitStatus
from phoenix_backup.ops import list as list_op
from phoenix_backup.ops.context import Environment


@cli.command(name="list")
@target_option
@repo_option
@common
def list_cmd(out: Out, envx: Environment, config_path: str | None, target: str | None) -> ExitStatus:
    """List snapshots: id, name, time, size, bytes added, files, databases, tags, targets.

    Example: phx list --json
    """
    cfg = load_config(out, envx, config_path)
    check_target(target, cfg, envx)
    snaps = list_op.list_snapshots(cfg, envx, target=target)
    out.result([s.to_json() for s in snaps], render.snapshots(snaps))
    return ExitStatus.OK
