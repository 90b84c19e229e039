"""`phx list`."""

from __future__ import annotations

from datetime import datetime
from typing import cast

import click

from phoenix_backup.cli import render
from phoenix_backup.cli.app import (
    SCOPES,
    Out,
    check_target,
    cli,
    common,
    load_config,
    repo_option,
    target_option,
)
from phoenix_backup.config import Config
from phoenix_backup.errors import ExitStatus, UsageError, shown_each
from phoenix_backup.ops import list as list_op
from phoenix_backup.ops.context import Environment
from phoenix_backup.repo.snapshot import WATCH_SCOPES, Selection


@cli.command(name="list")
@click.option("--host", metavar="HOST", help="Only the snapshots of this host.")
@click.option("--scope", type=click.Choice((*SCOPES, *WATCH_SCOPES)), help="Only the snapshots of this scope.")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="TAG",
    help="Only the snapshots carrying this tag (repeatable: all of them).",
)
@click.option("--last", type=click.IntRange(min=1), metavar="N", help="Only the N newest of the snapshots selected.")
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help="Also the snapshots `phx watch` takes (hidden by default).",
)
@click.option("--timeline", is_flag=True, help="The times `phx watch` covers, per database: covered ranges and gaps.")
@click.option("--at", "at", metavar="TIME", help="Which captured state of each database holds at TIME (RFC 3339).")
@target_option
@repo_option
@common
def list_cmd(
    out: Out,
    envx: Environment,
    config_path: str | None,
    host: str | None,
    scope: str | None,
    tags: tuple[str, ...],
    last: int | None,
    show_all: bool,
    timeline: bool,
    at: str | None,
    target: str | None,
) -> ExitStatus:
    """List snapshots, oldest first: id, name, time, size, bytes added, files, databases, tags, targets.

    The snapshots `phx watch` takes (scopes watch and watch-files) are hidden, in the JSON too,
    and counted below the list: `--all` or `--scope watch-files` shows them.

    Example: phx list --json

    Example: phx list --scope full --last 5
    """
    cfg = load_config(out, envx, config_path)
    check_target(target, cfg, envx)
    if timeline or at is not None:
        return _captures(out, envx, cfg, timeline, at)
    every = list_op.list_snapshots(cfg, envx, target=target)
    # phx watch's snapshots (a base per chain, one of the files per burst of changes) would bury
    # the backups: hidden, in the text and the JSON alike, unless --all or --scope names them.
    shown = every if show_all or scope in WATCH_SCOPES else [s for s in every if s.snapshot.scope not in WATCH_SCOPES]
    chosen = {s.id for s in Selection(host, scope, tags, last).apply([s.snapshot for s in shown])}
    snaps = [s for s in shown if s.snapshot.id in chosen]
    text = render.snapshots(snaps) if snaps or not shown else f"none of the {len(shown)} snapshots is selected"
    if len(shown) < len(every):
        text += (
            f"\n{len(every) - len(shown)} snapshots of `phx watch` hidden (scopes watch, watch-files): "
            "`phx list --all` shows them, `--scope watch-files` only those of the files"
        )
    out.result([s.to_json() for s in snaps], text, data=True)
    return ExitStatus.OK


def _captures(out: Out, envx: Environment, cfg: Config, timeline: bool, at: str | None) -> ExitStatus:
    """`--timeline` and `--at TIME`: what the capture segments of `phx watch` cover."""
    from phoenix_backup.ops import pitr
    from phoenix_backup.repo.captures import describe, span

    if timeline and at is not None:
        raise UsageError("give --timeline or --at TIME, not both")
    if at is not None:
        states = pitr.list_at(cfg, envx, at)
        lines = []
        for s in states:
            if s.covered:
                kept = " (thinned: the newest state kept at or before)" if s.thinned else ""
                lines.append(f"{s.path}: the state seen {s.seen} ({s.page_count} pages){kept}")
            else:
                lines.append(f"{s.path}: not covered")
        out.result([s.to_json() for s in states], shown_each(lines), data=True)
        return ExitStatus.OK
    report = pitr.timeline(cfg, envx)
    lines = []
    for path, rows in report.databases.items():
        lines.append(path)
        for row in rows:
            start, end = _us(str(row["from"])), _us(str(row["to"]))
            if row["kind"] == "gap":
                lines.append(f"  gap      {describe(start)} to {describe(end, up=True)}")
            elif row["kind"] == "thinned":
                points = [_us(str(t)) for t in cast(list[str], row["points"])]
                lines.append(
                    f"  thinned  {describe(start)} to {describe(end)}: {len(points)} kept states, "
                    f"{describe(points[0]) if points else '-'} to {describe(points[-1]) if points else '-'} "
                    "(--at gives the newest kept state at or before)"
                )
            else:
                lines.append(f"  covered  {span(start, end)} ({row['seconds']} s)")
    if not report.databases:
        lines.append("no capture segment: run `phx watch` to capture the databases continuously")
    lines.append(f"{report.segments} segments, {report.bytes} bytes")
    for name, problem in report.problems.items():
        lines.append(f"unreadable: {name}: {problem}")
    out.result(report.to_json(), shown_each(lines), data=True)
    return ExitStatus.PARTIAL if report.problems or report.broken else ExitStatus.OK


def _us(text: str) -> int:
    from phoenix_backup.repo.captures import to_us  # `--timeline` and `--at` only

    return to_us(datetime.fromisoformat(text))
