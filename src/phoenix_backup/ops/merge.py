"""`phx restore --merge`: the rows of a snapshot's SQLite stores merged into the live stores by
primary key (sinks/sqlite_merge.py), after a safety snapshot of the stores as they were.
"""

from __future__ import annotations

import fnmatch

from phoenix_backup.config import Config
from phoenix_backup.errors import Cancelled, ConfirmationRequired, MergeFailed
from phoenix_backup.ops.context import (
    Environment,
    agent_latest,
    open_repository,
    require_config_file,
    require_identity,
    scratch_dir,
)
from phoenix_backup.repo.reader import copy_snapshot_database
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.snapshot import Snapshot
from phoenix_backup.repo.tree import Node
from phoenix_backup.repo.walker import walk_tree
from phoenix_backup.sinks import ConflictMode
from phoenix_backup.sinks.sqlite_merge import MergeResult, SqliteRowSource, merge_database
from phoenix_backup.sources.layout import Layout


def confirm_merge(envx: Environment, question: str, flag: str) -> None:
    """Ask on a terminal; without one, refuse and name the flag that confirms."""
    if not envx.interactive or envx.confirm is None:
        raise ConfirmationRequired(
            f"this merge writes into the live stores and there is no terminal to ask on; pass {flag} to confirm "
            "(or --dry-run to see what it would do)"
        )
    if not envx.confirm(question):
        raise Cancelled("merge cancelled; nothing was changed")


def merged_before(exc: MergeFailed, result: MergeResult, undo: str) -> MergeFailed:
    """The failure of one store's merge, naming the stores merged before it (each store is its own
    transaction, so they stay merged) and `undo`, how to undo or complete them."""
    done = ", ".join(db.path for db in result.databases)
    return MergeFailed(f"{exc}; {done} had been merged before it; {undo}")


def snapshot_databases(repo: Repository, snap: Snapshot) -> list[tuple[str, Node]]:
    """(logical path, node) of every database a snapshot holds."""
    return [(lg, n) for lg, n in walk_tree(repo, snap.tree) if n.type == "sqlite"]


def merge_snapshot(
    cfg: Config,
    envx: Environment,
    *,
    ref: str = "latest",
    conflict_mode: ConflictMode = "skip",
    dry_run: bool = False,
    yes: bool = False,
    paths: tuple[str, ...] = (),
    target: str | None = None,
    safety_snapshot: bool = True,
) -> MergeResult:
    """`phx restore --merge`: merge the rows of a snapshot's databases into the live stores.

    Only databases are merged (files have no rows); `paths` (globs on the logical path or the
    file name) narrows which ones. Unless `safety_snapshot` is false, the live stores are first
    saved in a `pre-restore` safety snapshot (as an in-place restore does), so restoring that
    snapshot undoes the merge.
    """

    require_config_file(cfg, "a merge into the live stores")
    repo = open_repository(cfg, envx, target=target)
    require_identity(repo)
    layout = Layout(cfg.workspace, envx.home)
    with repo.lock(exclusive=False, command="restore --merge"):
        repo.load_index()
        snap = repo.find_snapshot(ref, latest=agent_latest(cfg, envx))
        dbs = [
            (lg, n)
            for lg, n in snapshot_databases(repo, snap)
            if not paths or any(fnmatch.fnmatch(lg, p) or fnmatch.fnmatch(lg.rsplit("/", 1)[-1], p) for p in paths)
        ]
        result = MergeResult(snap.id, "snapshot", conflict_mode, dry_run, name=snap.name)
        if not dbs:
            result.warnings.append(f"snapshot {snap.name} holds no database to merge")
            return result
        if not dry_run and not yes:
            names = ", ".join(lg.rsplit("/", 1)[-1] for lg, _ in dbs)
            confirm_merge(
                envx,
                f"Merge the rows of {names} from {snap.name} into the live stores (conflict mode {conflict_mode})?",
                "--yes (or --force)",
            )
        if not dry_run and safety_snapshot:
            from phoenix_backup.ops import safety

            taken = safety.take(repo, cfg, envx, layout, {lg: "sqlite" for lg, _ in dbs})
            result.safety_snapshot = taken.id
            envx.notice(f"safety snapshot {str(taken.id)[:8]} holds the stores as they were; restore it to undo")
        with scratch_dir("phx-merge-") as scratch:
            for i, (logical, node) in enumerate(dbs):
                copy = copy_snapshot_database(repo, logical, node, scratch / f"{i}.db")
                source = SqliteRowSource(copy)
                try:
                    live = layout.to_real(logical)
                    result.databases.append(merge_database(source, logical, live, mode=conflict_mode, dry_run=dry_run))
                except MergeFailed as exc:
                    if dry_run or not result.databases:
                        raise
                    # Each store is its own transaction: say which ones this merge did change.
                    safety_id = result.safety_snapshot
                    undo = (
                        f"restore safety snapshot {safety_id[:8]} to undo"
                        if safety_id
                        else "merging again once the cause is fixed merges the rest"
                    )
                    raise merged_before(exc, result, undo) from exc
                finally:
                    source.close()
                    copy.unlink(missing_ok=True)
        return result
