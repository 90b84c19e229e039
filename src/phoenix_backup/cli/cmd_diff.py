"""`phx diff`."""

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
)
from phoenix_backup.errors import ExitStatus, shown, shown_each
from phoenix_backup.ops import diff as diff_op
from phoenix_backup.ops.context import Environment
from phoenix_backup.units import human_size


@cli.command(name="diff")
@click.argument("ref1", metavar="ID1", shell_complete=complete_snapshots)
@click.argument("ref2", metavar="ID2", shell_complete=complete_snapshots)
@click.option("--rows", is_flag=True, help="Also compare the rows of every database table, by primary key.")
@target_option
@latest_options
@repo_option
@common
def diff_cmd(
    out: Out, envx: Environment, config_path: str | None, ref1: str, ref2: str, rows: bool, target: str | None
) -> ExitStatus:
    """Show what changed from snapshot ID1 to ID2: files added, changed and removed, with sizes.

    With --rows, also the rows added, removed and changed in every database table, and a
    one-line summary such as "+152 memories, −3, 41 changed".

    Example: phx diff 2026-03-15-14-30 latest --rows
    """
    cfg = load_config(out, envx, config_path)
    check_target(target, cfg, envx)
    result = diff_op.diff(cfg, envx, ref1=ref1, ref2=ref2, rows=rows, target=target)
    out.result(result.to_json(), text(result, out.verbose), data=True)
    return result.exit_status


def _delta(n: int) -> str:
    return ("+" if n >= 0 else "−") + human_size(abs(n))


def text(r: diff_op.DiffResult, verbose: bool) -> str:
    lines = [f"diff {r.old.name} ({r.old.id[:8]}) -> {r.new.name} ({r.new.id[:8]})"]
    for f in r.files:
        if f.change == "added":
            size = human_size(f.new_size)
        elif f.change == "removed":
            size = human_size(f.old_size)
        else:
            size = f"{_delta(f.new_size - f.old_size)} ({human_size(f.old_size)} -> {human_size(f.new_size)})"
        kind = "" if f.type == "file" else f" [{f.type}]"
        lines.append(f"  {f.change:8} {shown(f.path)}{kind}  {size}")  # one line a file (--json: exact)
    for db in r.databases:
        lines.append(f"rows of {shown(db.path)} ({db.change}):")
        tables = [t for t in db.tables if t.any or verbose]
        if tables:
            rows = [
                [t.table, str(t.rows_before), str(t.rows_after), f"+{t.added}", f"−{t.removed}", str(t.changed)]
                for t in tables
            ]
            table = render.table(["TABLE", "BEFORE", "AFTER", "ADDED", "REMOVED", "CHANGED"], rows)
            lines += ["  " + line for line in table.splitlines()]
        else:
            lines.append("  no row changed")
        lines += [f"  note: {n}" for n in db.notes]
    lines.append(f"summary: {r.summary()}")
    return shown_each(lines)
