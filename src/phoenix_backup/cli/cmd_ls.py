"""`phx ls`."""

from __future__ import annotations

import click

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
)
from phoenix_backup.errors import ExitStatus, shown, shown_each
from phoenix_backup.ops import ls as ls_op
from phoenix_backup.ops.context import Environment


@cli.command(name="ls")
@click.argument("ref", metavar="ID", shell_complete=complete_snapshots)
@click.argument("path", required=False)
@click.option("--no-recursive", "flat", is_flag=True, help="List only the folder's own entries.")
@target_option
@latest_options
@repo_option
@common
def ls_cmd(
    out: Out, envx: Environment, config_path: str | None, ref: str, path: str | None, flat: bool, target: str | None
) -> ExitStatus:
    """List a snapshot's files and folders (modes, sizes, modification times), below PATH if given.

    ID is a snapshot id, unique prefix, name or `latest`. PATH is a logical path
    (workspace/memory, home/.argentos/memory.db), a path inside the workspace, or ~/...

    Example: phx ls latest memory/
    """
    cfg = load_config(out, envx, config_path)
    check_target(target, cfg, envx)
    result = ls_op.ls(cfg, envx, ref=ref, path=path, recursive=not flat, target=target)
    # One of the two only: a listing of 200,000 files held both (~500 bytes a file).
    if out.as_json:
        out.result(result.to_json(), "", data=True)
    else:
        out.result(None, render(result), data=True)
    return ExitStatus.OK


def render(r: ls_op.LsResult) -> str:
    from phoenix_backup.ops.ls import permissions

    rows = []
    for e in r.entries:
        n = e.node
        size = str(n.size) if n.type in ("file", "sqlite") else "-"
        when = ls_op.rfc3339_ns(n.mtime_ns).replace("+00:00", "Z")
        # A name's newline or escape shown escaped, as `ls -b` does: one line a file (--json: exact).
        name = shown(e.path) + ("/" if n.type == "dir" else "")
        if n.type == "symlink":
            name += f" -> {shown(n.link_target)}"
        if n.type == "sqlite":
            name += "  (sqlite)"
        rows.append((permissions(n), size, when, name))
    if not rows:
        return f"{shown(r.path or '/')} is empty in snapshot {shown(r.snapshot.name)}"
    width = max(len(s) for _p, s, _w, _n in rows)
    return shown_each(f"{p}  {s.rjust(width)}  {w}  {n}" for p, s, w, n in rows)
