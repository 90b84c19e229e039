"""`phx export`."""

from __future__ import annotations

from pathlib import Path

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
from phoenix_backup.errors import ExitStatus, shown_each
from phoenix_backup.ops import export as export_op
from phoenix_backup.ops.context import Environment
from phoenix_backup.units import human_size


@cli.command(name="export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(export_op.FORMATS),
    default="json",
    show_default=True,
    help="json: complete, importable; csv: one file per table; markdown: for a person.",
)
@click.option(
    "--backup",
    "ref",
    metavar="ID",
    help="Export this snapshot instead of the live stores.",
    shell_complete=complete_snapshots,
)
@click.option("--no-vectors", is_flag=True, help="Leave embedding vectors out (a much smaller export).")
@click.option("--sanitize", is_flag=True, help="Redact secrets, leave credential files out; add MIGRATION.md.")
@click.option("--output", "output", required=True, type=click.Path(file_okay=False), help="A new (or empty) folder.")
@target_option
@latest_options
@repo_option
@common
def export_cmd(
    out: Out,
    envx: Environment,
    config_path: str | None,
    fmt: export_op.ExportFormat,
    ref: str | None,
    no_vectors: bool,
    sanitize: bool,
    output: str,
    target: str | None,
) -> ExitStatus:
    """Export the agent's memory stores, identity, memory notes and config as JSON, CSV or Markdown.

    Every table of every configured SQLite store is exported (FTS and vec0 shadow tables are
    derived and left out), with metadata.json and checksums.json (SHA-256 of every file).

    Example: phx export --format markdown --output ~/agent-export
    """
    cfg = load_config(out, envx, config_path)
    check_target(target, cfg, envx)
    result = export_op.export(
        cfg,
        envx,
        output=Path(output),
        fmt=fmt,
        ref=ref,
        vectors=not no_vectors,
        sanitize=sanitize,
        target=target,
    )
    for warning in result.warnings:
        out.notice(f"warning: {warning}")
    out.result(result.to_json(), text(result))
    return result.exit_status


def text(r: export_op.ExportResult) -> str:
    src = r.source
    where = (
        "the live stores"
        if src.get("kind") == "live"
        else f"snapshot {src.get('name')} ({str(src.get('snapshot'))[:8]})"
    )
    lines = [f"exported {where} as {r.format} to {r.output} ({human_size(r.size)})"]
    for db in r.databases:
        rows = sum(db.tables.values())
        derived = f", {len(db.derived)} derived tables left out" if db.derived else ""
        lines.append(f"  {db.path}: {len(db.tables)} tables, {rows} rows{derived}")
    lines.append(f"  {len(r.files)} files")
    if r.format != "markdown":
        lines.append(f"  vectors: {'included' if r.vectors else 'left out'}")
    if r.sanitized:
        left = f", {len(r.left_out)} credential or non-text file(s) left out" if r.left_out else ""
        lines.append(f"  {len(r.redactions)} secret(s) redacted{left}; see redactions.json and MIGRATION.md")
    lines.append(f"  checksums.json combined sha256 {r.combined}")
    return shown_each(lines)
