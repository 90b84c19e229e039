"""`phx backup`: one consistent snapshot of the workspace and its databases.

Files and databases are read in a thread pool; chunking, hashing, compressing and sealing run in
native code that releases the GIL, so the pool keeps both cores busy. Trees are written bottom-up
once every entry is done, then the index, then the snapshot object (the commit point).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import random
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from phoenix_backup._version import __version__
from phoenix_backup.config import Config
from phoenix_backup.errors import (
    CorruptObject,
    ExitStatus,
    IdentityRequired,
    ObjectNotFound,
    PhoenixError,
    SourceError,
    UnsafePath,
    shown,
)
from phoenix_backup.notify import BackupEvent, NotifyOutcome, notify_event, redact, secrets_of
from phoenix_backup.ops import db_backup
from phoenix_backup.ops.context import Environment, cache_for, enabled_targets, open_repository, parse_time
from phoenix_backup.ops.hooks import BackupHooks
from phoenix_backup.ops.prune import RetentionOutcome, retention_after_backup
from phoenix_backup.ops.selection import repository_in_workspace, select_sources
from phoenix_backup.ops.sync import commit_first_target, replicate_all
from phoenix_backup.repo.cache import Cache
from phoenix_backup.repo.checks import record_snapshot
from phoenix_backup.repo.chunker import file_chunks_of, page_runs
from phoenix_backup.repo.crypto import BackgroundSha256, BlobType, Sha256
from phoenix_backup.repo.locks import noting_unreleased
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.retention import Duration
from phoenix_backup.repo.snapshot import (
    NOT_CHECKED,
    DatabaseInfo,
    Snapshot,
    SnapshotStats,
    of_agent,
    timestamp_name,
)
from phoenix_backup.repo.tree import (
    TIME_NS_MAX,
    TIME_NS_MIN,
    Extent,
    ExtentsBuilder,
    Node,
    NodeType,
    TreeTooLarge,
    name_problem,
)
from phoenix_backup.repo.walker import Trees, walk_tree
from phoenix_backup.reporting import Reporter
from phoenix_backup.shell import ShellStep, StopScope
from phoenix_backup.sources import sqlite as sqlite_source
from phoenix_backup.sources.files import Entry, Selection, database_groups, open_regular, segment_folders
from phoenix_backup.sources.layout import Layout, all_ancestors, is_database_path
from phoenix_backup.sources.scope import (
    ComponentPlan,
    LogicalMatcher,
    Scope,
    default_databases,
    glob_hint,
    plan_components,
)
from phoenix_backup.sources.sqlite_capture import SqliteCapture
from phoenix_backup.state import (
    IntegrityCheck,
    TargetOutcome,
    integrity_checks,
    read_state,
    record_integrity_checks,
    record_notification,
    record_workspace,
    write_state,
)
from phoenix_backup.units import human_size
from phoenix_backup.users import username

P = ParamSpec("P")

# A file modified this close to the parent backup's start may have changed within the same
# timestamp tick after it was read, so it is read again.
RACY_NS = 1_000_000_000
# Files handed to the reading threads and not yet read: each waits as a future (~1.3 KB), so a
# workspace of 200,000 small files held a quarter gigabyte of them when all were handed at once.
READ_AHEAD = 1024
# Reads of a file that changes while it is read, before it is saved as it was last read.
READ_ATTEMPTS = 3
# How far past its stat size a file is read (see _Run.file_node).
READ_SLACK = 1024 * 1024
# A database's full integrity check is due once this share of `databases.integrityCheckEvery` has
# passed since its last one: a daily schedule whose runs start a few minutes early or late still
# checks at every run, instead of every other day.
CHECK_DUE_SHARE = 0.9


@dataclass(frozen=True)
class PlannedItem:
    path: str
    kind: str
    size: int


@dataclass
class Changes:
    """What a backup found changed since its parent snapshot, and what it added (restic's summary).

    A file (or symlink) is new when the parent lacks its path, unmodified when its entry is the
    parent's (same content, size, times, inode), changed otherwise; a folder likewise by its tree.
    A database is unchanged when its entry is the parent's, captured otherwise (every PostgreSQL
    or Redis database is captured)."""

    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unmodified: int = 0
    databases_captured: int = 0
    databases_unchanged: int = 0
    data_added: int = 0  # bytes of new blobs before compression and encryption

    def to_json(self) -> dict[str, int]:
        return {
            "filesNew": self.files_new,
            "filesChanged": self.files_changed,
            "filesUnmodified": self.files_unmodified,
            "dirsNew": self.dirs_new,
            "dirsChanged": self.dirs_changed,
            "dirsUnmodified": self.dirs_unmodified,
            "databasesCaptured": self.databases_captured,
            "databasesUnchanged": self.databases_unchanged,
            "dataAdded": self.data_added,
        }


@dataclass
class BackupResult:
    id: str | None
    name: str | None
    time: str
    scope: str
    files: int
    size: int
    added: int
    files_read: int
    databases: list[DatabaseInfo]
    targets: dict[str, TargetOutcome]
    incomplete: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False
    planned: list[PlannedItem] = field(default_factory=list)
    duration: float = 0.0
    retention: RetentionOutcome | None = None  # forget/prune after the snapshot (issue 7)
    notification: NotifyOutcome | None = None
    components: list[ComponentPlan] = field(default_factory=list)  # dry run: what each component saves
    hooks: dict[str, ShellStep] = field(default_factory=dict)  # "hooks.preBackup" -> how it ran
    changes: Changes | None = None  # since the parent snapshot (None: a dry run)
    # The SQLite databases given a full integrity_check by this run (logical path -> result).
    integrity_checked: dict[str, str] = field(default_factory=dict)
    # The backup's lock could not be removed after its snapshot was committed (why, and the fix).
    lock_left: str | None = None

    @property
    def damaged(self) -> list[dict[str, str]]:
        """The databases saved as they were, whose integrity check failed ({path, error})."""
        return [{"path": d.path, "error": f"integrity check failed: {d.integrity}"} for d in self.databases if d.failed]

    @property
    def exit_status(self) -> ExitStatus:
        failed_target = any(not t.ok for t in self.targets.values())
        bad_db = any(d.failed for d in self.databases)
        # Retention failing after the snapshot is a partial success: the snapshot is safe, but old
        # snapshots were not cleaned up.
        bad_retention = self.retention is not None and not self.retention.ok
        # And so is a postBackup hook that failed after the snapshot was saved.
        bad_hook = any(not step.ok for step in self.hooks.values())
        failed = self.incomplete or failed_target or bad_db or bad_retention or bad_hook or self.lock_left
        return ExitStatus.PARTIAL if failed else ExitStatus.OK

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "id": self.id,
            "name": self.name,
            "time": self.time,
            "scope": self.scope,
            "files": self.files,
            "size": self.size,
            "added": self.added,
            "filesRead": self.files_read,
            "duration": round(self.duration, 3),
            "databases": [d.to_json() for d in self.databases],
            "integrityChecked": self.integrity_checked,
            "targets": {k: v.to_json() for k, v in self.targets.items()},
            "incomplete": self.incomplete,
            "warnings": self.warnings,
            "lockLeft": self.lock_left,
            "dryRun": self.dry_run,
            "retention": self.retention.to_json() if self.retention else None,
            "notification": self.notification.to_json() if self.notification else None,
        }
        if self.hooks:
            doc["hooks"] = {label: step.to_json() for label, step in self.hooks.items()}
        if self.changes is not None:
            doc.update(self.changes.to_json())
        if self.dry_run:
            doc["planned"] = [{"path": p.path, "kind": p.kind, "size": p.size} for p in self.planned]
            doc["components"] = {c.name: c.to_json() for c in self.components}
        return doc


def backup(
    cfg: Config,
    envx: Environment,
    *,
    scope: Scope = "full",
    tags: tuple[str, ...] = (),
    time_text: str | None = None,
    dry_run: bool = False,
) -> BackupResult:
    started = time.time()
    when = parse_time(time_text)
    hooks = BackupHooks(cfg, envx.env, scope)
    try:
        if dry_run:
            envx.progress.phase("scanning")
            layout, sel = select_sources(cfg, scope, envx)
            return _plan(sel, layout, when, scope, cfg, started)
        try:
            pre = hooks.before()
            envx.progress.phase("scanning")
            held = _require_mounted_workspace(cfg, envx, scope)
            layout, sel = select_sources(cfg, scope, envx)
            result = _snapshot(cfg, envx, layout, sel, scope, tags, when, started)
            # After the commit point: later steps (replication, retention, notification) report
            # into `result` and never undo the snapshot.
        except BaseException:
            post = hooks.after("failed", None)
            if post is not None and not post.ok:
                envx.notice(f"warning: {post.describe()}")
            raise
    except Exception as exc:
        # Any failure is recorded and alerts, a repository that cannot even be opened included;
        # a dry run writes nothing, not even that.
        if dry_run:
            raise
        _record_state(cfg, envx, started, scope, None, exc)
        _notify(cfg, envx, BackupEvent(ok=False, scope=scope, duration=time.time() - started, errors=(str(exc),)))
        raise
    result.hooks = {s.label: s for s in (pre, hooks.after(_status_word(result), result.id)) if s is not None}
    _record_state(cfg, envx, started, scope, result, None)
    if held is not None:
        record_workspace(str(cfg.workspace), held, _state_file(envx))
    result.notification = _notify(cfg, envx, _event(result))
    result.warnings += [f"notification: {p}" for p in result.notification.problems]
    return result


# Names that say nothing of a workspace's content: what Finder or Explorer leave in a folder they
# showed (the mount point, browsed while its disk was not mounted) and the `lost+found` of a fresh
# empty disk mounted in the workspace's place. A folder holding only these is empty.
_NOT_CONTENT = frozenset({".DS_Store", "lost+found", "Thumbs.db", "desktop.ini", ".localized"})


def _require_mounted_workspace(cfg: Config, envx: Environment, scope: Scope) -> bool | None:
    """SourceError when the workspace is an empty folder where a backup succeeded before and it
    held something then: the mount point of a disk that is not mounted (at 02:00, after a reboot).
    Its snapshot saved nothing and said ok (a warning in a log nobody reads, no alert under
    `onSuccess: silent`), night after night, while retention aged the real snapshots out.
    Otherwise whether the folder holds anything (None: a scope without it, or not a folder)."""
    if scope not in ("full", "identity"):
        return None
    try:
        with os.scandir(cfg.workspace) as entries:
            if any(e.name not in _NOT_CONTENT for e in entries):
                return True
    except OSError:
        return None  # not a folder: `select_sources` says so
    state = read_state(_state_file(envx)) or {}
    last = state.get("lastSuccess")
    # A workspace empty from the start (a new agent's) was never anything else: no refusal. Nor
    # with a state file that does not say (written before Phoenix recorded it).
    if not isinstance(last, dict) or (state.get("workspaces") or {}).get(str(cfg.workspace)) is not True:
        return False
    raise SourceError(
        f"the workspace {cfg.workspace} is an empty folder, but a backup succeeded here before "
        f"({last.get('date')}, snapshot {last.get('snapshotName')}): if it is on a disk that is not mounted, "
        "mount it and run `phx backup`; nothing was saved and no snapshot forgotten. If it is empty on "
        "purpose, put its identity files back, or any file (`touch .keep`) to back it up as it is (or fix "
        f"`workspace` in {cfg.source or 'the config'})"
    )


def _status_word(r: BackupResult) -> str:
    return "ok" if r.exit_status == ExitStatus.OK else "partial"


def _event(r: BackupResult) -> BackupEvent:
    errors = [f"not saved: {i['path']}: {i['error']}" for i in r.incomplete]
    errors += [step.describe() for step in r.hooks.values() if not step.ok]
    errors += [f"database {d.path}: integrity {d.integrity}" for d in r.databases if d.failed]
    errors += r.retention.errors if r.retention else []
    return BackupEvent(
        ok=r.exit_status == ExitStatus.OK,
        scope=r.scope,
        snapshot_id=r.id,
        snapshot_name=r.name,
        size=r.size,
        added=r.added,
        duration=r.duration,
        targets_ok=tuple(name for name, t in r.targets.items() if t.ok),
        failed_targets={name: t.error or "failed" for name, t in r.targets.items() if not t.ok},
        errors=tuple(errors),
    )


def _notify(cfg: Config, envx: Environment, event: BackupEvent) -> NotifyOutcome:
    """Send per `notifications`; a message that cannot be sent is a warning, never a failure."""
    outcome = notify_event(cfg, dict(envx.env), event)
    for problem in outcome.problems:
        envx.notice(f"warning: notification not sent: {problem}")
    if outcome.skipped is None or outcome.problems:  # it was sent, or should have been
        record_notification(time.time(), outcome.sent, outcome.problems, _state_file(envx))
    return outcome


def _plan(sel: Selection, layout: Layout, when: datetime, scope: Scope, cfg: Config, started: float) -> BackupResult:
    """`--dry-run`: what would be saved, with sizes."""
    planned = [
        PlannedItem(e.logical, e.kind, e.st.st_size if e.kind in ("file", "sqlite") else 0)
        for e in sorted(sel.entries.values(), key=lambda e: e.logical)
    ]
    # PostgreSQL and Redis: their size is known only once dumped.
    planned += [PlannedItem(job.logical, job.engine, 0) for job in db_backup.database_jobs(cfg, scope)]
    files = sum(1 for p in planned if p.kind in ("file", "sqlite", "symlink"))
    unreadable = [(layout.to_logical(Path(path)), "dir", 0) for path, _message in sel.errors]
    components = plan_components(cfg, layout, [(p.path, p.kind, p.size) for p in planned] + unreadable, sel.followed)
    return BackupResult(
        id=None,
        name=None,
        time=when.isoformat(),
        scope=scope,
        files=files,
        size=sum(p.size for p in planned),
        added=0,
        files_read=0,
        databases=[],
        targets={},
        incomplete=[{"path": layout.to_logical(Path(p)), "error": m} for p, m in sel.errors],
        warnings=_missing_warnings(cfg, sel, layout, scope),
        dry_run=True,
        planned=planned,
        duration=time.time() - started,
        components=components if scope == "full" else [],
    )


def _snapshot(
    cfg: Config,
    envx: Environment,
    layout: Layout,
    sel: Selection,
    scope: Scope,
    tags: tuple[str, ...],
    when: datetime,
    started: float,
) -> BackupResult:
    """Take the snapshot into the first target's repository (which `phx init` made: a backup never
    creates it, so a disk that is not mounted is an error, not a new repository on the root disk),
    then replicate it to every other enabled target; `result.targets` holds each target's outcome."""
    first = enabled_targets(cfg)[0]
    repo = open_repository(cfg, envx, target=first, upgrade=True)
    try:
        left: list[str] = []  # the lock that could not be removed after the commit point
        with noting_unreleased(repo.lock(exclusive=False, command="backup"), left.append):
            result = _run(repo, cfg, envx, layout, sel, scope, tags, when, started)
            assert result.id is not None and result.name is not None
            # The full checks this run made are recorded of those very bytes (SHA-256 and size) in
            # the repository, as a watch base's are: a later snapshot that holds them again but
            # recorded `not checked` (the file touched, read again between full checks) is not
            # checked again by a restore (repo/checks.py; docs/restore-checks.md).
            record_snapshot(repo, result.id, result.integrity_checked, "backup")
        result.lock_left = f"target {first}: {left[0]}" if left else None
        # After the commit point. Replication reads this open repository (so a passphrase is
        # asked once); each replica is initialised on first use, and one that fails is only its
        # own outcome (exit 3), never the others' or the snapshot's.
        result.targets = {first: commit_first_target(repo, first, result.id, result.name)}
        result.targets.update({name: r.outcome() for name, r in replicate_all(repo, cfg, envx, ran="backup").items()})
        # Retention on every target, only when every target has the snapshot (issue 7).
        envx.progress.phase("applying retention")
        result.retention = retention_after_backup(cfg, envx, repo, dict(result.targets), protect=(result.id,))
        for error in result.retention.errors:
            envx.notice(f"warning: {error}")
        result.warnings += [f"clock: {n}" for n in result.retention.notices]
    finally:
        repo.close()
    result.warnings[:0] = _missing_warnings(cfg, sel, layout, scope)
    result.duration = time.time() - started
    return result


def _missing_warnings(cfg: Config, sel: Selection, layout: Layout, scope: Scope) -> list[str]:
    defaults = default_databases(layout.home)
    out = [
        f"{p} does not exist{glob_hint(cfg, layout.home, p)} (skipped)" for p in sel.missing if Path(p) not in defaults
    ]
    inside = repository_in_workspace(cfg, layout.home)
    if inside is not None:
        out.append(inside)
    out += sel.left_out
    identity = LogicalMatcher.for_patterns(cfg.components.identity, layout)
    if scope in ("full", "identity") and not any(identity.matches(logical) for logical in sel.entries):
        # Each identity file may be absent on its own; none at all is a workspace set wrong.
        out.append(
            f"the workspace {cfg.workspace} holds no identity file ({', '.join(cfg.components.identity[:4])}, ...): "
            f"is it the agent's workspace? fix `workspace` in {cfg.source or 'the config'} if not"
        )
    out += [
        f"{raw} goes through the symlink {link}, which is saved as a link and never followed (skipped); "
        "add the folder it points to to `include` to save what is there"
        for raw, link in sel.behind_links
    ]
    # Not damage and nothing lost: said as other unsaved paths are, as a warning (exit 0).
    out += [f"not saved: {path} (a {kind} holds no data to back up)" for path, kind in dict.fromkeys(sel.special)]
    overridden = list(dict.fromkeys(sel.overridden))
    if overridden:
        more = f" and {len(overridden) - 5} more" if len(overridden) > 5 else ""
        shown = ", ".join(overridden[:5]) + more
        out.append(
            f"`exclude` matches component paths, which were saved all the same ({shown}): a backup saves "
            "every component whole; to leave one of them out, remove it from `components`"
        )
    return out


def _record_state(
    cfg: Config, envx: Environment, started: float, scope: str, result: BackupResult | None, error: Exception | None
) -> None:
    """The state file, on success and on failure alike. A snapshot that lacks something it should
    hold (a file or folder that could not be read, a database that could not be saved) or holds a
    database saved damaged is a partial run: not a success, every such path named in `failedParts`."""
    parts: list[dict[str, str]] = []
    if result is not None:
        targets = result.targets
        failed = [f"target {name}: {t.error}" for name, t in targets.items() if not t.ok]
        # A part that could not be saved (a PostgreSQL or Redis database, a file), or a database
        # saved damaged, makes the run partial: recorded as such, never as a success.
        parts = [{"path": i["path"], "error": i["error"]} for i in result.incomplete]
        failed += [f"not saved: {p['path']}: {p['error']}" for p in parts]
        failed += [f"damaged: {p['path']}: {p['error']}" for p in result.damaged]
        parts += result.damaged
        message = "; ".join(failed) or None
    else:
        targets = {name: TargetOutcome(False, str(error)) for name in cfg.targets.enabled_names()}
        message = str(error)
    # The state file is plain text `phx status` and `doctor` show: its errors are redacted as an
    # alert's are (a bug's message, a library's text, may quote a secret the run knows).
    known = secrets_of(cfg, envx.env)
    message = redact(message, known) if message is not None else None
    targets = {name: TargetOutcome(t.ok, redact(t.error, known) if t.error else t.error) for name, t in targets.items()}
    parts = [{**p, "error": redact(p["error"], known)} for p in parts]
    write_state(
        timestamp=started,
        backup_path=str(cfg.repository_path),
        compression=cfg.compression.enabled,
        success=result is not None,
        snapshot_id=result.id if result else None,
        snapshot_name=result.name if result else None,
        error=message,
        targets=targets,
        scope=scope,
        failed_parts=parts,
        path=_state_file(envx),
    )
    if result is not None:
        record_checks(envx, result, started, "backup")


def record_checks(envx: Environment, result: BackupResult, started: float, by: str) -> None:
    """Record the full integrity checks a snapshot's run made (a backup's, or a `phx watch`
    base's) in the state file's cadence; `started` is when the run began."""
    if result.id is None:
        return
    # The cadence counts from when the state was read (not `--time`, which may be any time).
    captured = datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds")
    checked_at = datetime.now().astimezone().isoformat(timespec="seconds")
    checks = {
        logical: IntegrityCheck(captured, outcome, result.id, by, checked_at)
        for logical, outcome in result.integrity_checked.items()
    }
    record_integrity_checks(checks, _state_file(envx))


def _state_file(envx: Environment) -> Path:
    return envx.home / ".argentos" / "backup" / ".last-backup"


def check_due(last: IntegrityCheck | None, every: str, now: datetime) -> bool:
    """Whether a database whose last full integrity check is `last` gets one now: never checked,
    last found damaged, or checked `CHECK_DUE_SHARE` of `every` ago or more ("0h": always)."""
    if last is None or last.result != "ok":
        return True
    interval = now - Duration.parse(every).before(now)
    try:
        when = datetime.fromisoformat(last.time)
    except ValueError:
        return True
    if when.tzinfo is None or when > now:
        return True  # a record from the future: the clock went back, so check
    return now - when >= interval * CHECK_DUE_SHARE


# The SHA-256 of a parent's node held without its extents (`_Run.drop_changed_extents`): no
# node read has it, so such a node never counts as unchanged.
_DROPPED = "(extents dropped)"


def _read_again(tree_id: bytes, path: str, exc: PhoenixError) -> None:
    """A parent tree that cannot be read only means its files are read again."""


class _Run:
    """The state of one backup run, shared by the worker threads."""

    def __init__(self, repo: Repository, cache: Cache, parent: Snapshot | None, envx: Environment) -> None:
        self.repo = repo
        self.cache = cache
        self.parent = parent
        self.envx = envx
        self.parent_nodes: dict[str, Node] = {}
        self.parent_started_ns = 0
        self.started_ns = time.time_ns()  # set by `_run` to the backup's start, before the walk
        self.warnings: list[str] = []
        if parent is not None:
            try:
                # A parent whose trees are partly lost still helps: what cannot be read is read again.
                self.parent_nodes = dict(walk_tree(repo, parent.tree, on_error=_read_again))
            except (CorruptObject, ObjectNotFound, UnsafePath, IdentityRequired) as exc:
                # Damaged, or planted by a writer of the storage (or, backing up a write-only
                # repository, its trees are no longer in this machine's cache): it must not stop every backup.
                self.warnings.append(
                    f"the parent snapshot {parent.id[:8]} cannot be read, so every file was read ({exc})"
                )
                self.parent = parent = None
        if parent is not None:
            self.parent_started_ns = int(datetime.fromisoformat(parent.started or parent.time).timestamp() * 1e9)
        # Leftovers of killed runs go, and a cache that cannot be written is named at the start.
        # A backup puts nothing in its own run folder: it goes at once, so that no run, failed or
        # not, leaves an empty one behind (a restore's preview, in the same process, keeps its own
        # while it holds copies: rmdir removes only an empty folder).
        with contextlib.suppress(OSError):
            cache.run_dir().rmdir()
        self.files_read = 0
        self.incomplete: list[dict[str, str]] = []
        self.databases: list[DatabaseInfo] = []
        self.aux = ThreadPoolExecutor(max_workers=2, thread_name_prefix="phx-check")
        # A safety snapshot leaves the page hashes of the regular backups' chain in the cache.
        self.keep_page_state = True
        # Set when the run stops (Ctrl-C): the reads under way end at their next piece.
        self.stopping = threading.Event()
        # What its reads start or wait on (pg_dump, a server connection), ended when it stops.
        self.stops = StopScope()
        # The integrity cadence: the last full check of each database, and the databases this
        # run checked (logical path -> result).
        self.now = datetime.now().astimezone()
        self.check_every = "0h"
        self.last_checks: dict[str, IntegrityCheck] = {}
        self.checked: dict[str, str] = {}

    @contextmanager
    def stop_on_error(self, pool: ThreadPoolExecutor) -> Iterator[None]:
        """Whatever ends the run early (Ctrl-C above all) drops the reads not yet started and ends
        those under way at their next piece, so that it ends at once, not once a large file has
        been read whole. Nothing they wrote becomes part of a snapshot: none is committed."""
        try:
            yield
        except BaseException:
            self.stopping.set()
            pool.shutdown(wait=False, cancel_futures=True)
            # A child feeding a read (pg_dump, in a session of its own) may hang or be stopped:
            # ended now, its pipe ends and so does the read, which the pool's exit waits for. This
            # run's children only, and any it starts from now on (a worker still connecting).
            self.stops.end()
            raise

    def count_done(self, _future: Future[Any]) -> None:
        """A file or database read (or failed): one more of the phase's items, as it happens."""
        self.envx.progress.advance(files=1)

    def drop_changed_extents(self, nodes: dict[str, Node]) -> None:
        """Once every node is read, the parent's are only compared with the new ones (to keep a
        folder's tree, to count changes). A file's or database's node that differs from its new
        one is then held without its extents, marked so that it equals no node (its SHA-256
        cannot be one): memory.db's parent node grows with the history (24,798 extents after 30
        days of the medium sample, 1.2 MB) and was held beside the new one while trees were written."""
        for logical, prev in self.parent_nodes.items():
            if prev.type in ("file", "sqlite") and len(prev.content) and nodes.get(logical) != prev:
                self.parent_nodes[logical] = dataclasses.replace(prev, content=(), sha256=_DROPPED)

    def check_stopping(self) -> None:
        if self.stopping.is_set():
            raise _Stopped("the backup was stopped")

    def save_data(self, data: memoryview | bytes, blob_id: bytes | None = None) -> bytes:
        return self.repo.save_blob_async(BlobType.DATA, data, blob_id)

    def data_id(self, data: memoryview | bytes) -> bytes:
        return self.repo.ids.blob_id(BlobType.DATA, data)

    def unchanged(self, node: Node | None, st: os.stat_result, kind: str) -> bool:
        return (
            node is not None
            and node.type == kind
            and node.size == st.st_size
            and node.mtime_ns == st.st_mtime_ns
            and node.ctime_ns == st.st_ctime_ns
            and node.inode == st.st_ino
            and max(st.st_mtime_ns, st.st_ctime_ns) < self.parent_started_ns - RACY_NS
            and self.present(node)
        )

    def present(self, node: Node) -> bool:
        """Whether every blob of a parent's node is still indexed in a pack the store holds
        (`Repository.drop_missing_packs` forgot those of lost packs): only then may it be reused."""
        return node.blobs_present(self.repo.index.has)

    def file_node(self, entry: Entry, *, warn: bool = True) -> Node:
        """`warn`: whether a file that never holds still is named in the warnings (not when the
        caller checks it again itself, as a store's group read does)."""
        st = entry.st
        prev = self.parent_nodes.get(entry.logical)
        if self.unchanged(prev, st, "file"):
            assert prev is not None
            self.envx.progress.advance(size=st.st_size)
            return _renamed(prev, entry.path.name)
        # A FIFO, a folder or a link put in the file's place since the scan is refused, not waited on.
        opened = open_regular(entry.path, follow_links=False)
        if opened is None:
            raise SourceError(f"{entry.path} is no longer a regular file")
        fd, fst = opened
        with os.fdopen(fd, "rb") as f:
            # A file written while it is read may hold a mix of old and new bytes: it is read
            # again (what was already stored costs space, nothing else), and saved with a
            # warning when it never holds still. Each read stops READ_SLACK past the size the file
            # had when it began (past it: a file whose size says less than it holds, as on some
            # virtual file systems, is still read whole), and a read again at twice the first
            # one's: a file appended for ever (faster than it is read) costs a bounded time and
            # space, never the whole disk.
            cap: int | None = None
            for attempt in range(1, READ_ATTEMPTS + 1):
                if attempt > 1:
                    fst = os.fstat(f.fileno())  # the same open file: still a regular one
                f.seek(0)
                extents = ExtentsBuilder(merge=False)  # held packed, as a parent's are
                size = 0
                want = fst.st_size + READ_SLACK
                cap = cap or 2 * want
                want = min(want, cap)
                # A large file's SHA-256 is computed on the other core, from the chunks as read.
                with _file_digest(fst.st_size) as digest:
                    for chunk in file_chunks_of(f, want, self.repo.config.chunker, self.repo.chunker_seed):
                        self.check_stopping()
                        digest.update(chunk)
                        size += len(chunk)
                        self.envx.progress.advance(size=len(chunk))
                        extents.add(self.save_data(chunk), 0, len(chunk))
                    sha256 = digest.hexdigest()
                if size == fst.st_size and _same_version(fst, os.fstat(f.fileno())):
                    break
                if attempt == READ_ATTEMPTS and warn:
                    self.warnings.append(
                        f"{entry.logical} changed while it was read ({READ_ATTEMPTS} times); the snapshot holds the "
                        "bytes of the last read, which may mix old and new content, and the next backup reads it again"
                    )
        self.files_read += 1
        # The stat from before the read: a change during it makes the next backup read the file.
        return _content_node(entry.path.name, "file", fst, size, extents.build(), sha256)

    def sqlite_node(self, entry: Entry) -> tuple[Node, DatabaseInfo]:
        src = sqlite_source.source_stat(entry.path)
        prev = self.parent_nodes.get(entry.logical)
        due = check_due(self.last_checks.get(entry.logical), self.check_every, self.now)
        if (
            prev is not None
            and prev.type == "sqlite"
            and prev.sqlite is not None
            and prev.sqlite.get("source") == src.to_json()
            and src.latest_change_ns() < self.parent_started_ns - RACY_NS
            and self.parent is not None
            and self.present(prev)
        ):
            info = next((d for d in self.parent.databases if d.path == entry.logical), None)
            # The parent's image stands for this one, and so does its check; an image never
            # checked is read again once its check is due (the cadence covers every database).
            if info is not None and not (due and info.integrity == NOT_CHECKED):
                self.envx.progress.advance(size=entry.st.st_size)
                return _renamed(prev, entry.path.name), info
        parent_state = None
        if prev is not None and prev.type == "sqlite" and prev.sha256 and self.present(prev):
            pages = self.cache.load_pages(entry.logical, prev.sha256)
            if pages is not None:
                parent_state = (prev.content, pages)
        # The page hashes, old and new, stay in files: memory does not grow with the database.
        sink = self.cache.page_sink()
        # Read in place, in one read transaction (no temporary copy): the integrity check and row
        # counts run in their own thread on that transaction, so they see exactly the pages this
        # thread cuts into page runs, while the SHA-256 is fed the same bytes.
        report = self.envx.progress
        report.working(f"capturing {entry.path.name} ({human_size(entry.st.st_size)})")
        with SqliteCapture(entry.path) as capture:
            image = capture.capture()
            # Between full checks, the image's header is checked (microseconds); one that does
            # not fit the image gets the full check at once.
            full = due or bool(sqlite_source.header_problems(image.page(1), image.page_count))
            check: Future[sqlite_source.DatabaseCheck] = self.aux.submit(
                sqlite_source.check_connection, capture.connection, full=full
            )
            # The SHA-256 (which `sha256sum` checks a restore against) is computed on the other
            # core from the very regions cut here, not in a pass of its own.
            sha = _Counted(BackgroundSha256(), report, self.check_stopping)
            try:
                extents, state = page_runs(
                    image,
                    image.page_size,
                    self.repo.config.sqlite_run_pages,
                    self.repo.ids.page_key,
                    self.save_data,
                    parent_state,
                    region_id=self.data_id,
                    digest=sha,
                    sink=sink,
                )
                digest = sha.hexdigest()
            finally:
                sha.digest.close()
                report.working(f"checking {entry.path.name}")
                if self.stopping.is_set():
                    capture.connection.interrupt()  # the integrity check ends too
                wait([check])  # the connection closes only once the check is done with it
                if parent_state is not None:
                    parent_state[1].close()
            report.working(None)
            result = check.result()
        if full:
            self.checked[entry.logical] = result.integrity
        page_size, size = image.page_size, len(image)
        state.sha256 = digest
        if self.keep_page_state:
            self.cache.save_pages(entry.logical, state)
        state.close()
        sink.close()
        info = DatabaseInfo(
            path=entry.logical,
            engine="sqlite",
            version=result.version,
            integrity=result.integrity,
            tables=result.tables,
            virtual_tables=result.virtual_tables,
            page_size=page_size,
        )
        st = os.stat(entry.path)
        sqlite = {"pageSize": page_size, "integrity": result.integrity, "source": src.to_json()}
        return _content_node(entry.path.name, "sqlite", st, size, extents, digest, sqlite), info

    def group_read(self, db: Entry, files: list[Entry]) -> GroupRead:
        """A database with the files its application rewrites beside it, outside its transactions
        (a chromadb store: `chroma.sqlite3` and its HNSW segment files), read as one state: the
        files' stats, their reads, the database's capture, their stats again, repeated while any
        file changed in between (`read_while_still`). chromadb writes a flush's index files
        before the database records it, so files unchanged across the capture are the ones the
        captured database expects. When they never hold still, the last read is kept and the
        store is named as not saved consistently."""
        paths = [e.path for e in files]

        def read(stats: Sequence[os.stat_result | None]) -> GroupRead:
            out = GroupRead()
            for entry, st in zip(files, stats, strict=True):
                try:
                    if st is None:
                        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
                    # The stat from just before: a parent's node stands for the file only if
                    # this version, checked again after the capture, is the parent's.
                    out.nodes[entry.logical] = self.file_node(dataclasses.replace(entry, st=st), warn=False)
                except (OSError, PhoenixError) as exc:
                    out.failed.append({"path": entry.logical, "error": _reason(exc)})
            try:
                out.nodes[db.logical], info = self.sqlite_node(db)
                out.databases.append(info)
            except (OSError, PhoenixError) as exc:
                out.failed.append({"path": db.logical, "error": _reason(exc)})
            return out

        stats = partial(_stats, paths)
        settled = partial(_flushes_done, [p.name for p in paths], [p.parent for p in paths])
        result, attempts = read_while_still(
            stats, read, GROUP_ATTEMPTS, GROUP_PAUSE, self.check_stopping, settled=settled
        )
        result.attempts = attempts
        self.envx.progress.advance(files=len(files) + 1)
        store = db.logical.rpartition("/")[0] or db.logical
        # A collection added once the files were listed: its folder is not in the snapshot, while
        # the database captured after it may record it (and purge the log its files hold).
        walked = {f.logical.rpartition("/")[0].rpartition("/")[2] for f in files}
        added = sorted(
            name
            for name, st in segment_folders(db.path.parent).items()
            if name not in walked and st.st_ctime_ns >= self.started_ns - RACY_FINE_NS
        )
        if added:
            result.failed.append(
                {
                    "path": store,
                    "error": (
                        f"not saved consistently: segment folder(s) {', '.join(added)} appeared after its files were "
                        f"listed, so the snapshot lacks them while its {db.path.name} may record them; the next "
                        "backup saves them (or pause the writer for the backup with hooks.preBackup)"
                    ),
                }
            )
        elif attempts is None:
            folders = len({f.logical.rpartition("/")[0] for f in files})
            result.failed.append(
                {
                    "path": store,
                    "error": (
                        f"not saved consistently: its application rewrote the index files of its {folders} segment "
                        f"folder(s) during each of {GROUP_ATTEMPTS} reads, so the snapshot's {db.path.name} and "
                        "index files may come from different flushes and the store may not open; pause the "
                        "writer for the backup with hooks.preBackup (and resume it with hooks.postBackup)"
                    ),
                }
            )
        return result


@dataclass
class GroupRead:
    """What a group read saved: nodes by logical path, the database's details, what failed, and
    the attempt whose files held still (None: none did)."""

    nodes: dict[str, Node] = field(default_factory=dict)
    databases: list[DatabaseInfo] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    attempts: int | None = None


# A store's group read: at most this many attempts, the n-th retry after about n times the pause
# (with jitter, so that a writer flushing at a steady rhythm is not met at the same phase).
GROUP_ATTEMPTS = 8
GROUP_PAUSE = 0.05


T = TypeVar("T")


class _InFlight:
    """At most `limit` files handed to the reading threads. The thread handing them waits, once
    full, until half have been read: woken once per `limit // 2` files, not after every file
    (each wake-up a switch between threads and a turn of the GIL)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self._changed = threading.Condition()

    def enter(self) -> None:
        with self._changed:
            if self.count >= self.limit:
                self._changed.wait_for(lambda: self.count <= self.limit // 2)
            self.count += 1

    def leave(self) -> None:
        with self._changed:
            self.count -= 1
            if self.count in (self.limit // 2, 0):
                self._changed.notify_all()

    def drain(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.count == 0)


def _keep_outcome(
    outcomes: dict[str, Node | BaseException], logical: str, reading: _InFlight, future: Future[Node]
) -> None:
    """A file's read is done: its node or its error is kept (the future goes) and its slot freed."""
    try:
        outcomes[logical] = future.result()
    except BaseException as exc:  # raised or reported where the outcomes are taken
        outcomes[logical] = exc
    finally:
        reading.leave()


def _stats(paths: Sequence[Path]) -> list[os.stat_result | None]:
    out: list[os.stat_result | None] = []
    for path in paths:
        try:
            out.append(os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            out.append(None)
    return out


def _version(st: os.stat_result | None) -> tuple[int, int, int, int] | None:
    """What says a file was rewritten (never its access time, which a read may change)."""
    return None if st is None else (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


# A file's times come from the kernel's coarse clock (one tick: 1 to 10 ms behind the real one),
# or on some file systems are whole seconds. A file last changed within this margin of the
# moment its stat was taken may be rewritten in the same tick, same size, and keep its times: a
# change its stats cannot show. Such a read does not count as holding still.
RACY_FINE_NS = 20_000_000


def _racy_until(stats: Sequence[os.stat_result | None], taken_ns: int) -> int:
    """The clock time (ns) from which the files stat'ed at `taken_ns` could no longer change
    unseen; at or below `taken_ns` when none could already. A time more than a tick after
    `taken_ns` (a file dated in the future: `touch -d 2300-01-01`, a clock set wrong) is no write
    of this clock's, and is left out: waiting for it to pass slept until that date."""
    limit = taken_ns + RACY_NS
    changed = [t for st in stats if st is not None for t in (st.st_mtime_ns, st.st_ctime_ns) if t <= limit]
    if not changed:
        return 0
    # Whole-second times on every file: a file system with a clock of seconds.
    fine = any(st.st_mtime_ns % 1_000_000_000 or st.st_ctime_ns % 1_000_000_000 for st in stats if st is not None)
    return max(changed) + (RACY_FINE_NS if fine else RACY_NS) + 1


# Written last by each flush of a segment (chromadb's `_persist`: the index files, then this).
FLUSH_LAST = "index_metadata.pickle"


def _flushes_done(names: Sequence[str], folders: Sequence[Path], stats: Sequence[os.stat_result | None]) -> bool:
    """Whether no segment folder is in the middle of a flush: none holds a file modified after
    its `FLUSH_LAST` (a writer paused between two files of a flush leaves them still, yet of two
    flushes). A folder without that file is not judged."""
    last: dict[Path, int] = {}
    newest: dict[Path, int] = {}
    for name, folder, st in zip(names, folders, stats, strict=True):
        if st is None:
            continue
        if name == FLUSH_LAST:
            last[folder] = st.st_mtime_ns
        else:
            newest[folder] = max(newest.get(folder, 0), st.st_mtime_ns)
    return all(newest.get(folder, 0) <= mtime for folder, mtime in last.items())


def read_while_still(
    stats: Callable[[], Sequence[os.stat_result | None]],
    read: Callable[[Sequence[os.stat_result | None]], T],
    attempts: int,
    pause: float,
    check: Callable[[], None] = lambda: None,
    sleep: Callable[[float], None] = time.sleep,
    settled: Callable[[Sequence[os.stat_result | None]], bool] = lambda _stats: True,
) -> tuple[T, int | None]:
    """`read(stats())` until no file changed (size, mtime, ctime, inode) between the stats taken
    before and after it, at most `attempts` times: the last read, and the attempt that held still
    (None when none did). A read whose files had changed within a tick of the clock before it
    (`_racy_until`) does not count as holding still: a rewrite in that tick, of the same size,
    would leave their stats equal; the next read waits past that tick. Nor does one whose files,
    as stat'ed before it, were not `settled` (a flush half done). `check` runs before each retry
    (it raises when the run stops)."""
    for attempt in range(1, attempts + 1):
        taken = time.time_ns()
        before = stats()
        result = read(before)
        after = stats()
        still = list(map(_version, after)) == list(map(_version, before))
        if still and _racy_until(before, taken) <= taken and settled(before):
            return result, attempt
        if attempt < attempts:
            check()
            # At least until the files, as last seen, can no longer change unseen.
            now = time.time_ns()
            wait_out = (_racy_until(after, now) - now) / 1e9
            sleep(max(pause * attempt * (0.5 + random.random()), wait_out))
    return result, None


class _Stopped(Exception):
    """A read ended because the run is stopping (`_Run.stopping`)."""


class _Counted:
    """A SHA-256 object that reports every byte it is fed as read (a database's capture), and
    ends the capture (`check`) when the run stops."""

    def __init__(self, digest: Any, report: Reporter, check: Callable[[], None]) -> None:
        self.digest = digest
        self.report = report
        self.check = check

    def update(self, data: memoryview | bytes) -> None:
        self.check()
        self.digest.update(data)
        self.report.advance(size=len(data))

    def hexdigest(self) -> str:
        return str(self.digest.hexdigest())


# Files at least this large have their SHA-256 computed in a thread of its own (starting one
# costs more than hashing a small note).
BACKGROUND_DIGEST = 1024 * 1024


def _file_digest(size: int) -> contextlib.AbstractContextManager[Any]:
    """A SHA-256 digest for a file of `size` bytes, as a context manager that lets go of it."""
    if size >= BACKGROUND_DIGEST:
        return BackgroundSha256()
    return contextlib.nullcontext(Sha256())


def _content_node(
    name: str,
    kind: NodeType,
    st: os.stat_result,
    size: int,
    content: Sequence[Extent],
    sha256: str,
    sqlite: dict[str, Any] | None = None,
) -> Node:
    """A file's or a database's node: metadata and identity from `st`, the bytes as extents."""
    return Node(
        name=name,
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        mtime_ns=st.st_mtime_ns,
        size=size,
        inode=st.st_ino,
        ctime_ns=st.st_ctime_ns,
        uid=st.st_uid,
        gid=st.st_gid,
        content=content,
        sha256=sha256,
        sqlite=sqlite,
    )


def _same_version(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (b.st_size, b.st_mtime_ns, b.st_ctime_ns)


def _renamed(node: Node, name: str) -> Node:
    return node if node.name == name else dataclasses.replace(node, name=name)


def _removing_unindexed(
    take: Callable[Concatenate[Repository, P], BackupResult],
) -> Callable[Concatenate[Repository, P], BackupResult]:
    """`take`, run so that when it fails or is stopped, the packs it wrote that no index names are
    removed (`Repository.removing_unindexed`): on a full disk they held the space the next run needs."""

    def run(repo: Repository, /, *args: P.args, **kwargs: P.kwargs) -> BackupResult:
        with repo.removing_unindexed():
            return take(repo, *args, **kwargs)

    return run


@_removing_unindexed
def _run(
    repo: Repository,
    cfg: Config,
    envx: Environment,
    layout: Layout,
    sel: Selection,
    scope: str,  # a Scope, or "pre-restore" for safety snapshots
    tags: tuple[str, ...],
    when: datetime,
    started: float,
    *,
    absent: tuple[str, ...] = (),
    parent_scopes: tuple[str, ...] | None = None,
    keep_page_state: bool = True,
    databases: tuple[str, ...] = (),
) -> BackupResult:
    envx.progress.phase("reading the index")
    repo.load_index()
    # Deduplicate only against data the store still holds: blobs of lost packs are stored again.
    lost = repo.drop_missing_packs()
    lost_warning = (
        f"{len(lost)} pack(s) the index lists are missing (e.g. {lost[0]}); this backup stores their data "
        "again where the workspace still has it; run `phx repair snapshots` to see which older snapshots lost data"
        if lost
        else None
    )
    if lost_warning:
        envx.notice(f"warning: {lost_warning}")
    snapshots = repo.list_snapshots()
    host = socket.gethostname()
    parents = [s for s in snapshots if s.host == host and s.scope in (parent_scopes or (scope,))]
    # This agent's (user and workspace folder): another agent of this host sharing the repository
    # has other files under the same logical paths.
    parents = of_agent(parents, (username(), str(layout.workspace)))
    parent = parents[-1] if parents else None
    run = _Run(repo, cache_for(repo, envx), parent, envx)
    run.started_ns = int(started * 1e9)
    parent = run.parent
    run.keep_page_state = keep_page_state
    run.check_every = cfg.databases.integrity_check_every
    # A check counts only for a snapshot this repository holds: the state file is one per home,
    # and a check of another repository's copy (before `phx init` of this one, or another
    # config's) proves nothing about the copies here, which retention keeps by their own record.
    held = {s.id for s in snapshots}
    run.last_checks = {k: c for k, c in integrity_checks(_state_file(envx)).items() if c.snapshot_id in held}
    if lost_warning:
        run.warnings.append(lost_warning)
    nodes: dict[str, Node] = {}
    # Counted as the summary counts them (files, databases and symlinks; not folders), so that the
    # progress ends at the number the result reports: links and symlinks are done at once.
    total = sum(1 for e in sel.entries.values() if e.kind in ("file", "sqlite", "symlink"))
    links = hardlink_groups(sel.entries.values())
    total_size = sum(e.st.st_size for k, e in sel.entries.items() if e.kind in ("file", "sqlite") and k not in links)
    envx.progress.phase("reading files", files=total, size=total_size)
    workers = max(2, min(8, (os.cpu_count() or 2) + 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="phx-read") as pool, run.stop_on_error(pool):
        # Files are handed READ_AHEAD at a time; each read's node (or error) is kept, not its future.
        reading = _InFlight(READ_AHEAD)
        read_order: list[str] = []
        read_outcomes: dict[str, Node | BaseException] = {}
        db_futures: dict[str, Future[tuple[Node, DatabaseInfo]]] = {}
        # A chromadb store (its database and the index files beside it) is read as one state.
        groups = database_groups(sel.entries)
        grouped = {f for files in groups.values() for f in files}
        group_futures = {
            db: pool.submit(run.group_read, sel.entries[db], [sel.entries[f] for f in files])
            for db, files in groups.items()
        }
        # Databases first: they are the largest items, so they start while files fill the gaps.
        for entry in sorted(sel.entries.values(), key=lambda e: (e.kind != "sqlite", e.logical)):
            if entry.logical in groups or entry.logical in grouped:
                continue
            if entry.logical in links:
                envx.progress.advance(files=1)
                continue  # another name of a file read once, below
            if entry.kind == "file":
                reading.enter()
                read_order.append(entry.logical)
                future = pool.submit(run.file_node, entry)
                future.add_done_callback(run.count_done)
                future.add_done_callback(partial(_keep_outcome, read_outcomes, entry.logical, reading))
            elif entry.kind == "sqlite":
                db_futures[entry.logical] = pool.submit(run.sqlite_node, entry)
                db_futures[entry.logical].add_done_callback(run.count_done)
            elif entry.kind == "symlink":
                nodes[entry.logical] = _symlink_node(entry)
                envx.progress.advance(files=1)
        # PostgreSQL and Redis stream straight into the repository, beside the files.
        env = dict(envx.env)
        seed = repo.chunker_seed
        db_jobs = {
            job.logical: pool.submit(db_backup.back_up, job, env, seed, run.save_data, run.stops)
            for job in db_backup.database_jobs(cfg, scope, databases)
        }
        for logical, fut in db_futures.items():
            try:
                node, info = fut.result()
            except (OSError, PhoenixError) as exc:
                run.incomplete.append({"path": logical, "error": _reason(exc)})
                continue
            nodes[logical] = node
            run.databases.append(info)
        for gfut in group_futures.values():
            group = gfut.result()
            nodes.update(group.nodes)
            run.databases.extend(group.databases)
            run.incomplete.extend(group.failed)
        for logical, jfut in db_jobs.items():
            try:
                outcome = jfut.result()
            except (OSError, PhoenixError) as exc:
                # Named in the result and the state file; the rest of the snapshot goes on (exit 3).
                run.incomplete.append({"path": logical, "error": _reason(exc)})
                continue
            nodes.update(outcome.nodes)
            run.databases.append(outcome.info)
            run.warnings.extend(outcome.warnings)
            total += len(outcome.nodes)  # a dump's files count as the summary counts them
            envx.progress.phase("reading files", files=total, size=total_size)
            envx.progress.advance(files=len(outcome.nodes))
        reading.drain()  # every file read: its outcome is kept
        for logical in read_order:
            read = read_outcomes.pop(logical)
            if isinstance(read, (OSError, PhoenixError)):
                run.incomplete.append({"path": logical, "error": _reason(read)})
            elif isinstance(read, BaseException):
                raise read
            else:
                nodes[logical] = read
        del read_order
    run.aux.shutdown()
    _link_nodes(nodes, links, run.incomplete, lambda logical: run.file_node(sel.entries[logical]))
    for path, message in sel.errors:
        run.incomplete.append({"path": layout.to_logical(Path(path)), "error": message})
    run.drop_changed_extents(nodes)
    envx.progress.phase("writing trees and index")
    trees: set[bytes] = set()
    dir_kinds: dict[str, str] = {}
    root = _write_trees(repo, layout, sel, nodes, run.parent, run.parent_nodes, trees, dir_kinds, run.warnings)
    repo.flush()
    changes = _changes(nodes, run.parent_nodes, dir_kinds, run.databases, repo.stats.raw_added)
    files = sum(1 for n in nodes.values() if n.type in ("file", "sqlite", "symlink"))
    size = sum(n.size for n in nodes.values() if n.type in ("file", "sqlite"))
    dirs = sum(1 for e in sel.entries.values() if e.kind == "dir")
    name = timestamp_name(when, {s.name for s in snapshots} | _names_since(repo, snapshots))
    duration = time.time() - started
    snap = Snapshot(
        time=when.isoformat(),
        name=name,
        host=socket.gethostname(),
        username=username(),
        scope=scope,
        tags=tags,
        tree=root,
        parent=parent.id if parent else None,
        # The config file too, so that `restore --to` can say where its copy landed.
        sources={"workspace": str(layout.workspace), "home": str(layout.home)}
        | ({"config": str(cfg.source.absolute())} if cfg.source is not None else {}),
        databases=tuple(sorted(run.databases, key=lambda d: d.path)),
        stats=SnapshotStats(files, dirs, size, 0, repo.stats.blobs_added, run.files_read, duration),
        incomplete=tuple(run.incomplete),
        phoenix_version=__version__,
        started=datetime.fromtimestamp(started).astimezone().isoformat(),
        absent=absent,
    )
    # The snapshot records the bytes it added: packs and index are known; the snapshot object
    # itself is small and is counted by the repository after it is written.
    added = repo.stats.bytes_added
    snap = _with_added(snap, added)
    # The commit point. Before it: every pack the snapshot refers to is still in the store, and
    # our lock is still there and ours (`save_snapshot` confirms it: had another process removed
    # it, a prune may have run).
    repo.confirm_present(trees | _needed_blobs(nodes))
    sid = repo.save_snapshot(snap)
    return BackupResult(
        id=sid,
        name=name,
        time=snap.time,
        scope=scope,
        files=files,
        size=size,
        added=added,
        files_read=run.files_read,
        databases=list(snap.databases),
        targets={},
        incomplete=run.incomplete,
        warnings=run.warnings,
        duration=time.time() - started,
        changes=changes,
        integrity_checked=dict(sorted(run.checked.items())),
    )


def _changes(
    nodes: dict[str, Node],
    before: dict[str, Node],
    dir_kinds: dict[str, str],
    databases: list[DatabaseInfo],
    data_added: int,
) -> Changes:
    """Count what changed since the parent snapshot (`before`: its entries by path)."""
    out = Changes(data_added=data_added)
    for logical, node in nodes.items():
        old = before.get(logical)
        if node.type == "sqlite":
            if old is not None and old == node:
                out.databases_unchanged += 1
            else:
                out.databases_captured += 1
        elif node.type in ("file", "symlink"):
            if old is None:
                out.files_new += 1
            elif old == node:
                out.files_unmodified += 1
            else:
                out.files_changed += 1
    out.databases_captured += sum(1 for d in databases if d.engine != "sqlite")
    for kind in dir_kinds.values():
        if kind == "new":
            out.dirs_new += 1
        elif kind == "changed":
            out.dirs_changed += 1
        else:
            out.dirs_unmodified += 1
    return out


def hardlink_groups(entries: Iterable[Entry]) -> dict[str, str]:
    """Regular files with several names in this selection (the same device and inode): each
    name but the first in path order -> that first name."""
    by_inode: dict[tuple[int, int], list[str]] = {}
    for e in entries:
        if e.kind == "file" and e.st.st_nlink > 1:
            by_inode.setdefault((e.st.st_dev, e.st.st_ino), []).append(e.logical)
    out: dict[str, str] = {}
    for names in by_inode.values():
        first, *others = sorted(names)
        out.update(dict.fromkeys(others, first))
    return out


def _link_nodes(
    nodes: dict[str, Node], links: dict[str, str], incomplete: list[dict[str, str]], read: Callable[[str], Node]
) -> None:
    """Give every other name of a hard-linked file the first name's node (one inode, one content),
    marked with `hardlink`; a file no longer linked loses the mark its parent's node carried.
    A first name that could not be read (gone since the walk, a log rotated away) does not take
    the others with it: the next name is read itself and stands in for it."""
    for logical, node in nodes.items():
        if node.type == "file" and node.hardlink is not None:
            nodes[logical] = dataclasses.replace(node, hardlink=None)
    stand_in: dict[str, str] = {}  # a first name that could not be read -> the name read instead
    for logical, first in sorted(links.items()):
        first = stand_in.get(first, first)
        got = nodes.get(first)
        if got is None:
            try:
                nodes[logical] = read(logical)
            except (OSError, PhoenixError) as exc:
                incomplete.append({"path": logical, "error": _reason(exc)})
                continue
            stand_in[first] = logical
            continue
        nodes[logical] = dataclasses.replace(got, name=logical.rsplit("/", 1)[-1], hardlink=first)


def _names_since(repo: Repository, known: list[Snapshot]) -> set[str]:
    """Names of the snapshots committed since `known` was listed (another backup running at the
    same time), so that two backups of the same minute still get different names. Only the new
    snapshot objects are read."""
    seen = {s.id for s in known}
    names = set()
    for info in repo.backend.list("snapshots/"):
        sid = info.name.split("/")[-1]
        if sid not in seen:
            try:
                names.add(repo.load_snapshot(sid).name)
            except PhoenixError:
                continue  # unreadable: `verify` names it; it cannot be named by its name anyway
    return names


def _needed_blobs(nodes: dict[str, Node]) -> set[bytes]:
    """Every blob the snapshot's files and databases need, to confirm before the commit. A node
    whose extent list cannot be read back (format 6) stops the commit: its data blobs could not
    be confirmed, and a snapshot naming them would be committed on trust."""
    needed: set[bytes] = set()
    for logical, node in nodes.items():
        blobs = node.needed_blobs()
        if blobs is None:
            raise CorruptObject(
                f"the extent list of {shown(logical)} written by this backup cannot be read back, so its data "
                "could not be confirmed and no snapshot was written; run `phx verify`, then back up again"
            )
        needed.update(blobs)
    return needed


def _with_added(snap: Snapshot, added: int) -> Snapshot:
    import dataclasses

    return dataclasses.replace(snap, stats=dataclasses.replace(snap.stats, added=added))


def _symlink_node(entry: Entry) -> Node:
    st = entry.st
    return Node(
        name=entry.path.name,
        type="symlink",
        mode=stat.S_IMODE(st.st_mode),
        mtime_ns=st.st_mtime_ns,
        uid=st.st_uid,
        gid=st.st_gid,
        link_target=os.readlink(entry.path),
    )


def _write_trees(
    repo: Repository,
    layout: Layout,
    sel: Selection,
    nodes: dict[str, Node],
    previous: Snapshot | None = None,
    previous_nodes: dict[str, Node] | None = None,
    trees: set[bytes] | None = None,
    kinds: dict[str, str] | None = None,
    warnings: list[str] | None = None,
) -> bytes:
    """Write directory trees bottom-up; return the root tree's id (every tree id goes into
    `trees`, and every extent-list blob a tree names). A folder whose nodes equal those it had in
    the parent snapshot keeps the parent's tree (the same bytes, so the same id) without encoding
    it again, while the store holds it."""
    used = trees if trees is not None else set()
    before: dict[str, list[Node]] = {}
    for logical, node in (previous_nodes or {}).items():
        before.setdefault(_parent_of(logical), []).append(node)

    def save(logical: str, kids: list[Node]) -> bytes:
        for i, kid in enumerate(kids):
            if not (TIME_NS_MIN <= kid.mtime_ns <= TIME_NS_MAX and TIME_NS_MIN <= kid.ctime_ns <= TIME_NS_MAX):
                # A file dated past 2262 (`touch -d 2300-01-01`; ext4 keeps it): its time as is
                # made a tree that every later command refused, so the snapshot could not be read.
                kids[i] = kid = dataclasses.replace(
                    kid,
                    mtime_ns=min(max(kid.mtime_ns, TIME_NS_MIN), TIME_NS_MAX),
                    ctime_ns=min(max(kid.ctime_ns, TIME_NS_MIN), TIME_NS_MAX),
                )
                if warnings is not None:
                    path = f"{logical}/{kid.name}" if logical else kid.name
                    warnings.append(
                        f"{shown(path)} is dated outside the years 1677-2262 that a snapshot records; it is saved "
                        "with the nearest date it can hold, and a restore gives it that date"
                    )
            # The last guard of "no snapshot a restore refuses whole": each source checks its
            # paths (a configured `memory/../x.db` once reached here as a name `..`, and every
            # later command failed on the snapshot).
            bad = name_problem(kid.name)
            if bad is not None:
                path = f"{logical}/{kid.name}" if logical else kid.name
                fix = (
                    "write the configured path (`include`, `components`, `databases`, --config) without it"
                    if kid.name in ("", ".", "..")
                    else "rename it or leave it out (`exclude`)"
                )
                raise SourceError(
                    f"{shown(path)} {bad}: nothing was saved, so that no snapshot is written that a restore "
                    f"would refuse; {fix} and back up again"
                )
        tree_id = reuse(logical, kids)
        if tree_id is None or not repo.has_blob(tree_id):
            kids = repo.listed(kids)  # format 6: a database's list blobs written (or found stored) here
            try:
                tree_id = repo.save_tree(kids)[0]
            except TreeTooLarge as exc:
                raise SourceError(
                    f"the folder {shown(logical or '/')} {exc}: nothing was saved, so that no snapshot is written "
                    "that a restore would refuse; split it into subfolders or leave part of it out (`exclude`) and "
                    "back up again"
                ) from exc
        else:
            kids = before[logical]  # the parent's nodes, as the tree kept names them
        used.add(tree_id)
        # The list blobs its databases name (format 6) are confirmed present with the trees before
        # the commit: most are found already stored, in packs a prune elsewhere may have removed.
        used.update(b for kid in kids for b in kid.list_blobs())
        budget.nodes.setdefault(tree_id, kids)
        uses.setdefault(tree_id, []).append(logical)
        if kinds is not None and logical:
            # `kinds` (the summary): each folder but the root, new, changed or unmodified.
            old = (previous_nodes or {}).get(logical)
            kinds[logical] = "new" if old is None else "unmodified" if old.subtree == tree_id else "changed"
        return tree_id

    def reuse(logical: str, kids: list[Node]) -> bytes | None:
        old = before.get(logical)
        if old is not None and previous is not None and _same_nodes(kids, old):
            if logical == "":
                return previous.tree
            prev = (previous_nodes or {}).get(logical)
            if prev is not None and prev.subtree is not None:
                return prev.subtree
        return None

    # The snapshot's trees, held as a walk of it will load them, to check the walk's budget on them
    # before the snapshot is written: a backup must not store what every later command refuses.
    budget = Trees(repo)
    uses: dict[bytes, list[str]] = {}  # each tree -> the folders it stands for
    children: dict[str, list[Node]] = {}
    dirs: dict[str, Entry] = {k: e for k, e in sel.entries.items() if e.kind == "dir"}
    for parent in all_ancestors(nodes):
        if parent not in dirs:
            dirs[parent] = _dir_entry(layout, parent)
    for logical, node in nodes.items():
        children.setdefault(_parent_of(logical), []).append(node)
    for logical in sorted(dirs, key=lambda p: p.count("/"), reverse=True):
        entry = dirs[logical]
        subtree = save(logical, children.get(logical, []))
        st = entry.st
        node = Node(
            name=logical.rsplit("/", 1)[-1],
            type="dir",
            mode=stat.S_IMODE(st.st_mode),
            mtime_ns=st.st_mtime_ns,
            uid=st.st_uid,
            gid=st.st_gid,
            subtree=subtree,
        )
        children.setdefault(_parent_of(logical), []).append(node)
    root = save("", children.get("", []))
    try:
        budget.check(root)
    except CorruptObject as exc:
        raise SourceError(_over_budget(budget, uses)) from exc
    return root


def _over_budget(budget: Trees, uses: dict[bytes, list[str]]) -> str:
    """Why a backup's trees are more than a walk of them allows (repo/walker.py), with the folders
    to leave out: a snapshot that deep or that large, or naming the same folder over and over
    (copies made with hard links, `cp -al`, hold equal entries), is refused by restore, ls and
    verify as damaged or hostile."""
    folders = sum(len(v) for v in uses.values())
    paths = sum(len(budget.nodes[t]) * len(v) for t, v in uses.items())
    deepest = max((f for v in uses.values() for f in v), key=lambda f: f.count("/") if f else -1)
    end = "; nothing was saved, so that no snapshot is written that a restore would refuse"
    if deepest and deepest.count("/") + 1 > budget.max_depth:
        return (
            f"{shown(deepest)} lies more than {budget.max_depth:,} folders deep, deeper than a restore "
            f"reads{end}; leave that folder out (`exclude`) and back up again"
        )
    if paths > budget.max_paths:
        return (
            f"the backup names {paths:,} paths in {folders:,} folders, more than the {budget.max_paths:,} a "
            f"restore reads{end}; leave folders out (`exclude`) or back them up with another config"
        )
    where = max(uses.items(), key=lambda item: (len(item[1]) - 1) * len(budget.nodes[item[0]]))[1]
    return (
        f"{shown(where[0])} and {len(where) - 1:,} other folders hold the very same entries (copies made with "
        f"hard links, as `cp -al` makes, or of links only), so the backup names {paths:,} paths but stores the "
        f"entries of far fewer; a restore refuses a snapshot that repeats folders this much{end}; leave the "
        "copies out (`exclude`) and back up again"
    )


def _same_nodes(a: list[Node], b: list[Node]) -> bool:
    if len(a) != len(b):
        return False
    by_name = {n.name: n for n in b}
    return all((old := by_name.get(n.name)) is n or old == n for n in a)


def _parent_of(logical: str) -> str:
    return logical.rsplit("/", 1)[0] if "/" in logical else ""


def _dir_entry(layout: Layout, logical: str) -> Entry:
    if is_database_path(logical):
        # postgres/<name>/ and redis/<name>/ have no folder on disk: private, dated now.
        return Entry(logical, Path(logical), "dir", _dir_stat(0o40700, time.time_ns()))
    return Entry(logical, layout.to_real(logical), "dir", _stat_or_default(layout, logical))


def _stat_or_default(layout: Layout, logical: str) -> os.stat_result:
    try:
        return os.lstat(layout.to_real(logical))
    except OSError:
        return _dir_stat(0o40755, 0)


def _dir_stat(mode: int, when_ns: int) -> os.stat_result:
    """A stat of a folder that is not on disk; the nanosecond times must be given explicitly
    (a 10-field stat_result leaves st_mtime_ns None)."""
    sec = when_ns // 1_000_000_000
    return os.stat_result(
        (mode, 0, 0, 0, os.getuid(), os.getgid(), 0, sec, sec, sec, sec, sec, sec, when_ns, when_ns, when_ns)
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def snapshot_entries(
    repo: Repository,
    cfg: Config,
    envx: Environment,
    entries: list[Entry],
    *,
    absent: tuple[str, ...],
    scope: str,
    tags: tuple[str, ...],
    parent_scopes: tuple[str, ...],
    databases: tuple[str, ...] = (),
    keep_page_state: bool = False,
    when: datetime | None = None,
) -> BackupResult:
    """A snapshot of exactly `entries` (a folder entry stands for the folder's own mode and times,
    not for its content), recording `absent` as paths that did not exist: the safety snapshot a
    restore takes before it overwrites anything, so that restoring it undoes the restore.
    `databases` (logical paths: postgres/<name>, redis/<name>) are saved from their servers too.

    Runs in the caller's opened and locked repository. The newest snapshot of this host in one of
    `parent_scopes` is the parent, so unchanged files are not read again and database pages
    deduplicate against the regular backups; the cache's page hashes and the state file are left
    to the regular backups (`keep_page_state`: the base snapshots of `phx watch`, whose cache is
    its own, keep them). `when`: the snapshot's time (now when None; a compacted state of
    `phx watch`'s captures, ops/compact.py, is dated when the watch saw it).
    """
    started = time.time()
    when = when or parse_time(None)
    layout = Layout(cfg.workspace, envx.home)
    sel = Selection({e.logical: e for e in entries}, [], [])
    return _run(
        repo,
        cfg,
        envx,
        layout,
        sel,
        scope,
        tags,
        when,
        started,
        absent=absent,
        parent_scopes=parent_scopes,
        keep_page_state=keep_page_state,
        databases=databases,
    )
