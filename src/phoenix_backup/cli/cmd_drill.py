"""`phx drill`."""

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
    thaw_option,
)
from phoenix_backup.config import Config
from phoenix_backup.errors import ExitStatus, shown_each
from phoenix_backup.ops import drill as drill_op
from phoenix_backup.ops.context import Environment, folder_argument


@cli.command()
@click.option(
    "--backup",
    "ref",
    default="latest",
    show_default=True,
    help="Snapshot id, unique prefix or name.",
    shell_complete=complete_snapshots,
)
@click.option(
    "--at",
    "at",
    metavar="TIME",
    help="Drill the SQLite databases `phx watch` captured, as they were at TIME (RFC 3339 with offset).",
)
@target_option
@thaw_option
@click.option(
    "--scratch",
    type=click.Path(file_okay=False, exists=True),
    help="Folder below which the scratch restore is made (default: the system's temporary folder).",
)
@latest_options
@repo_option
@common
def drill(
    out: Out,
    envx: Environment,
    config_path: str | None,
    ref: str,
    at: str | None,
    target: str | None,
    thaw_timeout: float,
    scratch: str | None,
) -> ExitStatus:
    """Restore a snapshot into scratch space and prove it: checksums, integrity, row counts.

    Writes a Markdown and a JSON report to ~/.argentos/backup/drills/ and exits 1 on any mismatch.

    Example: phx drill --backup 2026-03-15-14-30
    """
    cfg = load_config(out, envx, config_path)
    check_target(target, cfg, envx)
    envx.thaw_timeout = thaw_timeout
    if at is not None:
        return _at(out, envx, cfg, at)
    result = drill_op.drill(cfg, envx, ref=ref, target=target, scratch=folder_argument(scratch) if scratch else None)
    out.result(result.to_json(), render(result, out.verbose), data=result.exit_status != ExitStatus.OK)
    return result.exit_status


def render(r: drill_op.DrillResult, verbose: bool) -> str:
    c = r.checked
    lines = [
        f"drill of {r.name} ({r.snapshot[:8]}) from {r.target}: restored into scratch space in {r.duration:.1f} s",
        # Files as `phx backup` counts them: symlinks among them, SQLite databases apart (below).
        f"  {'✓' if not _file_errors(r) else '✗'} {c.get('files', 0) + c.get('symlinks', 0)} files "
        f"({c.get('symlinks', 0)} of them symlinks), {c.get('dirs', 0)} folders: present, with their recorded "
        "size, mode and SHA-256",
    ]
    for d in r.databases:
        rows = sum(a for _e, a in d.tables.values() if a is not None)
        fts = f", FTS5 {len([s for s in d.fts5.values() if s == 'ok'])}/{len(d.fts5)} ok" if d.fts5 else ""
        lines.append(
            f"  {'✓' if d.ok else '✗'} {d.path}: integrity {d.integrity}{fts}, {len(d.tables)} tables, "
            f"{rows} rows{' as recorded' if d.ok else ''}"
        )
    for e in r.errors:
        lines.append(f"  error: {e.path or '-'}: {e.message} [{e.object}]")
    if verbose or not r.ok:
        lines += [f"  notice: {n}" for n in r.notices]
    if r.report_markdown:
        lines.append(f"report: {r.report_markdown}")
    lines += [f"  not in the snapshot: {i['path']}: {i['error']}" for i in r.lacking]
    lines += [f"  not checked: {u}" for u in r.unchecked]
    if not r.ok:
        lines.append(f"drill FAILED: {len(r.errors)} error(s)")
    elif r.unchecked:
        lines.append(
            f"drill passed what it could check, but {len(r.unchecked)} check(s) could not run (above): "
            "it proves nothing of those"
        )
    elif r.lacking:
        lines.append(
            f"drill passed for what the snapshot holds, but the snapshot is PARTIAL: it lacks {len(r.lacking)} "
            "part(s) its backup could not save (above)"
        )
    else:
        lines.append("drill passed")
    return shown_each(lines)


def _file_errors(r: drill_op.DrillResult) -> bool:
    dbs = {d.path for d in r.databases}
    return any(e.path not in dbs for e in r.errors)


def _at(out: Out, envx: Environment, cfg: Config, at: str) -> ExitStatus:
    """`--at TIME`: rebuild each captured database at TIME in scratch space and check it."""
    from phoenix_backup.ops import pitr

    result = pitr.restore_at(cfg, envx, at, check_only=True)
    lines = [f"drill of the captured databases as of {result.at}:"]
    for d in result.databases:
        fts = d.get("fts") or {}
        assert isinstance(fts, dict)
        lines.append(
            f"  ✓ {d['path']}: state seen {d['seen']}, {d['pages']} pages, integrity {d['integrity']}, "
            f"FTS5 {sum(1 for v in fts.values() if v == 'ok')}/{len(fts)} ok"
        )
    for e in result.errors:
        lines.append(f"  ✗ {e['path']}: {e['error']}")
    lines.append("drill passed" if not result.errors else f"drill FAILED: {len(result.errors)} error(s)")
    out.result(result.to_json(), shown_each(lines), data=bool(result.errors))
    return ExitStatus.FAILURE if result.errors else ExitStatus.OK
