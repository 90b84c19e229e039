"""`phx import`."""

from __future__ import annotations

from pathlib import Path

import click

from phoenix_backup.cli import render
from phoenix_backup.cli.app import Out, cli, common, load_config
from phoenix_backup.errors import ExitStatus, shown_each
from phoenix_backup.ops import import_ as import_op
from phoenix_backup.ops.context import Environment
from phoenix_backup.sinks import CONFLICT_MODES, ConflictMode
from phoenix_backup.sinks.sqlite_merge import MergeResult


@cli.command(name="import")
@click.argument("folder", metavar="DIR", type=click.Path(file_okay=False))
@click.option(
    "--conflict-mode",
    type=click.Choice(CONFLICT_MODES),
    default="skip",
    show_default=True,
    help="Rows whose key exists: skip keeps the live row, update overwrites it.",
)
@click.option("--dry-run", is_flag=True, help="Verify and count what would be merged; write nothing.")
@click.option("--force", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--to",
    "to",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Merge into stores below DIR (DIR/home/.argentos/memory.db ...), not into the live stores.",
)
@common
def import_cmd(
    out: Out,
    envx: Environment,
    config_path: str | None,
    folder: str,
    conflict_mode: ConflictMode,
    dry_run: bool,
    force: bool,
    to: str | None,
) -> ExitStatus:
    """Merge a JSON export (`phx export --format json`) into the live stores, row by primary key.

    checksums.json is verified first; each store is merged in one transaction, its full-text
    indexes rebuilt and `PRAGMA integrity_check` run before it commits. Only the SQLite stores
    this config backs up are written (or stores below --to DIR): the export's checksums detect
    damage, not tampering, so its metadata never chooses where data goes.

    Example: phx import ~/agent-export --conflict-mode skip --dry-run
    """
    cfg = load_config(out, envx, config_path)
    result = import_op.import_export(
        cfg,
        envx,
        folder=Path(folder),
        conflict_mode=conflict_mode,
        dry_run=dry_run,
        force=force,
        to=Path(to) if to is not None else None,
    )
    notices(out, result)
    out.result(result.to_json(), text(result))
    return result.exit_status


def notices(out: Out, r: MergeResult) -> None:
    """Warnings go to stderr, each naming its store, whatever the output format."""
    for warning in r.warnings:
        out.notice(f"warning: {warning}")
    for db in r.databases:
        for warning in db.warnings:
            out.notice(f"warning: {db.path}: {warning}")


def text(r: MergeResult) -> str:
    """The per-table restored / skipped / updated counts of a merge (import or restore --merge)."""
    what = f"export {r.source}" if r.source_kind == "export" else f"snapshot {r.name} ({r.source[:8]})"
    head = "[dry run] would merge" if r.dry_run else "merged"
    lines = [f"{head} {what} into the live stores (conflict mode {r.conflict_mode})"]
    if r.source_kind == "export":
        lines.append(f"  checksums verified: {r.checked_files} files")
    for db in r.databases:
        status = "new store" if db.created else f"integrity {db.integrity}" if not r.dry_run else "existing store"
        lines.append(f"  {db.path} -> {db.target} ({status})")
        rows = [
            [t.table, str(t.restored), str(t.skipped), str(t.updated), str(t.unchanged), str(t.failed)]
            for t in db.tables
        ]
        table = render.table(["TABLE", "RESTORED", "SKIPPED", "UPDATED", "UNCHANGED", "FAILED"], rows)
        lines += ["    " + line for line in table.splitlines()]
        if db.fts_rebuilt:
            lines.append(f"    full-text indexes rebuilt: {', '.join(db.fts_rebuilt)}")
    t = r.totals()
    lines.append(
        f"total: {t['restored']} restored, {t['skipped']} skipped, {t['updated']} updated, "
        f"{t['unchanged']} unchanged, {t['failed']} failed" + (" (dry run: nothing written)" if r.dry_run else "")
    )
    return shown_each(lines)
