"""`phx restore`: all or part of a snapshot, in place or below `--to DIR`.

In place the order is: select → plan → confirm → read and authenticate every blob the restore needs
→ check the live databases can take the restored copies → stop the gateway → safety snapshot of what
will change → write files → delete → restore databases → check them → alignment manifest → folder
modes and times → start the gateway (always, after a failure too). Nothing is touched before the
gateway has stopped and the safety snapshot is committed.

This module keeps that order; the work is done by the sinks: sinks/select.py picks the nodes,
repo/reader.py reads and checks their bytes, sinks/files.py writes files (never through a link,
never torn), sinks/sqlite.py, sinks/databases.py write databases; ops/safety.py takes the safety
snapshot and argentos/ knows the gateway and the alignment manifest.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import os
import resource
import stat
import threading
import unicodedata
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from phoenix_backup.argentos import alignment
from phoenix_backup.argentos.gateway import run_gateway
from phoenix_backup.config import Config
from phoenix_backup.errors import (
    Cancelled,
    ConfirmationRequired,
    CorruptObject,
    ExitStatus,
    GatewayError,
    NoSpace,
    ObjectNotFound,
    PhoenixError,
    ReadOnlyStorage,
    RestoreError,
    SourceError,
    UnsafePath,
    UsageError,
    shown,
)
from phoenix_backup.ops import safety
from phoenix_backup.ops.context import (
    Environment,
    cache_for,
    check_restore,
    enabled_targets,
    find_snapshot,
    in_home,
    open_repository,
    require_identity,
    target_backend,
)
from phoenix_backup.ops.selection import in_workspace, key_files_in_workspace, select_sources
from phoenix_backup.repo import checks
from phoenix_backup.repo.crypto import sha256_file, sha256_hex
from phoenix_backup.repo.pack import pack_name
from phoenix_backup.repo.reader import PackSchedule, check_data, damage_text, read_node
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.snapshot import Snapshot
from phoenix_backup.repo.tree import Node
from phoenix_backup.repo.walker import find_node, walk_tree
from phoenix_backup.reporting import Reporter
from phoenix_backup.shell import ShellStep
from phoenix_backup.sinks import leftovers, sqlite_folder, sqlite_live
from phoenix_backup.sinks import sqlite as sqlite_sink
from phoenix_backup.sinks.files import (
    TMP_PREFIX,
    FileWriter,
    LiveState,
    Written,
    fold_name,
    folds_forms,
    folds_names,
    grants_privilege,
    live_state,
    owner_differs,
    seen_folding,
)
from phoenix_backup.sinks.select import ScopeFilter, restored_links, select_nodes
from phoenix_backup.sources.files import SQLITE_SUFFIXES
from phoenix_backup.sources.layout import Layout, all_ancestors, is_database_path
from phoenix_backup.sources.scope import SCOPES, Scope
from phoenix_backup.storage.local import os_error

if TYPE_CHECKING:
    from phoenix_backup.sinks import ConflictMode
    from phoenix_backup.sinks.postgres_agent import KeylessMode

T = TypeVar("T")
# The threads that fsync and rename restored files (write_files), and how many written files may
# wait for them at once.
SYNC_THREADS = 8
SYNC_BACKLOG = 64
# Files handed to the writing threads and not yet recorded: each waits as a future or two (~1.3
# KB each), so a restore of 200,000 small files held half a gigabyte of them when all were handed
# at once.
WRITE_AHEAD = 1024
Action = Literal["create", "overwrite", "delete", "unchanged"]
ACTIONS: tuple[Action, ...] = ("create", "overwrite", "delete", "unchanged")
_NO_PRIVILEGES = "restored without their setuid/setgid bits"


def sync_backlog() -> int:
    """How many written files may wait for their fsync at once: SYNC_BACKLOG, fewer where the
    process may open few files (`ulimit -n`). Each waiting file holds two descriptors; they get at
    most half of the descriptors still free, the rest stay for the packs, the databases and the
    journal (a restore that worked when each writer fsynced its own file must still work)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return SYNC_BACKLOG
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = 32  # no /proc: a restore's usual count
    return max(1, min(SYNC_BACKLOG, (soft - used) // 4))


@dataclass(frozen=True)
class PlanItem:
    path: str  # logical
    target: str  # real path
    kind: str  # file | sqlite | symlink (| dir, for deletions)
    action: Action
    size: int
    metadata: bool = False  # unchanged content whose mode or times the restore sets again

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "target": self.target, "kind": self.kind, "action": self.action, "size": self.size}


@dataclass
class RestoreResult:
    snapshot: str
    name: str
    destination: str  # "in place" or the --to folder
    items: list[PlanItem]
    dry_run: bool
    restored: int = 0
    deleted: int = 0
    # Restored: {path, integrity, method, fts, copyCheck}; dry run: {path, action, tables: {t: {added,
    # removed, changed}}}.
    databases: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    safety_snapshot: dict[str, Any] | None = None  # {id, name, files, absent}
    gateway: dict[str, ShellStep] = field(default_factory=dict)  # "stop", "start"
    alignment: alignment.AlignmentReport | None = None
    deleting: bool = False  # --delete was asked (the counts then name deletions even when there are none)
    # Below --to: where the Phoenix config the backup ran with was written (a new machine's way back
    # to a working config), when the snapshot holds it.
    phoenix_config: str | None = None
    # Files and databases not restored because their data is damaged or missing: {path, error,
    # otherTargets} (the enabled targets that may hold them intact).
    damaged: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_status(self) -> ExitStatus:
        if self.damaged:
            return ExitStatus.FAILURE  # data is lost here; what could be restored was
        start = self.gateway.get("start")
        return ExitStatus.PARTIAL if self.errors or (start is not None and not start.ok) else ExitStatus.OK

    def counts(self) -> dict[str, int]:
        keys = [a for a in ACTIONS if a != "delete" or self.deleting or any(i.action == "delete" for i in self.items)]
        out: dict[str, int] = dict.fromkeys(keys, 0)
        for item in self.items:
            out[item.action] += 1
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "snapshot": self.snapshot,
            "name": self.name,
            "destination": self.destination,
            "dryRun": self.dry_run,
            "restored": self.restored,
            "deleted": self.deleted,
            "counts": self.counts(),
            "items": [i.to_json() for i in self.items],
            "databases": self.databases,
            "errors": self.errors,
            "warnings": self.warnings,
            "safetySnapshot": self.safety_snapshot,
            "gateway": {k: v.to_json() for k, v in self.gateway.items()},
            "alignment": self.alignment.to_json() if self.alignment else None,
            "phoenixConfig": self.phoenix_config,
            "damaged": self.damaged,
        }


def restore(
    cfg: Config,
    envx: Environment,
    *,
    ref: str = "latest",
    scope: Scope = "full",
    paths: tuple[str, ...] = (),
    to: Path | None = None,
    dry_run: bool = False,
    yes: bool = False,
    delete: bool = False,
    realign: bool = False,
    safety_snapshot: bool = True,
    to_database: str | None = None,
    conflict_mode: ConflictMode = "update",
    keyless: KeylessMode = "add",
) -> RestoreResult:
    """Restore all or part of a snapshot in place, or below `to` (a scratch or migration folder).

    In place: the gateway is stopped and started around the restore, and a safety snapshot (tag
    `pre-restore`) makes it undoable unless `safety_snapshot` is False. `delete` removes what the
    restored scope holds and the snapshot lacks; `realign` rewrites the alignment manifest's hashes
    when the restore leaves it inconsistent. `conflict_mode` and `keyless` say how agent-scoped
    PostgreSQL rows and Redis keys are merged (sinks/postgres_agent.py, sinks/databases.py).
    """
    check_restore(cfg, to=to, delete=delete, to_database=to_database, home=envx.home)
    repo = open_repository(cfg, envx)
    try:
        require_identity(repo, "the snapshot's data")
        with repo.lock(exclusive=False, command="restore"):
            repo.load_index()
            # `latest` never picks a safety snapshot (its scope is its own): restoring one is an
            # undo, named by its id.
            snap = find_snapshot(cfg, envx, repo, ref)
            job = _Restore(
                cfg, envx, repo, snap, scope=scope, paths=paths, to=to, delete=delete, realign=realign, yes=yes
            )
            job.servers(to_database, conflict_mode, keyless)
            return job.run(dry_run=dry_run, safety_snapshot=safety_snapshot)
    finally:
        repo.close()


def _paths_not_here(config: Path, home: Path) -> list[str]:
    """What a config restored on a new machine (`--repo`, no config file here) names that this
    machine lacks: the local repository's folder, and a workspace whose folder above is missing
    too; each to set before the copy becomes this machine's config. A config that does not parse
    is left to `phx` to judge once it is in place."""
    try:
        doc = json.loads(config.read_text(encoding="utf-8"))
        local = (doc.get("targets") or {}).get("local") or {}
        fields = [("`workspace`", doc.get("workspace")), ("`backupDir`", local.get("path") or doc.get("backupDir"))]
    except (OSError, ValueError, AttributeError):
        return []
    out = []
    for name, value in fields:
        if not isinstance(value, str) or not value:
            continue
        path = Path(str(home) + value[1:]) if value == "~" or value.startswith("~/") else Path(value)
        # A workspace in this home is this machine's own, as for an in-place restore (context.py).
        mine = name == "`workspace`" and home != Path("/") and in_home(path, home)
        missing = not mine and (not os.path.isdir(path.parent) if name == "`workspace`" else not os.path.isdir(path))
        if path.is_absolute() and missing:
            out.append(
                f"the restored config names {name} {value}, which is not on this machine: set it in {config} "
                "before copying it to ~/.argentos/backup.json"
            )
    return out


def _older_snapshots(repo: Repository, snap: Snapshot, *, same_scope: bool) -> list[Snapshot]:
    """The snapshots of `snap`'s host not newer than it, newest first (of its scope with
    `same_scope`; else any but safety snapshots): where an older copy of what it lacks may be."""
    return [
        s
        for s in reversed(repo.list_snapshots())
        if s.id != snap.id
        and s.datetime <= snap.datetime
        and s.host == snap.host
        and (s.scope == snap.scope if same_scope else s.scope != "pre-restore")
    ]


def _unreadable_tree(repo: Repository, snap: Snapshot, exc: PhoenixError) -> RestoreError:
    """The restore of `snap`, whose folders (trees) this copy of the repository cannot read (a copy
    or sync that stopped before its data, or lost data), refused with the newest older snapshot
    of its host and scope whose trees all read (at most 5 looked at), to restore instead."""
    whole = None
    for other in _older_snapshots(repo, snap, same_scope=True)[:5]:
        with contextlib.suppress(ObjectNotFound, CorruptObject):
            for _ in walk_tree(repo, other.tree):
                pass
            whole = other
            break
    instead = (
        f"restore {whole.name} ({whole.id[:8]}), the newest older snapshot whose folders read, with "
        f"`--backup {whole.id[:8]}`, or this one from another copy"
        if whole is not None
        else "restore it from another copy of the repository"
    )
    return RestoreError(
        f"snapshot {snap.name} ({snap.id[:8]}) cannot be restored from {repo.backend.location}: its folders "
        f"(trees) cannot be read ({exc}), as in a copy or sync that stopped before its data; {instead}; "
        "`phx verify --read-data` checks every snapshot"
    )


@dataclass
class _Plan:
    items: list[PlanItem]
    nodes: dict[str, Node]  # logical -> snapshot node, for everything restored from the snapshot
    dirs: list[tuple[str, Node]]  # the snapshot's folders on the way, parents first
    dir_changes: int  # folders to create, or whose mode (below --to: or time) differs
    # Hard links: a file -> the first name of its link group, when both are restored.
    links: dict[str, str] = field(default_factory=dict)


def _in_folder(reader: FileWriter, path: str, op: str) -> Any:
    """`sqlite_folder`'s `op` on the database at the snapshot path `path`, through folders opened one
    by one without following links (as the restore's writes reach it)."""
    with reader.parent_dir(path, create=False) as (fd, name):
        return sqlite_folder.run(fd, op, [name])


class _Restore:
    """One restore run: the plan, then (unless a dry run) the checks, the gateway and the writes."""

    def __init__(
        self,
        cfg: Config,
        envx: Environment,
        repo: Repository,
        snap: Snapshot,
        *,
        scope: Scope,
        paths: tuple[str, ...],
        to: Path | None,
        delete: bool,
        realign: bool,
        yes: bool,
    ) -> None:
        self.cfg = cfg
        self.envx = envx
        self.repo = repo
        self.snap = snap
        self.scope = scope
        self.paths = paths
        self.to = to
        self.delete = delete
        self.realign = realign
        self.yes = yes
        self.in_place = to is None
        self.layout = Layout(cfg.workspace, envx.home)
        try:
            self.tree = list(walk_tree(repo, snap.tree))
        except (ObjectNotFound, CorruptObject) as exc:
            raise _unreadable_tree(repo, snap, exc) from exc
        self.filter = ScopeFilter(cfg, self.layout, scope, paths, snap.sources)
        self.selected = select_nodes(snap, self.tree, cfg, self.layout, scope, paths)
        if paths and not self.selected and not delete:
            # Else "nothing to restore: every selected path already matches", which a mistyped
            # pattern does not: it selected nothing. (With --delete, files the snapshot lacks go.)
            raise UsageError(
                f"no path of snapshot {snap.name} ({snap.id[:8]}) matches --path {', '.join(paths)}"
                f"{' in the chosen scope' if scope != 'full' else ''}; see `phx ls {snap.id[:8]}` for its paths"
            )
        if scope in ("memory", "identity", "config") and not self.selected and not delete:
            # A mistyped `components` entry selects nothing: "0 to create" and exit 0 read as done.
            patterns = ", ".join(getattr(cfg.components, scope)) or "none"
            raise UsageError(
                f"snapshot {snap.name} ({snap.id[:8]}) holds nothing of the {scope} scope (components.{scope}: "
                f"{patterns}); check components.{scope} in the config against `phx ls {snap.id[:8]}`"
            )
        if self.in_place:
            self.selected = self._without_live_config(self.selected)
        self.server_dbs: list[tuple[str, Node]] = []
        self.to_database: str | None = None
        self.conflict_mode: ConflictMode = "update"
        self.keyless: KeylessMode = "add"
        self.warnings: list[str] = []
        self.undo_hint = ""
        self._packs_here: set[str] | None = None  # the data packs this repository lists (older_copy)
        self._older: list[Snapshot] | None = None  # the snapshots older_copy looks in, listed once
        self.before: dict[str, LiveState] | None = None  # FileWriter.before
        self.db_before: dict[str, str] = {}  # FileWriter.db_before
        self.damaged: dict[str, str] = {}  # logical -> why its data could not be read (not restored)
        self.untrusted_modes: dict[str, int] = {}  # file -> the mode with bits not restored
        if not repo.config.encrypted or repo.config.write_only is not None:
            self.selected = self.without_privileges(self.selected)

    def restored_config(self, plan: _Plan, result: RestoreResult) -> str | None:
        """Where below --to the snapshot's copy of Phoenix's config landed, if it holds one."""
        recorded = self.snap.sources.get("config")
        workspace, home = self.snap.sources.get("workspace"), self.snap.sources.get("home")
        if not recorded or not workspace or not home or self.to is None:
            return None
        logical = Layout(Path(workspace), Path(home)).to_logical(Path(recorded))
        failed = {e.get("path") for e in result.errors}
        if logical not in plan.nodes or logical in failed:
            return None
        return str(self.layout.to_real(logical, self.to))

    def _without_live_config(self, selected: list[tuple[str, Node]]) -> list[tuple[str, Node]]:
        """In place, the config file this restore runs with is never overwritten: it says where the
        repository is. Its copy in the snapshot (a full backup saves it) is there for `--to DIR`.
        Nor is a key file in the workspace (`key_files_in_workspace`, which backups leave out): an
        older snapshot's copy of it written over it would lose the key that opens the repository,
        and the safety snapshot would save the live key."""
        if self.cfg.source is not None:
            live = self.layout.to_logical(self.cfg.source.absolute())
            kept = [(lg, n) for lg, n in selected if lg != live]
            if len(kept) != len(selected) and self.plan_item(live, dict(selected)[live]).action != "unchanged":
                self.envx.notice(
                    f"the config file in use ({self.cfg.source}) is not restored in place; the snapshot's copy: "
                    f"`phx dump {self.snap.id[:8]} {live}`"
                )
            selected = kept
        for path, _warning in key_files_in_workspace(self.cfg, self.envx.env):
            spelled = in_workspace(self.cfg.workspace, path)
            if spelled is None:
                continue
            key = self.layout.to_logical(spelled)
            kept = [(lg, n) for lg, n in selected if lg != key and not lg.startswith(key + "/")]
            if len(kept) != len(selected):
                self.envx.notice(
                    f"the key file in use ({path}) is not restored in place; the snapshot's copy: "
                    f"`phx dump {self.snap.id[:8]} {key}`"
                )
            selected = kept
        return selected

    def report_damage(self, result: RestoreResult) -> None:
        """One error per file or database whose data is damaged or missing, naming the other
        enabled targets that hold the snapshot and every pack it needs (they may hold it intact)."""
        if not self.damaged:
            return
        nodes = dict(self.selected)
        others = self.other_targets()
        for logical, why in sorted(self.damaged.items()):
            # A server database (postgres/NAME, redis/NAME) is damaged as a whole: all its nodes.
            needs = (
                [nodes[logical]]
                if logical in nodes
                else [n for lg, n in self.server_dbs if lg.startswith(f"{logical}/")]
            )
            packs = {
                pack_name(loc.pack_id)
                for node in needs
                for b in node.needed_blobs() or node.list_blobs()
                if (loc := self.repo.index.get(b))
            }
            holders = [name for name, held in others.items() if packs <= held]
            older = None if holders or logical not in nodes else self.older_copy(logical, nodes[logical])
            hint = (
                f"; target {' or '.join(holders)} may hold it intact: `phx restore --target {holders[0]} "
                f"--backup {self.snap.id[:8]} --path '{logical}'`"
                if holders
                else f"; no other target holds its data, but snapshot {older.name} ({older.id[:8]}) holds an older "
                f"version whose data is all here: `phx restore --backup {older.id[:8]} --path '{logical}'`"
                if older is not None
                else "; no other target holds its data"
            )
            result.errors.append({"path": logical, "error": f"{why}{hint}"})
            result.damaged.append({"path": logical, "error": why, "otherTargets": holders})

    def older_copy(self, logical: str, node: Node) -> Snapshot | None:
        """The newest of (at most 3) older snapshots of this host that hold `logical` as a file of
        other content (the same content is the same damaged data) whose packs are all in this
        repository and whose data reads (a pack listed may be damaged too): a copy that lags
        behind (a copy or sync stopped midway) has the older version. The snapshots are listed
        once per restore, not once per file (a repository may hold thousands)."""
        if node.type != "file":
            return None
        if self._packs_here is None:
            self._packs_here = {info.name for info in self.repo.backend.list("data/")}
        if self._older is None:
            self._older = _older_snapshots(self.repo, self.snap, same_scope=False)[:3]
        damaged = set(node.blobs())
        for other in self._older:
            try:
                found = find_node(self.repo, other, logical)
            except (ObjectNotFound, CorruptObject):
                continue
            if found is None or found.type != "file" or set(found.blobs()) == damaged:
                continue
            locs = [self.repo.index.get(b) for b in found.blobs()]
            if all(loc is not None and pack_name(loc.pack_id) in self._packs_here for loc in locs) and not check_data(
                self.repo, [(logical, found)]
            ):
                return other
        return None

    def other_targets(self) -> dict[str, set[str]]:
        """The other enabled targets that hold this snapshot, each with the data packs it holds."""
        names = enabled_targets(self.cfg)
        reading = self.envx.target or names[0]
        out: dict[str, set[str]] = {}
        for name in names:
            if name == reading:
                continue
            backend = target_backend(self.cfg, self.envx, name)
            try:
                if backend.stat(f"snapshots/{self.snap.id}") is not None:
                    out[name] = {info.name for info in backend.list("data/")}
            except PhoenixError as exc:
                self.envx.notice(f"could not ask target {name} for the damaged data: {exc}")
            finally:
                backend.close()
        return out

    def without_privileges(self, nodes: list[tuple[str, Node]]) -> list[tuple[str, Node]]:
        """An unencrypted repository's trees are not authenticated: whoever can write its storage
        can forge them. So the setuid and setgid bits of its files, which would hand whoever runs
        them the owner's rights (root's, in a restore as root), are not restored from it. Nor from
        a write-only repository: the machine that backs it up writes its trees, and that machine
        is the one this mode does not trust."""
        out = []
        for logical, node in nodes:
            if node.type in ("file", "sqlite") and node.mode & (stat.S_ISUID | stat.S_ISGID):
                self.untrusted_modes[logical] = node.mode
                node = dataclasses.replace(node, mode=node.mode & ~(stat.S_ISUID | stat.S_ISGID))
            out.append((logical, node))
        return out

    def warn_privileges(self, nodes: dict[str, Node]) -> None:
        """Name the files `without_privileges` restores without their bits (once per plan)."""
        dropped = sorted(lg for lg, mode in self.untrusted_modes.items() if lg in nodes and nodes[lg].mode != mode)
        self.warnings[:] = [w for w in self.warnings if _NO_PRIVILEGES not in w]
        if dropped:
            self.warnings.append(
                f"{len(dropped)} file(s) {_NO_PRIVILEGES} (e.g. {dropped[0]}): the repository is unencrypted, so "
                "whoever can write its storage could have set them; check the files, then set the bits yourself "
                "(chmod u+s / g+s)"
            )

    def keep_privileges(self, item: PlanItem, node: Node) -> tuple[Node, PlanItem]:
        """A file whose bits `without_privileges` dropped, that is already in place with the same
        content, owner, group and those very bits: nothing is granted by leaving it as it is."""
        mode = self.untrusted_modes[item.path]
        try:
            st = os.lstat(item.target)
        except OSError:
            return node, item
        if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (node.uid, node.gid, mode):
            return node, item
        return dataclasses.replace(node, mode=mode), dataclasses.replace(item, metadata=st.st_mtime_ns != node.mtime_ns)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    # -- the run -----------------------------------------------------------------------

    def run(self, *, dry_run: bool, safety_snapshot: bool) -> RestoreResult:
        """The restore; whatever damaged data kept from being restored is reported at the end (with
        the targets that may hold it intact), whether it was found before writing or while."""
        result = self.run_steps(dry_run=dry_run, safety_snapshot=safety_snapshot)
        self.report_damage(result)
        return result

    def run_steps(self, *, dry_run: bool, safety_snapshot: bool) -> RestoreResult:
        plan = self.plan()
        snap = self.snap
        result = RestoreResult(snap.id, snap.name, str(self.to) if self.to else "in place", plan.items, dry_run)
        result.deleting = self.delete
        result.warnings = self.warnings
        if dry_run:
            self.folded_names(plan, dry_run=True)  # the refusal the restore itself would make
            self.preview(plan, result)
            if self.server_dbs:
                from phoenix_backup.sinks import databases  # the database drivers: imported when needed

                result.databases += databases.preview_databases(
                    self.repo, self.cfg, dict(self.envx.env), self.server_dbs, to_database=self.to_database
                )
                if self._servers():
                    for notice in databases.server_warnings(self.repo, self.cfg, dict(self.envx.env), self.server_dbs):
                        self.warn(notice)
            return result
        self.folded_names(plan)
        if self.in_place:
            self.confirm(plan)
        else:
            self.confirm_below_to(plan)
        if self.in_place or any(i.action == "overwrite" for i in plan.items):
            # Before anything existing is replaced, every blob must open: a path whose data is
            # damaged is left as it is (never half-written) and the rest is restored. A restore
            # that only creates new files below --to checks each blob as it writes it (a failure
            # leaves whole new files and removes its temporary file, never a damaged one under its
            # real name).
            self.damaged = check_data(
                self.repo,
                [(i.path, plan.nodes[i.path]) for i in plan.items if _writes_content(i)],
                _bytes_progress(self.envx.progress, "checking the data"),
            )
            if self.damaged:
                plan = self.plan()
                self.folded_names(plan)
                result.items = plan.items
        if self.in_place:
            for problem in self.database_problems(plan):
                raise RestoreError(f"{problem}; nothing was restored")
        if not self.has_work(plan):
            self.warnings.append("nothing to restore: every selected path already matches the snapshot")
            return result
        if not self.in_place:
            try:
                self.write(plan, result)
            except OSError as exc:  # what the writer does not name itself, as in place below
                raise os_error(exc, f"restoring to {self.to}", destination=self.to) from exc
            result.phoenix_config = self.restored_config(plan, result)
            if result.phoenix_config is not None and self.cfg.source is None:
                self.warnings.extend(_paths_not_here(Path(result.phoenix_config), self.envx.home))
            return result
        stop = self.gateway("stop")
        if stop is not None:
            result.gateway["stop"] = stop
            if not stop.ok:
                self.fail_stop(stop)
        try:
            # The agent may have written since the plan was made: plan again now that it is stopped.
            plan = self.plan()
            self.folded_names(plan)
            result.items = plan.items
            if safety_snapshot:
                # What is replaced or deleted, as it is before the snapshot reads it: a path the
                # agent writes after that is left alone (its bytes would be in no snapshot). A
                # database is compared by what it holds (the snapshot's own read may checkpoint
                # it), under the lock its restore takes (sqlite_live.apply_copy).
                self.before = {
                    i.path: live_state(Path(i.target))
                    for i in plan.items
                    if i.action in ("create", "overwrite", "delete") and (i.kind != "sqlite" or i.action == "create")
                }
                self.db_before = self.fingerprints(
                    [i for i in plan.items if i.kind == "sqlite" and i.action in ("create", "overwrite", "delete")]
                )
                result.safety_snapshot = self.take_safety_snapshot(plan)
            else:
                self.warnings.append(
                    "no safety snapshot was taken (--no-safety-snapshot): this restore cannot be undone"
                )
            try:
                self.write(plan, result)
            except PhoenixError as exc:
                raise _with_hint(exc, self.undo_hint) from exc
            except OSError as exc:
                raise _with_hint(os_error(exc, "restoring in place"), self.undo_hint) from exc
        finally:
            start = self.gateway("start")
            if start is not None:
                result.gateway["start"] = start
                if not start.ok:
                    message = f"{start.describe()}: the agent is not running; start it yourself"
                    self.warnings.append(message)
                    self.envx.notice(f"warning: {message}")
        return result

    # -- planning ----------------------------------------------------------------------

    def folded_names(self, plan: _Plan, *, dry_run: bool = False) -> None:
        """`_refuse_folded_names`; the deletions it finds are the paths put back under another case
        there: they are taken out of `plan` (and the result listing it), each said in a warning."""
        folders = [(logical, str(self.layout.to_real(logical, self.to))) for logical, _ in plan.dirs]
        same, unsure = _refuse_folded_names(plan.items, folders, dry_run=dry_run)
        for message in unsure:
            self.warn(message)
        if same:
            plan.items[:] = [i for i in plan.items if i not in same]
            for item in same:
                self.warn(
                    f"{item.path} is not deleted: on the file system of {Path(item.target).parent}, which takes "
                    "names differing only in case or Unicode form for one, it is a path this restore puts back"
                )

    def plan(self) -> _Plan:
        items: list[PlanItem] = []
        nodes: dict[str, Node] = {}
        dirs: list[tuple[str, Node]] = []
        dir_changes = 0
        for logical, node in self.selected:
            if logical in self.damaged:
                continue  # left as it is: its data cannot be read
            if node.type == "dir":
                dirs.append((logical, node))
                dir_changes += self.dir_changes(logical, node)
                continue
            item = self.plan_item(logical, node)
            if logical in self.untrusted_modes and item.action == "unchanged":
                node, item = self.keep_privileges(item, node)
            nodes[logical] = node
            items.append(item)
        if self.untrusted_modes:
            self.warn_privileges(nodes)
        links = restored_links(nodes)
        if links:
            items = _relink_items(items, links)
        items += self.deletions({lg for lg, _ in self.tree})
        return _Plan(items, nodes, dirs, dir_changes, links)

    def plan_item(self, logical: str, node: Node) -> PlanItem:
        target = self.layout.to_real(logical, self.to)
        try:
            st = os.lstat(target)
        except OSError:
            return PlanItem(logical, str(target), node.type, "create", node.size)
        action: Action = "overwrite"
        metadata = False
        if node.type == "file" and stat.S_ISREG(st.st_mode) and st.st_size == node.size:
            if _digest(target) == node.sha256 and not grants_privilege(node, st):
                action = "unchanged"
                metadata = stat.S_IMODE(st.st_mode) != node.mode or st.st_mtime_ns != node.mtime_ns
                metadata = metadata or owner_differs(node, st)
        elif node.type == "sqlite" and stat.S_ISREG(st.st_mode) and st.st_size == node.size:
            # New commits of a WAL database live in its -wal: the .db alone says nothing then.
            if not sqlite_sink.pending_journal(target) and _digest(target) == node.sha256:
                action = "unchanged"
        elif (
            node.type == "symlink"
            and stat.S_ISLNK(st.st_mode)
            and os.readlink(target) == node.link_target
            and not owner_differs(node, st)  # made anew, never chowned in place (`set_link_owner`)
        ):
            action = "unchanged"
            metadata = st.st_mtime_ns != node.mtime_ns
        return PlanItem(logical, str(target), node.type, action, node.size, metadata)

    def dir_changes(self, logical: str, node: Node) -> bool:
        """Whether the folder alone makes work: missing, not a folder, another mode or (as root) owner, or (below --to)
        another time. In place its time alone does not: a backup moves the times of ~/.argentos and
        its data folder itself (the state file, SQLite's -wal and -shm), so a restore right after it
        took a safety snapshot of 0 files and said nothing. A restore that writes anything still sets
        every folder's time (`write`)."""
        if self.in_place and logical in ("home", "root"):
            return False  # the real home folder and "/" are never changed
        try:
            st = os.lstat(self.layout.to_real(logical, self.to))
        except OSError:
            return True
        if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != node.mode or owner_differs(node, st):
            return True
        return not self.in_place and st.st_mtime_ns != node.mtime_ns

    def deletions(self, snapshot_paths: set[str]) -> list[PlanItem]:
        """What the restore deletes: the snapshot's absent paths (a safety snapshot undoing a
        restore), and with --delete what the restored scope holds now and the snapshot lacks."""
        out: dict[str, PlanItem] = {}
        for logical in self.snap.absent:
            if not self.filter.matches(logical, logical.endswith(SQLITE_SUFFIXES)):
                continue
            item = self.live_item(logical)
            if item is not None:
                out[logical] = item
        if self.delete:
            for logical in self.delete_candidates(snapshot_paths):
                if logical not in out:
                    item = self.live_item(logical)
                    if item is not None:
                        out[logical] = item
        # A folder goes only when everything in it goes too (deepest first).
        for logical in sorted((k for k, v in out.items() if v.kind == "dir"), key=lambda p: -p.count("/")):
            try:
                children = os.listdir(out[logical].target)
            except OSError:
                children = []
            if any(f"{logical}/{name}" not in out for name in children):
                del out[logical]
                self.warn(f"kept {logical}: it holds files this restore does not delete")
        return sorted(out.values(), key=lambda i: i.path)

    def live_item(self, logical: str) -> PlanItem | None:
        target = self.layout.to_real(logical, self.to)
        try:
            st = os.lstat(target)
        except OSError:
            return None
        if stat.S_ISDIR(st.st_mode):
            if "/" not in logical:
                return None  # a root (the workspace, home, /) is never deleted
            kind = "dir"
        elif stat.S_ISLNK(st.st_mode):
            kind = "symlink"
        elif stat.S_ISREG(st.st_mode) and target.name.endswith(SQLITE_SUFFIXES):
            kind = "sqlite" if sqlite_sink.has_magic(target) else "file"
        else:
            kind = "file"
        size = st.st_size if kind in ("file", "sqlite") else 0
        return PlanItem(logical, str(target), kind, "delete", size)

    def delete_candidates(self, snapshot_paths: set[str]) -> list[str]:
        """Paths the restored scope covers now (the backup's own selection, excludes applied) that
        the snapshot lacks. A snapshot of another scope bounds it too; a safety snapshot covers only
        its own paths, so --delete deletes nothing more there."""
        if self.snap.scope not in SCOPES:
            return []
        try:
            _layout, sel = select_sources(self.cfg, self.scope, self.envx)
        except SourceError:
            return []  # no workspace yet: nothing to delete
        snap_filter = ScopeFilter(self.cfg, self.layout, self.snap.scope, ())
        protected = [self.cfg.repository_path.absolute()]
        if self.cfg.source is not None:
            protected.append(self.cfg.source.absolute())
        out = []
        for logical, entry in sel.entries.items():
            if logical in snapshot_paths or "/" not in logical or entry.path.name.startswith(TMP_PREFIX):
                continue
            is_db = entry.kind == "sqlite"
            if not self.filter.matches(logical, is_db) or not snap_filter.matches(logical, is_db):
                continue
            if any(entry.path == p or p in entry.path.parents or entry.path in p.parents for p in protected):
                continue  # never the repository or the config file, wherever they live
            out.append(logical)
        return out

    def has_work(self, plan: _Plan) -> bool:
        changes = any(i.action != "unchanged" or i.metadata for i in plan.items)
        return self.realign or plan.dir_changes > 0 or changes or bool(self.server_dbs)

    def servers(self, to_database: str | None, conflict_mode: ConflictMode, keyless: KeylessMode = "add") -> None:
        """In place, PostgreSQL and Redis (postgres/…, redis/…) go into their servers through
        sinks/databases.py, after the files; below --to they are written as files like any other.
        `--to DIR` cannot be combined with `--to-database`, which restores PostgreSQL only."""
        self.to_database = to_database
        self.conflict_mode = conflict_mode
        self.keyless = keyless
        if not self.in_place:
            return
        self.server_dbs = [(lg, n) for lg, n in self.selected if is_database_path(lg)]
        self.selected = [(lg, n) for lg, n in self.selected if not is_database_path(lg)]
        if to_database is not None:
            self.server_dbs = [(lg, n) for lg, n in self.server_dbs if lg.startswith("postgres/")]
            self.selected = []  # a new database: nothing of the workspace is touched, so no gateway
            self.in_place = False  # stop, confirmation or safety snapshot either

    def _servers(self) -> list[str]:
        """The server databases restored in place (none with `--to-database`)."""
        if not self.server_dbs or self.to_database:
            return []
        from phoenix_backup.sinks.streams import group_database_nodes

        return sorted(group_database_nodes(self.server_dbs))

    def write_server_databases(self, result: RestoreResult) -> None:
        if not self.server_dbs:
            return
        from phoenix_backup.sinks import databases  # the database drivers: imported when needed

        for outcome in databases.restore_databases(
            self.repo,
            self.cfg,
            dict(self.envx.env),
            self.server_dbs,
            to_database=self.to_database,
            conflict_mode=self.conflict_mode,
            keyless=self.keyless,
        ):
            result.databases.append(outcome.to_json())
            if outcome.ok:
                result.restored += 1
            elif outcome.damaged:  # its data has no copy that proves: reported with the damaged files
                self.damaged[outcome.path] = outcome.error or "its data is damaged"
            else:
                result.errors.append({"path": outcome.path, "error": outcome.error or "not restored"})
            self.warnings.extend(outcome.warnings)

    # -- before anything is touched ------------------------------------------------------

    def confirm(self, plan: _Plan) -> None:
        counts = _count(plan.items)
        servers = self._servers()
        # Said before anything is written, and kept in the result: user triggers that will fire.
        from phoenix_backup.sinks import databases  # the database drivers: imported when needed

        notices = (
            databases.server_warnings(self.repo, self.cfg, dict(self.envx.env), self.server_dbs) if servers else []
        )
        for notice in notices:
            self.warn(notice)
        risky = counts["overwrite"] + counts["delete"] + len(servers)
        if risky == 0 or self.yes:
            return
        dbs = [i.path for i in plan.items if i.kind == "sqlite" and i.action == "overwrite"] + servers
        summary = ", ".join(f"{counts[a]} to {a}" for a in ("create", "overwrite", "delete") if counts[a])
        summary += f", {counts['unchanged']} unchanged"
        if dbs:
            summary += f"; databases overwritten: {', '.join(dbs)}"
        also = "".join(f"; {n}" for n in notices)
        if not self.envx.interactive or self.envx.confirm is None:
            raise ConfirmationRequired(
                f"this in-place restore would overwrite {counts['overwrite']} and delete {counts['delete']} path(s)"
                f"{'' if not servers else ' and restore ' + ', '.join(servers)}{also}; there is no terminal to ask "
                "on: pass --yes to confirm (or --dry-run to see the plan)"
            )
        first = "the gateway is stopped and " if self.cfg.gateway.stop else ""
        question = (
            f"Restore {self.snap.name} ({self.snap.id[:8]}) in place: {summary}{also}. "
            f"Before writing, {first}a safety snapshot (tag pre-restore) is taken. Continue?"
        )
        if not self.envx.confirm(question):
            raise Cancelled("restore cancelled; nothing was changed")

    def confirm_below_to(self, plan: _Plan) -> None:
        """Below `--to`, paths already there whose content differs from the snapshot are overwritten
        only once confirmed, as in place (DESIGN §7: without a terminal and without `--yes`, a restore
        that would overwrite refuses): `--to` is often a folder that already holds something (a home
        folder, an earlier restore the user has edited since), and no safety snapshot is taken there."""
        overwrite = sorted(i.path for i in plan.items if i.action == "overwrite")
        if not overwrite or self.yes or self.to is None:
            return
        shown = ", ".join(str(self.to / p) for p in overwrite[:3])
        if len(overwrite) > 3:
            shown += f" and {len(overwrite) - 3} more"
        if not self.envx.interactive or self.envx.confirm is None:
            raise ConfirmationRequired(
                f"this restore would overwrite {len(overwrite)} path(s) already below {self.to} whose content "
                f"differs from the snapshot ({shown}); there is no terminal to ask on: pass --yes to overwrite "
                "them, or restore into an empty folder (--dry-run shows the plan)"
            )
        question = (
            f"Restore {self.snap.name} ({self.snap.id[:8]}) below {self.to}: {len(overwrite)} path(s) there differ "
            f"from the snapshot and would be overwritten ({shown}); no safety snapshot is taken below --to. Continue?"
        )
        if not self.envx.confirm(question):
            raise Cancelled("restore cancelled; nothing was changed")

    def database_problems(self, plan: _Plan) -> list[str]:
        """Live databases the backup API cannot overwrite (a WAL database of another page size)."""
        problems = []
        reader = FileWriter(self.repo, self.layout, self.to)
        try:
            for item in plan.items:
                if item.kind != "sqlite" or item.action != "overwrite":
                    continue
                node = plan.nodes[item.path]
                live = self.probe(reader, item)
                problem = sqlite_live.page_size_problem(
                    item.path, live, sqlite_sink.page_size(node, self.snap, item.path), item.target
                )
                if problem:
                    problems.append(problem)
        finally:
            reader.close()
        return problems

    def gateway(self, action: str) -> ShellStep | None:
        command = self.cfg.gateway.stop if action == "stop" else self.cfg.gateway.start
        if not command:
            return None
        self.envx.notice(f"running gateway.{action}")
        return run_gateway(action, command, self.cfg.gateway.timeout_seconds, self.envx.env)

    def fail_stop(self, stop: ShellStep) -> None:
        start = self.gateway("start")
        if start is None:
            after = ""
        elif start.ok:
            after = " (gateway.start was run to leave the agent as it was)"
        else:
            after = f", and {start.describe()}"
        raise GatewayError(
            f"{stop.describe()}, so nothing was restored{after}; fix gateway.stop or stop the agent yourself, then "
            "restore again"
        )

    def probe(self, reader: FileWriter, item: PlanItem) -> sqlite_live.LiveDb:
        """`sqlite_live.probe` of the database at `item`, through folders opened one by one without
        following links and handed to SQLite only when safe (sinks/sqlite_folder.py), as the
        restore's writes: a link another user swaps into its path is never followed (SQLite would
        create the -shm of the database it led to). One not reachable so is unreadable."""
        try:
            live: sqlite_live.LiveDb = _in_folder(reader, item.path, "probe")
            return live
        except FileNotFoundError:
            return sqlite_live.LiveDb(False, False, "absent")
        except (OSError, PhoenixError) as exc:
            return sqlite_live.LiveDb(True, False, str(exc))

    def fingerprints(self, items: list[PlanItem]) -> dict[str, str]:
        """`sqlite_live.fingerprint` of each database (ABSENT for one the restore creates), read
        through folders opened one by one without following links and handed to SQLite only when
        safe (sinks/sqlite_folder.py), as the restore's own reads of it: a link another user swaps
        into its path is never followed. One that cannot be reached so is noted as unreadable: never
        equal to what the restore finds later, so it is left as changed."""
        out: dict[str, str] = {}
        reader = FileWriter(self.repo, self.layout, None)
        try:
            for item in items:
                if item.action == "create":
                    out[item.path] = sqlite_live.ABSENT
                    continue
                try:
                    out[item.path] = _in_folder(reader, item.path, "fingerprint")
                except (OSError, PhoenixError) as exc:
                    out[item.path] = f"unreadable: {exc}"
        finally:
            reader.close()
        return out

    def take_safety_snapshot(self, plan: _Plan) -> dict[str, Any]:
        wanted: dict[str, str] = {}
        for item in plan.items:
            if item.action != "unchanged" or item.metadata:
                wanted[item.path] = item.kind
        for logical, _node in plan.dirs:
            wanted.setdefault(logical, "dir")
        for parent in all_ancestors(item.path for item in plan.items if item.action == "delete"):
            wanted.setdefault(parent, "dir")
        if self.realign:
            wanted.setdefault(f"workspace/{alignment.MANIFEST}", "file")
            wanted.setdefault("workspace", "dir")
        # Server databases restored in place are saved from their servers first, like files; one
        # that does not exist yet has nothing to save (the restore creates it).
        servers = tuple(self._servers())
        from phoenix_backup.sinks import databases  # the database drivers: imported when needed

        absent = databases.absent_databases(self.cfg, dict(self.envx.env), servers) if servers else {}
        for path, why in absent.items():
            message = (
                f"{path}: {why}, so the safety snapshot holds nothing of it; the restore creates it (undoing the "
                "restore does not drop it)"
            )
            self.envx.notice(message)
            self.warn(message)
        servers = tuple(s for s in servers if s not in absent)
        try:
            taken = safety.take(self.repo, self.cfg, self.envx, self.layout, wanted, servers)
        except ReadOnlyStorage as exc:
            raise RestoreError(
                f"the safety snapshot cannot be written ({exc}), so nothing was restored; restore with "
                "--no-safety-snapshot (the restore then cannot be undone), or make the repository writable"
            ) from exc
        except NoSpace as exc:
            raise NoSpace(
                f"{exc}; the safety snapshot could not be saved, so nothing was restored (or restore with "
                "--no-safety-snapshot: the restore then cannot be undone)"
            ) from exc
        assert taken.id is not None
        short = taken.id[:8]
        self.undo_hint = f"`phx restore --backup {short} --yes` undoes what was restored"
        self.envx.notice(f"safety snapshot {short} ({taken.name}) saved; `phx restore --backup {short}` undoes this")
        missing = sum(1 for p in wanted if not os.path.lexists(self.layout.to_real(p)))
        return {
            "id": taken.id,
            "name": taken.name,
            "files": taken.files,
            "absent": missing,
            "tags": [safety.SAFETY_TAG],
        }

    # -- dry run -------------------------------------------------------------------------

    def preview(self, plan: _Plan, result: RestoreResult) -> None:
        """Row deltas per database table against the live database, and the alignment outcome."""
        copies: Path | None = None
        reader = FileWriter(self.repo, self.layout, self.to)
        try:
            for item in plan.items:
                if item.kind != "sqlite":
                    continue
                entry: dict[str, Any] = {"path": item.path, "action": item.action}
                info = next((d for d in self.snap.databases if d.path == item.path), None)
                if item.action == "create":
                    tables = info.tables if info else {}
                    entry["tables"] = {t: {"added": n, "removed": 0, "changed": 0} for t, n in sorted(tables.items())}
                elif item.action == "overwrite":
                    live = self.probe(reader, item)
                    if not live.readable:
                        entry["error"] = f"the live database cannot be read ({live.reason}); it would be replaced"
                    else:
                        if copies is None:
                            copies = cache_for(self.repo, self.envx).run_dir()
                        entry["tables"] = sqlite_sink.row_deltas(
                            self.repo, item.path, plan.nodes[item.path], item.target, copies
                        )
                elif item.action == "unchanged":
                    entry["tables"] = {}
                result.databases.append(entry)
        finally:
            reader.close()
            if copies is not None:
                with contextlib.suppress(OSError):
                    for leftover in copies.iterdir():
                        leftover.unlink()
                    copies.rmdir()
        if self.in_place:
            self.warnings.extend(self.database_problems(plan))
        result.alignment = self.predict_alignment(plan)
        if result.alignment is not None and not result.alignment.consistent:
            self.warnings.append(_alignment_warning(result.alignment, predicted=True, realign=self.realign))

    # -- the alignment manifest ------------------------------------------------------------

    def _workspace_file(self, name: str) -> bytes | None:
        path = self.layout.to_real("workspace", self.to) / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            return f.read()

    def _alignment_relevant(self, plan: _Plan) -> bool:
        names = {f"workspace/{n}" for n in alignment.RELEVANT}
        return self.realign or any(i.path in names for i in plan.items)

    def predict_alignment(self, plan: _Plan) -> alignment.AlignmentReport | None:
        if not self._alignment_relevant(plan):
            return None
        by_path = {i.path: i for i in plan.items}

        def after(name: str) -> bytes | None:
            item = by_path.get(f"workspace/{name}")
            if item is None:
                return self._workspace_file(name)
            if item.action == "delete":
                return None
            node = plan.nodes[item.path]
            return read_node(self.repo, item.path, node) if node.type == "file" else None

        manifest = after(alignment.MANIFEST)
        where = str(self.layout.to_real("workspace", self.to) / alignment.MANIFEST)
        if manifest is None:
            return alignment.AlignmentReport(where, False, True, predicted=True)
        doc = alignment.parse(manifest)
        names = set(alignment.FILES) | set(doc["files"] if doc else ())
        hashes = {n: _sha_or_none(after(n)) for n in names}
        mism = alignment.mismatches(doc, hashes)
        return alignment.AlignmentReport(where, True, not mism, mism, predicted=True)

    def align(self, writer: FileWriter, plan: _Plan) -> alignment.AlignmentReport | None:
        """After the writes: is the manifest consistent? With --realign, rewrite it if not."""
        if not self._alignment_relevant(plan):
            return None
        where = self.layout.to_real("workspace", self.to) / alignment.MANIFEST
        manifest = self._workspace_file(alignment.MANIFEST)
        if manifest is None:
            if self.realign:
                self.warnings.append(f"--realign: there is no {alignment.MANIFEST} to realign; nothing was written")
            return alignment.AlignmentReport(str(where), False, True)
        doc = alignment.parse(manifest)
        names = set(alignment.FILES) | set(doc["files"] if doc else ())
        hashes = {n: _sha_or_none(self._workspace_file(n)) for n in names}
        mism = alignment.mismatches(doc, hashes)
        report = alignment.AlignmentReport(str(where), True, not mism, mism)
        if mism and self.realign:
            data, changed = alignment.realigned(doc, hashes)
            logical = f"workspace/{alignment.MANIFEST}"
            try:
                mode = stat.S_IMODE(os.lstat(where).st_mode)
            except OSError as exc:  # its folder unsearchable (EACCES), the manifest gone (ENOENT)
                raise writer.destination_error(exc, logical, what=f"reading the mode of {shown(where)}") from exc
            writer.write_bytes(logical, data, mode)
            report.realigned = True
            report.rewritten = changed
            report.consistent = True
        elif mism:
            self.warnings.append(_alignment_warning(report, predicted=False, realign=False))
        return report

    # -- writing ---------------------------------------------------------------------------

    def write(self, plan: _Plan, result: RestoreResult) -> None:
        writer = FileWriter(self.repo, self.layout, self.to, self.envx.progress)
        writer.before = self.before
        writer.db_before = self.db_before
        # One writer per core: the largest database keeps a core to itself instead of sharing it
        # with a third writer (measured 2.59 -> 2.51 s median on the 7-day benchmark repository).
        pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="phx-restore")
        copies: dict[str, Future[sqlite_sink.Copy]] = {}
        # A copy whose very bytes passed integrity_check before (at backup, or recorded in the
        # repository by a drill or a restore) is not checked again; a check run here is recorded.
        recorded = sqlite_sink.RecordedChecks(checks.CheckBook(self.repo), self.snap.id)
        try:
            writer.clean_leftovers([lg for lg, _ in plan.dirs])
            for logical, node in plan.dirs:
                _record(result, logical, functools.partial(writer.directory, logical, node))
            # Database copies are written and checked beside their places while the files are
            # restored, largest first; they are applied one by one after the deletions.
            databases = [i for i in plan.items if i.kind == "sqlite" and i.action in ("create", "overwrite")]
            files = self.file_items(plan)
            self.envx.progress.phase(
                "writing files",
                files=len(files) + len(databases),
                size=sum(plan.nodes[i.path].size for i in [*files, *databases] if i.action != "unchanged"),
            )
            for item in sorted(databases, key=lambda i: -plan.nodes[i.path].size):
                copies[item.path] = pool.submit(
                    sqlite_sink.write_copy, writer, item.path, plan.nodes[item.path], recorded=recorded
                )
                copies[item.path].add_done_callback(lambda _f: self.envx.progress.advance(files=1))
            self.write_files(writer, plan, result, pool)
            for item in plan.items:
                if item.kind == "symlink" and item.action in ("create", "overwrite"):
                    _record(result, item.path, functools.partial(writer.symlink, item.path, plan.nodes[item.path]))
                elif item.kind == "symlink" and item.action == "unchanged" and item.metadata:
                    _record(result, item.path, functools.partial(writer.link_times, item.path, plan.nodes[item.path]))
            writer.sync_dirs()  # the files' renames are on disk before any database is applied
            # A folder moved away (a link put in its place) while the files were written is an
            # error before anything is deleted or any database applied, and before a report.
            writer.check_folders()
            self.write_deletions(writer, plan, result)
            self.write_databases(writer, plan, result, copies)
            self.write_server_databases(result)
            result.alignment = self.align(writer, plan)
            writer.finish_dirs()
            writer.check_folders()
            if writer.owners_kept:
                result.warnings.append(_owners_kept(writer.owners_kept))
        finally:
            # On the first failure nothing more is started; what is being written finishes, and
            # database copies that were not applied are removed; the renames made are synced.
            pool.shutdown(wait=True, cancel_futures=True)
            with contextlib.suppress(PhoenixError, OSError):
                writer.sync_dirs()
            for logical, fut in copies.items():
                if not fut.cancelled() and fut.exception() is None:
                    sqlite_sink.discard_copy(writer, logical, fut.result())
            for problem in leftovers.bounded(writer.kept_copies, leftovers.KEPT_COPIES):
                self.envx.notice(f"warning: {problem}")
            writer.close()

    @staticmethod
    def file_items(plan: _Plan) -> list[PlanItem]:
        """The files whose content or metadata a restore writes (hard links to them included)."""
        firsts = set(plan.links.values())  # linked to: their inodes are noted, unchanged or not
        return [
            i
            for i in plan.items
            if i.kind == "file" and (i.action in ("create", "overwrite") or i.metadata or i.path in firsts)
        ]

    def write_files(self, writer: FileWriter, plan: _Plan, result: RestoreResult, pool: ThreadPoolExecutor) -> None:
        """File contents in parallel: each is written, checked, fsynced and renamed on its own.
        Then the other names of hard-linked files, linked to their first name."""
        todo = self.file_items(plan)
        linked = [i for i in todo if i.path in plan.links]
        todo = [i for i in todo if i.path not in plan.links]
        # Each file's fsync and rename run on threads of their own, so that a writer goes on with
        # the next file at once and the file system commits many files' fsyncs together (287
        # files of 800 kB: 0.9-1.3 s one after the other, 0.22-0.29 s eight at a time). At most
        # SYNC_BACKLOG written files wait for theirs, each holding two descriptors.
        syncs = ThreadPoolExecutor(max_workers=SYNC_THREADS, thread_name_prefix="phx-sync")
        room = threading.BoundedSemaphore(sync_backlog())

        def finish(written: Written) -> str:
            try:
                return written.finish()
            finally:
                room.release()

        def content(logical: str, node: Node) -> Future[str]:
            room.acquire()
            try:
                written = writer.content_written(logical, node)
            except BaseException:
                room.release()
                raise
            finally:
                schedule.end(logical)  # a file that failed before it was read lets go of its blobs
            try:
                return syncs.submit(finish, written)
            except BaseException:  # the restore is stopping: nothing more is started
                written.abandon()
                room.release()
                raise

        # The small files' blobs are read pack by pack, many files at a time, in the order the
        # jobs below start (repo/reader.py `PackSchedule`).
        schedule = writer.schedule = PackSchedule(
            self.repo, [(i.path, plan.nodes[i.path]) for i in todo if i.action != "unchanged"]
        )
        # The files handed to the writers and not yet recorded, in order: at most WRITE_AHEAD.
        jobs: collections.deque[tuple[PlanItem, Future[str] | Future[Future[str]]]] = collections.deque()

        def attempt(item: PlanItem, action: Callable[[], str]) -> None:
            try:
                if _record(result, item.path, action) is not None and item.action != "unchanged":
                    result.restored += 1
            except (CorruptObject, ObjectNotFound) as exc:
                self.damaged[item.path] = damage_text(exc)  # its temporary file is gone; the rest goes on

        def outcome(job: Future[str] | Future[Future[str]]) -> str:
            done = job.result()
            return done if isinstance(done, str) else done.result()

        def record_first() -> None:
            item, job = jobs.popleft()
            attempt(item, functools.partial(outcome, job))
            self.envx.progress.advance(files=1)  # its bytes were counted as written

        try:
            for item in todo:
                node = plan.nodes[item.path]
                if item.action == "unchanged":
                    jobs.append((item, pool.submit(writer.metadata, item.path, node)))
                else:
                    jobs.append((item, pool.submit(content, item.path, node)))
                if len(jobs) > WRITE_AHEAD:
                    record_first()
            while jobs:
                record_first()
        finally:
            # A file written is fsynced and renamed into place even when the restore stops on
            # another's failure, as before; none is left under its temporary name.
            pool_futures = [job for _item, job in jobs]
            for job in pool_futures:
                job.cancel()
            for job in pool_futures:
                with contextlib.suppress(BaseException):
                    job.result()
            syncs.shutdown(wait=True)
            writer.schedule = None  # what files never started held is let go
        for item in linked:
            self.envx.progress.advance(files=1)
            if item.action == "unchanged":
                continue  # already a name of the first file's inode, whose metadata were set
            node, first = plan.nodes[item.path], plan.links[item.path]
            # A first name whose data was damaged was not written: the link writes the content, and
            # is named damaged in turn.
            attempt(item, functools.partial(writer.hardlink, item.path, node, first))

    def write_deletions(self, writer: FileWriter, plan: _Plan, result: RestoreResult) -> None:
        deletions = [i for i in plan.items if i.action == "delete"]
        for item in deletions:
            if (
                item.kind != "dir"
                and _record(result, item.path, functools.partial(writer.remove, item.path, item.kind)) is not None
            ):
                result.deleted += 1
        for item in sorted((i for i in deletions if i.kind == "dir"), key=lambda i: -i.path.count("/")):
            if _record(result, item.path, functools.partial(writer.remove, item.path, item.kind)) is not None:
                result.deleted += 1

    def write_databases(
        self, writer: FileWriter, plan: _Plan, result: RestoreResult, copies: dict[str, Future[sqlite_sink.Copy]]
    ) -> None:
        for item in plan.items:
            if item.kind != "sqlite" or item.action not in ("create", "overwrite"):
                continue
            node = plan.nodes[item.path]
            try:
                copy = copies.pop(item.path).result()
                info = sqlite_sink.restore_database(writer, item.path, node, in_place=self.in_place, copy=copy)
            except (CorruptObject, ObjectNotFound) as exc:
                self.damaged[item.path] = damage_text(exc)
                continue
            except UnsafePath as exc:
                result.errors.append({"path": item.path, "error": str(exc)})
                continue
            except RestoreError as exc:
                if isinstance(exc, GatewayError):
                    raise
                result.errors.append({"path": item.path, "error": str(exc)})
                continue
            result.restored += 1
            if self.in_place:
                bad = [f"{t}: {m}" for t, m in info["fts"].items() if m != "ok"]
                if info["integrity"] != "ok" or bad:
                    problem = "; ".join(
                        ([f"integrity_check: {info['integrity']}"] if info["integrity"] != "ok" else []) + bad
                    )
                    result.errors.append(
                        {"path": item.path, "error": f"the restored database fails its checks: {problem}"}
                    )
            result.databases.append(info)


def _relink_items(items: list[PlanItem], links: dict[str, str]) -> list[PlanItem]:
    """A linked file is unchanged only when it is already the very inode of its first name, and
    that one is unchanged too; equal content in a separate file is overwritten by the link."""
    by_path = {i.path: i for i in items}
    out = []
    for item in items:
        first = by_path.get(links.get(item.path, ""))
        relink = first is not None and (first.action != "unchanged" or not _same_inode(item.target, first.target))
        if relink and item.action == "unchanged":
            item = dataclasses.replace(item, action="overwrite", metadata=False)
        out.append(item)
    return out


def _same_inode(a: str, b: str) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


_Fold = Callable[[str], str] | None
_Probed = dict[Path, tuple[Path, _Fold, bool]]


def _refuse_folded_names(
    items: list[PlanItem], folders: list[tuple[str, str]], *, dry_run: bool = False
) -> tuple[list[PlanItem], list[str]]:
    """RestoreError, before anything is written, when two paths the restore puts back differ only
    in case or Unicode normal form (`fold_name`) and the destination's file system takes them for
    one (macOS, vfat: `folds_names`; APFS formatted case-sensitive, ZFS with normalization, for
    normal form only: `folds_forms`): the second would be written over the first, both said
    restored; or a file and a folder (`folders`: the snapshot's, logical path and target) would
    be one name there (`A` beside `a/x`): one of them cannot be made.
    Returned: the deletions that are, there, a path the restore puts back (or a folder on its way)
    under another case (`note.md` found beside the snapshot's `Note.md`, renamed since): they are
    not done, for the delete, run after the writes, removed the file just restored or kept; and,
    for a dry run (which writes no probe file: `seen_folding`), a warning for each pair whose
    folder it could not tell about."""
    groups: dict[str, dict[str, str]] = {}  # folded target -> target -> the path said
    for item in items:
        if item.action != "delete":
            groups.setdefault(fold_name(item.target), {})[item.target] = item.path
    for logical, target in folders:
        same = groups.setdefault(fold_name(target), {})
        same.setdefault(target, f"{logical}/")  # a folder: said with its slash
    probed: _Probed = {}
    unsure: list[str] = []
    for same in groups.values():
        if len(same) < 2 or all(p.endswith("/") for p in same.values()):
            continue  # folders alone merge into one, each file in it kept (a pair of files is its own group)
        folder, fold, known = _folds_at(Path(next(iter(same))).parent, probed, dry_run)
        if fold is None:
            continue
        one: dict[str, list[str]] = {}
        for target, path in same.items():
            one.setdefault(fold(target), []).append(path)
        for clash in one.values():
            if len(clash) > 1 and not all(p.endswith("/") for p in clash):
                first, second = sorted(clash)[:2]
                if not known:
                    unsure.append(
                        f"{first} and {second} differ only in case or Unicode form: whether the file system of "
                        f"{folder} takes them for one name is found by writing a probe file, which a dry run does "
                        "not do, and no name there told; the restore itself refuses them if it does"
                    )
                    break
                what = (
                    "a file and a folder cannot both be there"
                    if first.endswith("/") or second.endswith("/")
                    else "one would be written over the other"
                )
                raise RestoreError(
                    f"{first} and {second} differ only in case or Unicode form, and the file system of {folder} "
                    f"takes them for one name: {what}; nothing was restored — restore to a folder on a file "
                    "system that tells them apart (--to DIR), or one of them at a time (--path)"
                )
    deletes = [i for i in items if i.action == "delete"]
    if not deletes:
        return [], unsure
    exact: set[str] = set()
    for item in items:
        if item.action != "delete":
            exact.update(str(p) for p in (Path(item.target), *Path(item.target).parents))
    put: dict[str, list[str]] = {}
    for p in exact:
        put.setdefault(fold_name(p), []).append(p)
    out = []
    for i in deletes:
        if i.target in exact or fold_name(i.target) not in put:
            continue
        _, fold, known = _folds_at(Path(i.target).parent, probed, dry_run)
        if known and fold is not None and fold(i.target) in {fold(p) for p in put[fold_name(i.target)]}:
            out.append(i)
    return out, unsure


def _nfd(name: str) -> str:
    return unicodedata.normalize("NFD", name)


def _folds_at(folder: Path, probed: _Probed, dry_run: bool = False) -> tuple[Path, _Fold, bool]:
    """The folder probed (`folder`, or its nearest existing parent), how its file system compares
    names: `fold_name` when it ignores case (`folds_names`), NFD when it ignores Unicode normal form
    only (`folds_forms`), None when it tells them all apart; and whether that is known. A dry run
    writes no probe file: it looks up names already there in another case or form
    (`seen_folding`), and may not know: the fold is then the most it may do. `probed` keeps each
    answer."""
    start = folder
    if start in probed:
        return probed[start]
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    fold: _Fold = None
    known = True
    if dry_run:
        case = seen_folding(folder, "case")
        forms = seen_folding(folder, "form") if case is False else None
        known = case is True or forms is not None
        if case is not False:  # folds case (or may): taken to fold forms too, as `folds_names` says
            fold = fold_name
        elif forms is not False:
            fold = _nfd
    else:
        try:
            if folds_names(folder):
                fold = fold_name
            elif folds_forms(folder):
                fold = _nfd
        except OSError:
            pass  # a folder that takes no file: the write itself says why
    probed[start] = (folder, fold, known)
    return probed[start]


def _writes_content(item: PlanItem) -> bool:
    return item.kind in ("file", "sqlite") and item.action in ("create", "overwrite")


def _count(items: list[PlanItem]) -> dict[str, int]:
    out: dict[str, int] = dict.fromkeys(ACTIONS, 0)
    for item in items:
        out[item.action] += 1
    return out


def _with_hint(exc: PhoenixError, hint: str) -> PhoenixError:
    """The same error, saying how to undo the part of the restore that was done."""
    return type(exc)(f"{exc} ({hint})") if hint else exc


def _alignment_warning(report: alignment.AlignmentReport, *, predicted: bool, realign: bool) -> str:
    names = ", ".join(report.mismatched)
    if predicted and realign:
        return f"this restore would leave {alignment.MANIFEST} inconsistent with {names}; --realign would rewrite it"
    verb = "would leave" if predicted else "left"
    return (
        f"this restore {verb} {alignment.MANIFEST} inconsistent with {names}, and an enforcing gateway refuses to "
        "start on that; if these files are the ones you want, restore again with --realign to rewrite its hashes"
    )


def _digest(path: Path) -> str | None:
    """The SHA-256 of a file in the way, or None when it cannot be read (mode 000): then it is
    overwritten, and the safety snapshot, which must save it first, names the problem."""
    try:
        return sha256_file(path)
    except OSError:
        return None


def _sha_or_none(data: bytes | None) -> str | None:
    return None if data is None else sha256_hex(data)


def _bytes_progress(report: Reporter, phase: str) -> Callable[[int, int], None]:
    """A `(bytes done, bytes total)` callback of the repository layer, told to `report` as `phase`."""
    told = 0

    def progress(done: int, total: int) -> None:
        nonlocal told
        if not done:
            report.phase(phase, size=total)
        report.advance(size=done - told)
        told = done

    return progress


def _owners_kept(kept: list[str]) -> str:
    """The warning of a restore run as root whose destination did not take the snapshot's owners."""
    shown = sorted(kept)
    count = leftovers.SHOWN_PROBLEMS
    more = f", and {len(shown) - count} more" if len(shown) > count else ""
    return (
        f"the owner of {len(shown)} restored path(s) is not the snapshot's ({'; '.join(shown[:count])}{more}): "
        "the destination's file system keeps no owners or refuses root's chown (vfat, exFAT, NFS with root "
        "squashed, a user namespace that maps no such id); their bytes and modes are restored. Give them to their "
        "user with chown -R, or restore onto a file system that keeps owners"
    )


def _record(result: RestoreResult, logical: str, action: Callable[[], T]) -> T | None:
    """Run one restore step; an unsafe path is reported for that path and the restore goes on."""
    try:
        return action()
    except UnsafePath as exc:
        result.errors.append({"path": logical, "error": str(exc)})
        return None
