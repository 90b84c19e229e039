"""`phx restore`."""

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
    scope_options,
    target_option,
    thaw_option,
)
from phoenix_backup.config import Config
from phoenix_backup.errors import ExitStatus, shown, shown_each
from phoenix_backup.ops import context
from phoenix_backup.ops.context import Environment, folder_argument


@cli.command()
@click.option(
    "--latest",
    "latest",
    is_flag=True,
    help="Restore the newest complete full snapshot of this host (--scope, --tag, --host select others).",
)
@click.option(
    "--backup",
    "ref",
    help="Snapshot id, unique id prefix or name (2026-03-15-14-30).",
    shell_complete=complete_snapshots,
)
@click.option(
    "--at",
    "at",
    metavar="TIME",
    help="Restore the SQLite databases `phx watch` captured as they were at TIME (RFC 3339 with offset).",
)
@scope_options(config=True)
@latest_options
@click.option("--path", "paths", multiple=True, help="Only paths matching this glob (repeatable).")
@click.option("--to", "to", type=click.Path(file_okay=False), help="Restore below this folder instead of in place.")
@target_option
@thaw_option
@click.option("--dry-run", is_flag=True, help="Show the plan; write nothing.")
@click.option("--yes", "--force", "yes", is_flag=True, help="Do not ask before overwriting.")
@click.option(
    "--delete", is_flag=True, help="In place: also delete what the restored scope holds and the snapshot lacks."
)
@click.option(
    "--realign", is_flag=True, help="Rewrite the hashes of .argent-alignment-integrity.json if the restore breaks it."
)
@click.option(
    "--no-safety-snapshot",
    "no_safety",
    is_flag=True,
    help="In place: skip the pre-restore safety snapshot (the restore cannot be undone).",
)
@click.option(
    "--to-database",
    "to_database",
    metavar="NAME",
    help="Restore the snapshot's PostgreSQL database into a new database NAME on the configured server.",
)
@click.option(
    "--conflict-mode",
    type=click.Choice(["skip", "update"]),
    default=None,
    help="Rows (agent-scoped PostgreSQL) and Redis keys that exist: keep them (skip) or overwrite (update, default).",
)
@click.option(
    "--keyless",
    type=click.Choice(["add", "replace"]),
    default="add",
    show_default=True,
    help="Agent-scoped PostgreSQL tables without a primary key: add the saved rows that are missing (matched on "
    "all columns), or replace the agent's rows with the saved ones.",
)
@click.option(
    "--merge",
    is_flag=True,
    help="Merge the snapshot's SQLite rows into the live stores by primary key (--conflict-mode, default skip).",
)
@repo_option
@common
def restore(
    out: Out,
    envx: Environment,
    config_path: str | None,
    latest: bool,
    ref: str | None,
    at: str | None,
    scope: str | None,
    paths: tuple[str, ...],
    to: str | None,
    target: str | None,
    thaw_timeout: float,
    dry_run: bool,
    yes: bool,
    delete: bool,
    realign: bool,
    no_safety: bool,
    to_database: str | None,
    conflict_mode: str | None,
    keyless: str,
    merge: bool,
) -> ExitStatus:
    """Restore all or part of a snapshot, in place or below --to.

    In place, the gateway is stopped first (gateway.stop) and started again afterwards
    (gateway.start), and a safety snapshot tagged pre-restore holds what the restore overwrites or
    deletes: `phx restore --backup <its id>` undoes the restore. SQLite databases are written
    through the backup API so that open connections see the restored content.

    Example: phx restore --latest --dry-run && phx restore --latest --yes
    """
    from phoenix_backup.cli.main import keep_freed_heap
    from phoenix_backup.errors import UsageError

    keep_freed_heap()

    if at is not None:
        if latest or ref or delete or merge or to_database or realign:
            raise UsageError(
                "--at restores the captured databases alone; leave out --latest, --backup, --delete, --merge, "
                "--to-database and --realign"
            )
        cfg = load_config(out, envx, config_path)
        check_target(target, cfg, envx)
        envx.thaw_timeout = thaw_timeout
        return _at(out, envx, cfg, at, paths, to, dry_run, yes, no_safety)
    if latest and ref:
        raise UsageError("give either --latest or --backup ID, not both")
    if not latest and not ref:
        raise UsageError("say which snapshot to restore: --latest or --backup ID (see `phx list`)")
    cfg = load_config(out, envx, config_path)
    check_target(target, cfg, envx)
    envx.thaw_timeout = thaw_timeout
    if merge:
        return _merge(out, envx, cfg, ref or "latest", conflict_mode, dry_run, yes, paths, to, target, no_safety)
    to_path = folder_argument(to) if to else None
    # What needs no key is checked before its scrypt: a mistake costs no key derivation.
    context.check_restore(cfg, to=to_path, delete=delete, to_database=to_database, home=envx.home)
    context.unlock_ahead(cfg, envx)
    # Loaded after the key is derived: its modules need not be in memory during scrypt.
    from phoenix_backup.ops import restore as restore_op

    result = restore_op.restore(
        cfg,
        envx,
        ref=ref or "latest",
        scope=scope or "full",  # type: ignore[arg-type]
        paths=paths,
        to=to_path,
        dry_run=dry_run,
        yes=yes,
        delete=delete,
        realign=realign,
        safety_snapshot=not no_safety,
        to_database=to_database,
        conflict_mode="skip" if conflict_mode == "skip" else "update",
        keyless="replace" if keyless == "replace" else "add",
    )
    out.result(result.to_json(), render.restore(result, out.verbose), data=result.exit_status != ExitStatus.OK)
    if result.damaged:
        lost = [str(d["path"]) for d in result.damaged]
        named = ", ".join(lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
        # The cause, of the first one (the output names each).
        why = f"{lost[0]}: {result.damaged[0]['error']}"
        out.error(
            f"{len(lost)} file(s) or database(s) not restored because their data is damaged or missing "
            f"({why if len(lost) == 1 else f'{named}; {why}'}); everything else was restored; see the output for "
            "the targets or older snapshots that may hold them, and run `phx verify --read-data`"
        )
    return result.exit_status


def _merge(
    out: Out,
    envx: Environment,
    cfg: Config,
    ref: str,
    conflict_mode: str | None,
    dry_run: bool,
    yes: bool,
    paths: tuple[str, ...],
    to: str | None,
    target: str | None,
    no_safety: bool,
) -> ExitStatus:
    """`--merge`: the row merge of `phx import`, from the snapshot's copies of the stores (issue #9)."""
    from phoenix_backup.cli.cmd_import import notices, text
    from phoenix_backup.errors import UsageError
    from phoenix_backup.ops.merge import merge_snapshot

    if to:
        raise UsageError("--merge writes into the live stores; leave out --to (or restore below --to without --merge)")
    result = merge_snapshot(
        cfg,
        envx,
        ref=ref,
        conflict_mode="update" if conflict_mode == "update" else "skip",
        dry_run=dry_run,
        yes=yes,
        paths=paths,
        target=target,
        safety_snapshot=not no_safety,
    )
    notices(out, result)
    out.result(result.to_json(), text(result))
    return result.exit_status


def _at(
    out: Out,
    envx: Environment,
    cfg: Config,
    at: str,
    paths: tuple[str, ...],
    to: str | None,
    dry_run: bool,
    yes: bool,
    no_safety: bool,
) -> ExitStatus:
    """`--at TIME`: point-in-time restore from the capture segments (ops/pitr.py)."""
    from phoenix_backup.ops import pitr

    result = pitr.restore_at(
        cfg,
        envx,
        at,
        paths=paths,
        to=folder_argument(to) if to else None,
        dry_run=dry_run,
        yes=yes,
        safety_snapshot=not no_safety,
    )
    lines = [f"{'plan: ' if dry_run else ''}databases as of {result.at}:"]
    for d in result.databases:
        where = f" -> {d['to']}" if "to" in d else ""
        lines.append(f"  {d['path']}: state seen {d.get('seen')}, integrity {d.get('integrity', '-')}{where}")
    if result.files is not None:
        lines.append(
            f"  files: the snapshot {str(result.files['snapshot'])[:8]} of {result.files['time']}, "
            f"{result.files.get('restored', 0)} restored"
        )
    if result.safety_snapshot:
        sid = result.safety_snapshot[:8]
        lines.append(f"safety snapshot {sid} (`phx restore --backup {sid}` undoes this restore)")
    for note in result.notices:
        out.notice(f"warning: {note}")
    out.result(result.to_json(), shown_each(lines), data=True)
    for e in result.errors:
        out.problem(f"not restored: {shown(e['path'])}: {e['error']}")
    return result.exit_status
