"""`phx drill`: restore a snapshot into scratch space and prove that the restore is good.

A backup you cannot restore is worthless (seed 001), so the drill does what a restore does — the
restore op's own writer, below a temporary folder — and then checks the result from disk,
independently of the checks the writer made while writing:

- every file: present, of the recorded size and mode, and its SHA-256 equal to the snapshot's;
- every symlink: pointing where it pointed;
- every database, through the checker of its engine (`ENGINES`): for SQLite `PRAGMA
  integrity_check`, FTS5 `integrity-check` on every FTS5 table, and the rows of every table
  against the counts the snapshot recorded. Databases are compared logically, by rows, never as
  bytes.

The scratch space is removed afterwards, whatever happened. A report goes to
`~/.argentos/backup/drills/` in Markdown and JSON; `phx doctor` reads the newest one.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import socket
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from phoenix_backup import jsontext
from phoenix_backup.config import Config
from phoenix_backup.dirs import make_dirs, remove_tree, write_private
from phoenix_backup.errors import CorruptObject, ExitStatus, NoSpace, PhoenixError, shown
from phoenix_backup.notify import secrets_of
from phoenix_backup.ops.context import Environment, find_snapshot, open_repository, require_identity
from phoenix_backup.ops.watch import remove_stale_cache_folders, temp_cache_prefix
from phoenix_backup.redaction import without_secrets, without_secrets_in
from phoenix_backup.repo import checks
from phoenix_backup.repo.checker import VerifyError
from phoenix_backup.repo.crypto import Sha256
from phoenix_backup.repo.pack import pack_name
from phoenix_backup.repo.reader import damaged_pack
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.snapshot import NOT_CHECKED, DatabaseInfo, Snapshot
from phoenix_backup.repo.tree import Node
from phoenix_backup.repo.walker import walk_tree
from phoenix_backup.sinks import sqlite as sqlite_sink
from phoenix_backup.sinks import sqlite_folder
from phoenix_backup.sinks.files import FileWriter  # the restore's writer: the drill proves that code
from phoenix_backup.sources.layout import Layout
from phoenix_backup.sources.sqlite import count_rows, sqlite_uri
from phoenix_backup.sql import quote, sqlite_error_text
from phoenix_backup.state import IntegrityCheck, record_integrity_checks, state_path

# Scratch space must hold the whole snapshot, plus room for SQLite's journals while checking.
SCRATCH_MARGIN = 16 * 1024 * 1024
# A restored mtime may be rounded by the scratch file system; a second is generous for every one.
MTIME_TOLERANCE_NS = 1_000_000_000


def drills_dir(home: Path) -> Path:
    """Where drill reports go: `~/.argentos/backup/drills/`, beside the state file."""
    return home / ".argentos" / "backup" / "drills"


# One thing the drill could not prove, in verify's shape (DESIGN §2: both give `{object, snapshot,
# path, message}`). `object` names the repository object at fault when the damage was traced to
# one (a pack), else what was checked (`file`, `database`, `table:NAME`, `fts5:NAME`, `tree`).
DrillError = VerifyError


@dataclass
class DatabaseReport:
    """What the drill found in one restored database."""

    path: str
    engine: str
    integrity: str = NOT_CHECKED
    fts5: dict[str, str] = field(default_factory=dict)  # table -> "ok" or the problem
    tables: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)  # (recorded, restored)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (object, message)
    notes: list[str] = field(default_factory=list)
    # Checks SQLite could not run (a full scratch disk, an interrupt): "<check> could not run: <cause>;
    # <fix>". They say nothing of the bytes, so they are neither problems nor passes.
    unchecked: list[str] = field(default_factory=list)
    fts5_ran: bool = False  # the FTS5 checks were run (none may exist), not skipped by an error before them

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "engine": self.engine,
            "ok": self.ok,
            "integrity": self.integrity,
            "fts5": self.fts5,
            "tables": {t: {"recorded": e, "restored": a} for t, (e, a) in sorted(self.tables.items())},
            "problems": [{"object": o, "message": m} for o, m in self.problems],
            "notes": self.notes,
            "unchecked": self.unchecked,
        }


@dataclass
class DrillContext:
    """What an engine's checker may use: the configuration (servers to restore into), the
    environment, the snapshot and the scratch folder (for scratch databases or dumps)."""

    cfg: Config
    envx: Environment
    snapshot: Snapshot
    scratch: Path
    repo: Repository | None = None
    nodes: list[tuple[str, Node]] = field(default_factory=list)


class DatabaseDrill(Protocol):
    """How a drill proves one database engine's restored data. `restored` is where the snapshot's
    data for `info.path` landed below the scratch folder (a SQLite file, a PostgreSQL dump...)."""

    def check(self, ctx: DrillContext, info: DatabaseInfo | None, restored: Path) -> DatabaseReport: ...


class SqliteDrill:
    """`PRAGMA integrity_check`, FTS5 `integrity-check`, and row counts against the snapshot."""

    def check(self, ctx: DrillContext, info: DatabaseInfo | None, restored: Path) -> DatabaseReport:
        logical = info.path if info else restored.relative_to(ctx.scratch).as_posix()
        report = DatabaseReport(logical, "sqlite")
        try:
            # Read-write: FTS5's integrity-check is an INSERT (it changes nothing). The file is the
            # drill's own scratch copy and its bytes were already checked, so it is made writable
            # (restored 0444, or in a 0500 folder, SQLite would refuse the INSERT).
            _writable(restored)
            con = sqlite3.connect(sqlite_uri(restored, "mode=rw"), uri=True, timeout=30)
        except sqlite3.Error as exc:
            report.integrity = str(exc)
            report.problems.append(("database", f"cannot be opened: {exc}"))
            return report
        try:
            self._integrity(con, report)
            tables, virtual, unreadable = count_rows(con)
            for name in unreadable:
                report.problems.append((f"table:{name}", f"table {name} cannot be read"))
            self._fts5(con, virtual, report)
            self._rows(info, tables, virtual, report)
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            report.problems.append(("database", f"cannot be read: {sqlite_error_text(exc)}"))
        finally:
            con.close()
        return report

    @staticmethod
    def _integrity(con: sqlite3.Connection, report: DatabaseReport) -> None:
        try:
            rows = [str(r[0]) for r in con.execute("PRAGMA integrity_check")]
            report.integrity = "ok" if rows == ["ok"] else "; ".join(rows[:5])
        except (sqlite3.Error, UnicodeDecodeError) as exc:  # a damaged schema's names need not be UTF-8
            report.integrity = f"integrity_check failed: {sqlite_error_text(exc)}"
        if checks.could_not_run(report.integrity):
            report.unchecked.append(_could_not_run("PRAGMA integrity_check", report.integrity))
        elif report.integrity != "ok":
            report.problems.append(("database", f"fails PRAGMA integrity_check: {report.integrity}"))

    @staticmethod
    def _fts5(con: sqlite3.Connection, virtual: dict[str, str], report: DatabaseReport) -> None:
        for name, module in sorted(virtual.items()):
            if module != "fts5":
                report.notes.append(
                    f"virtual table {name} ({module}) is not queried (its module may be missing); "
                    "its shadow tables are counted"
                )
                continue
            quoted = quote(name)
            try:
                # rank 1: also compare the index with an external content table, which is where a
                # full-text index silently goes stale.
                con.execute(f"INSERT INTO {quoted}({quoted}, rank) VALUES('integrity-check', 1)")
                report.fts5[name] = "ok"
            except sqlite3.OperationalError as exc:
                if "no such module" in str(exc) or "no such tokenizer" in str(exc):
                    report.fts5[name] = "not checked"
                    report.notes.append(f"FTS5 table {name} not checked: {exc}")
                elif checks.could_not_run(str(exc)):
                    report.fts5[name] = str(exc)
                    report.unchecked.append(_could_not_run(f"FTS5 integrity-check of {name}", str(exc)))
                else:
                    report.fts5[name] = str(exc)
                    report.problems.append((f"fts5:{name}", f"FTS5 table {name} fails integrity-check: {exc}"))
            except sqlite3.DatabaseError as exc:
                report.fts5[name] = str(exc)
                report.problems.append((f"fts5:{name}", f"FTS5 table {name} fails integrity-check: {exc}"))
        con.rollback()
        report.fts5_ran = True

    @staticmethod
    def _rows(
        info: DatabaseInfo | None, tables: dict[str, int], virtual: dict[str, str], report: DatabaseReport
    ) -> None:
        if info is None:
            report.notes.append("the snapshot records no row counts for this database; rows not compared")
            report.tables = {t: (None, n) for t, n in tables.items()}
            return
        for name in sorted(set(info.tables) | set(tables)):
            expected, actual = info.tables.get(name), tables.get(name)
            report.tables[name] = (expected, actual)
            if expected is None:
                report.problems.append((f"table:{name}", f"table {name} is not in the snapshot's manifest"))
            elif actual is None:
                report.problems.append(
                    (f"table:{name}", f"table {name} is missing (the snapshot recorded {expected} rows)")
                )
            elif actual != expected:
                report.problems.append(
                    (f"table:{name}", f"table {name} has {actual} rows, the snapshot recorded {expected}")
                )
        for name in sorted(set(info.virtual_tables) - set(virtual)):
            report.problems.append((f"table:{name}", f"virtual table {name} is missing"))


def _writable(restored: Path) -> None:
    """Give the user write permission on the drill's own scratch copy and on its folder (a symlink
    planted in their place is not followed). What cannot be changed is left: the check then says
    it could not run."""
    for path, flags in ((restored.parent, os.O_DIRECTORY), (restored, 0)):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | flags)
        except OSError:
            continue
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
                os.fchmod(fd, stat.S_IMODE(mode) | stat.S_IRWXU)
        except OSError:
            pass
        finally:
            os.close(fd)


def _could_not_run(check: str, message: str) -> str:
    """What to tell of a check SQLite could not run in scratch space: its cause and the fix."""
    cause = message.removeprefix("integrity_check failed: ")
    if cause in ("database or disk is full", "disk I/O error"):
        fix = "free space where the drill restores, or pass --scratch DIR on another disk, and run it again"
    else:
        fix = "run the drill again, with --scratch DIR on a disk this user can write"
    return f"{check} could not run: {cause}; {fix}"


class ServerDrill:
    """PostgreSQL: the dump restored into a scratch database on the configured server, its row
    counts compared with the manifest, the scratch database dropped. Agent-scoped rows and Redis:
    every saved record parsed and counted (a drill never writes into a shared server)."""

    def __init__(self, engine: str) -> None:
        self.engine = engine

    def check(self, ctx: DrillContext, info: DatabaseInfo | None, restored: Path) -> DatabaseReport:
        from phoenix_backup.sinks import databases
        from phoenix_backup.sinks.streams import group_database_nodes

        assert info is not None and ctx.repo is not None
        report = DatabaseReport(info.path, self.engine)
        files = group_database_nodes(ctx.nodes).get(info.path)
        if not files:
            report.problems.append(("database", "is listed in the snapshot's databases but absent from its tree"))
            return report
        scratch = f"phx_drill_{secrets.token_hex(4)}"
        try:
            outcome = databases.drill_database(ctx.repo, ctx.cfg, ctx.envx.env, info.path, files, scratch)
        except PhoenixError as exc:
            report.problems.append(("database", str(exc)))
            return report
        report.integrity = "ok" if outcome.ok else (outcome.error or "failed")
        for table in sorted(set(outcome.expected) | set(outcome.found)):
            report.tables[table] = (outcome.expected.get(table), outcome.found.get(table))
        if not outcome.ok:
            report.problems.append(("database", outcome.error or "the restored row counts differ from the manifest"))
        report.notes += outcome.warnings
        return report


# The checker of each database engine.
ENGINES: dict[str, DatabaseDrill] = {
    "sqlite": SqliteDrill(),
    "postgresql": ServerDrill("postgresql"),
    "redis": ServerDrill("redis"),
}


@dataclass
class DrillResult:
    snapshot: str
    name: str
    time: str
    host: str
    target: str
    started: str
    scope: str = "full"
    checked: dict[str, int] = field(default_factory=dict)
    errors: list[DrillError] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    databases: list[DatabaseReport] = field(default_factory=list)
    duration: float = 0.0
    report_markdown: str | None = None
    report_json: str | None = None
    # What the snapshot itself lacks ({path, error}): a partial backup's parts that were not saved.
    lacking: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def unchecked(self) -> list[str]:
        """The checks that could not run, each "<path>: <check> could not run: <cause>; <fix>"."""
        return [f"{d.path}: {u}" for d in self.databases for u in d.unchecked]

    @property
    def exit_status(self) -> ExitStatus:
        """1 when what the snapshot holds failed a check; 3 when it all passed but the snapshot is
        partial (it lacks what its backup could not save), as that backup exited, or a check could
        not run (which proves nothing either way)."""
        if not self.ok:
            return ExitStatus.FAILURE
        return ExitStatus.PARTIAL if self.lacking or self.unchecked else ExitStatus.OK

    def error(self, obj: str, path: str | None, message: str) -> None:
        self.errors.append(DrillError(obj, self.snapshot, path, message))

    def count(self, what: str, n: int = 1) -> None:
        self.checked[what] = self.checked.get(what, 0) + n

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "partial": bool(self.lacking),
            "lacking": self.lacking,
            "unchecked": self.unchecked,
            "checked": self.checked,
            "errors": [e.to_json() for e in self.errors],
            "notices": self.notices,
            "snapshot": self.snapshot,
            "name": self.name,
            "time": self.time,
            "host": self.host,
            "scope": self.scope,
            "target": self.target,
            "started": self.started,
            "duration": round(self.duration, 3),
            "databases": [d.to_json() for d in self.databases],
            "report": {"markdown": self.report_markdown, "json": self.report_json},
        }


def drill(
    cfg: Config,
    envx: Environment,
    *,
    ref: str = "latest",
    target: str | None = None,
    scratch: Path | None = None,
    reports: Path | None = None,
) -> DrillResult:
    """Restore `ref` below a temporary folder in `scratch` (the system's temporary folder by
    default), prove it, remove it, and write the report to `reports` (`drills_dir` by default)."""
    started = datetime.now(UTC)
    clock = time.monotonic()
    repo = open_repository(cfg, envx, target=target)
    require_identity(repo)
    with repo.lock(exclusive=False, command="drill"):
        repo.load_index()
        snap = find_snapshot(cfg, envx, repo, ref, target)
        result = DrillResult(
            snapshot=snap.id,
            name=snap.name,
            time=snap.time,
            host=snap.host,
            target=target or envx.target or (cfg.targets.enabled_names() or ["local"])[0],
            started=started.isoformat(timespec="seconds"),
            scope=snap.scope,
        )
        result.lacking = [{"path": str(i.get("path")), "error": str(i.get("error"))} for i in snap.incomplete]
        nodes = _walk(repo, snap, result)
        if not any(n.type in ("file", "sqlite", "symlink") for _p, n in nodes):
            # Nothing to restore proves nothing: such a drill must not count as a passed one.
            result.error("snapshot", None, "the snapshot holds no files or databases, so a restore cannot be proven")
        base = scratch if scratch is not None else Path(tempfile.gettempdir())
        remove_stale_cache_folders(base)  # a killed drill's scratch folder: a plain copy of a snapshot
        _check_space(base, snap)
        folder = Path(tempfile.mkdtemp(prefix=temp_cache_prefix("drill"), dir=base))
        envx.notice(f"drill: restoring {snap.name} ({snap.id[:8]}) into {folder}")
        try:
            written = _restore(repo, cfg, envx, folder, nodes, result)
            _check_files(folder, nodes, written, result)
            envx.progress.phase("checking databases")
            _check_databases(DrillContext(cfg, envx, snap, folder, repo, nodes), nodes, written, result)
            if _private(folder):
                _record_in_repository(repo, snap, nodes, written, result)
        finally:
            remove_tree(folder)
    _record_checks(result, snap, envx)
    result.duration = time.monotonic() - clock
    _write_reports(result, reports if reports is not None else drills_dir(envx.home), envx, secrets_of(cfg, envx.env))
    return result


def _record_checks(result: DrillResult, snap: Snapshot, envx: Environment) -> None:
    """Each SQLite database's failed integrity_check, into the state file's integrity cadence, so
    that the next backup checks in full and alerts (docs/integrity-cadence.md). A pass is not
    recorded: the snapshot does not say it, so retention cannot keep the drilled copy for it, and
    counted it would postpone the backups' checks, after which no snapshot records a pass."""
    if snap.host != socket.gethostname():
        return  # another machine's databases: their cadence is that machine's
    checked_at = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
    failed = {
        d.path: IntegrityCheck(snap.started or snap.time, d.integrity, snap.id, "drill", checked_at)
        for d in result.databases
        if d.engine == "sqlite" and d.integrity not in ("ok", NOT_CHECKED) and not checks.could_not_run(d.integrity)
    }
    record_integrity_checks(failed, state_path(envx.home))


def _private(folder: Path) -> bool:
    """Whether no one but this user and root can change the scratch folder or any above it. The
    drill opens its copies by path: in `--scratch` space another user can change (`sudo phx drill
    --scratch ~alice/tmp`), that user can put a folder of their own in its place, so its checks
    are its report's but no verdict on the snapshot's bytes (`_record_in_repository`)."""
    try:
        fd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return sqlite_folder.private(fd)
    finally:
        os.close(fd)


def _record_in_repository(
    repo: Repository, snap: Snapshot, nodes: list[tuple[str, Node]], written: set[str], result: DrillResult
) -> None:
    """Each SQLite copy's checks, pass or fail, as a record in the repository (repo/checks.py):
    its bytes were proven against the snapshot's SHA-256 as they were written, so a later restore
    of the same bytes, on any machine, need not run `integrity_check` again. A pass needs every
    check the drill names to have run and passed: `integrity_check`, every FTS5 table's
    `integrity-check` (none skipped by an error before them, none "not checked" for want of its
    tokenizer), and nothing else found wrong; short of that, no pass is recorded."""
    by_path = {d.path: d for d in result.databases if d.engine == "sqlite" and d.integrity != NOT_CHECKED}
    records = []
    for logical, node in nodes:
        report = by_path.get(logical)
        if node.type != "sqlite" or node.sha256 is None or logical not in written or report is None:
            continue
        if any(checks.could_not_run(m) for m in [report.integrity, *report.fts5.values()]):
            continue  # a check that could not run says nothing of the bytes
        problems = [] if report.integrity == "ok" else [report.integrity]
        problems += [f"FTS5 {t}: {m}" for t, m in sorted(report.fts5.items()) if m not in ("ok", NOT_CHECKED)]
        outcome = "; ".join(problems) or "ok"
        ran_all = report.fts5_ran and NOT_CHECKED not in report.fts5.values() and not report.unchecked
        if outcome == "ok" and (not ran_all or report.problems):
            continue
        ran = (checks.INTEGRITY_CHECK, checks.FTS5_CHECK) if ran_all else (checks.INTEGRITY_CHECK,)
        records.append(
            checks.record(node.sha256, node.size, outcome, "drill", snap.id, logical, sqlite3.sqlite_version, ran)
        )
    checks.CheckBook(repo).add(records)


def _walk(repo: Repository, snap: Snapshot, result: DrillResult) -> list[tuple[str, Node]]:
    """(logical path, node), parents first; a tree that cannot be read is an error for its folder."""

    def unreadable(tree_id: bytes, prefix: str, exc: PhoenixError) -> None:
        loc = repo.index.get(tree_id)
        obj = pack_name(loc.pack_id) if loc else "tree"
        result.error(obj, prefix or "/", f"the folder's tree cannot be read, nothing below it restored: {exc}")

    return list(walk_tree(repo, snap.tree, on_error=unreadable))


def _check_space(base: Path, snap: Snapshot) -> None:
    try:
        free = shutil.disk_usage(base).free
    except OSError as exc:
        raise NoSpace(f"cannot use {base} as scratch space ({exc.strerror}); pass --scratch DIR") from exc
    need = snap.stats.size + SCRATCH_MARGIN
    if free < need:
        raise NoSpace(
            f"not enough free space in {base} for the drill ({need // 2**20} MiB needed, {free // 2**20} MiB free); "
            "pass --scratch DIR on a larger disk"
        )


def _restore(
    repo: Repository, cfg: Config, envx: Environment, folder: Path, nodes: list[tuple[str, Node]], result: DrillResult
) -> set[str]:
    """Write every node below `folder` with the restore op's writer; return what was written.
    A node that fails is an error naming its path (and the damaged pack), and the rest goes on."""
    # Scratch space need not survive a power cut: the folders it creates are not made durable.
    writer = FileWriter(repo, Layout(cfg.workspace, envx.home), folder, envx.progress, durable=False)
    written: set[str] = set()

    def attempt(logical: str, node: Node, action: Callable[[], object]) -> None:
        try:
            action()
            written.add(logical)
        except CorruptObject as exc:
            result.error(damaged_pack(repo, node) or "file", logical, f"cannot be restored: {exc}")
        except PhoenixError as exc:
            kind = "database" if node.type == "sqlite" else "file"
            result.error(kind, logical, f"cannot be restored: {exc}")
        except OSError as exc:
            result.error("file", logical, f"cannot be restored: {exc.strerror or exc}")

    try:
        for logical, node in nodes:
            if node.type == "dir":
                attempt(logical, node, functools.partial(writer.directory, logical, node))
        workers = max(2, (os.cpu_count() or 2) + 1)
        content = [(lg, n) for lg, n in nodes if n.type in ("file", "sqlite")]
        envx.progress.phase("restoring into scratch space", files=len(content), size=sum(n.size for _l, n in content))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="phx-drill") as pool:
            jobs = [pool.submit(attempt, lg, n, _write(writer, lg, n)) for lg, n in content]
            for job in jobs:
                job.result()
                envx.progress.advance(files=1)  # its bytes were counted as written
        for logical, node in nodes:
            if node.type == "symlink":
                attempt(logical, node, functools.partial(writer.symlink, logical, node))
        try:
            writer.finish_dirs()
        except (PhoenixError, OSError) as exc:
            result.error("file", None, f"folder modes and times could not be restored: {exc}")
    finally:
        writer.close()
    return written


def _write(writer: FileWriter, logical: str, node: Node) -> Callable[[], object]:
    """What writes a file or a database below the drill's folder, as a restore writes them."""
    if node.type == "sqlite":
        # Written unchecked: the drill always runs integrity_check itself, on what landed on disk,
        # and records the outcome (a corrupt copy is then its finding, not a failed write).
        return functools.partial(sqlite_sink.restore_database, writer, logical, node, in_place=False, check_copy=False)
    return functools.partial(writer.content, logical, node)


def _check_files(folder: Path, nodes: list[tuple[str, Node]], written: set[str], result: DrillResult) -> None:
    """Re-read what landed on disk: the writer checked the bytes it wrote, the drill checks the
    bytes that are there."""
    for logical, node in nodes:
        if logical not in written:
            continue
        path = folder.joinpath(*logical.split("/"))
        try:
            st = path.lstat()
        except OSError as exc:
            result.error("file", logical, f"is missing after the restore ({exc.strerror})")
            continue
        if node.type == "dir":
            result.count("dirs")
            if not stat.S_ISDIR(st.st_mode):
                result.error("file", logical, "was restored but is not a folder")
            elif stat.S_IMODE(st.st_mode) != node.mode:
                result.error("file", logical, f"folder mode is {stat.S_IMODE(st.st_mode):o}, recorded {node.mode:o}")
            continue
        if node.type == "symlink":
            result.count("symlinks")
            if not stat.S_ISLNK(st.st_mode) or os.readlink(path) != node.link_target:
                result.error("file", logical, f"is not a symlink to {node.link_target!r} after the restore")
            continue
        result.count("databases" if node.type == "sqlite" else "files")
        problems = []
        if not stat.S_ISREG(st.st_mode):
            problems.append("is not a regular file")
        else:
            if st.st_size != node.size:
                problems.append(f"has {st.st_size} bytes, the snapshot recorded {node.size}")
            digest = _sha256(path)
            if digest != node.sha256:
                problems.append(f"SHA-256 is {digest}, the snapshot recorded {node.sha256}")
            if stat.S_IMODE(st.st_mode) != node.mode:
                problems.append(f"mode is {stat.S_IMODE(st.st_mode):o}, recorded {node.mode:o}")
            if abs(st.st_mtime_ns - node.mtime_ns) > MTIME_TOLERANCE_NS:
                problems.append("modification time differs from the recorded one")
            result.count("bytes", st.st_size)
        for problem in problems:
            result.error("database" if node.type == "sqlite" else "file", logical, problem)


def _sha256(path: Path) -> str:
    h = Sha256()
    try:
        f = open(path, "rb")  # noqa: SIM115 - reopened below after a chmod
    except PermissionError:
        # A file restored with its recorded mode (say 0400, or 0000) is still ours to read.
        os.chmod(path, stat.S_IMODE(path.stat().st_mode) | stat.S_IRUSR)
        f = open(path, "rb")  # noqa: SIM115
    with f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _check_databases(ctx: DrillContext, nodes: list[tuple[str, Node]], written: set[str], result: DrillResult) -> None:
    infos = {d.path: d for d in ctx.snapshot.databases}
    sqlite_nodes = {lg for lg, n in nodes if n.type == "sqlite"}
    for listed in ctx.snapshot.databases:
        if listed.engine == "sqlite" and listed.path not in sqlite_nodes:
            result.error("database", listed.path, "is listed in the snapshot's databases but absent from its tree")
    for logical in sorted(sqlite_nodes | {d.path for d in ctx.snapshot.databases if d.engine != "sqlite"}):
        info = infos.get(logical)
        engine = info.engine if info else "sqlite"
        checker = ENGINES.get(engine)
        if checker is None:
            result.notices.append(f"{logical}: this Phoenix has no drill for {engine} databases; not checked")
            continue
        if engine == "sqlite" and logical not in written:
            continue  # already an error: it could not be restored
        report = checker.check(ctx, info, ctx.scratch.joinpath(*logical.split("/")))
        result.databases.append(report)
        result.count("tables", sum(1 for _t, (_e, a) in report.tables.items() if a is not None))
        result.count("fts5", len(report.fts5))
        for obj, message in report.problems:
            result.error(obj, logical, message)
        result.notices += [f"{logical}: {note}" for note in report.notes]


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def _write_reports(result: DrillResult, folder: Path, envx: Environment, known: list[str]) -> None:
    """The report as JSON and Markdown, plain files `phx status` and a reader `cat`: without the
    secrets the run knows (`known`), as the state file's errors are. A database's error (a driver's
    text quoting its DSN) or a note would otherwise carry one there; in the Markdown a secret is
    also looked for as `_md` escapes it."""
    stamp = datetime.fromisoformat(result.started).strftime("%Y%m%dT%H%M%SZ")
    base = folder / f"{stamp}-{result.name}"
    md, js = base.with_suffix(".md"), base.with_suffix(".json")
    result.report_markdown, result.report_json = str(md), str(js)
    try:
        make_dirs(folder)
        doc = without_secrets_in(result.to_json(), known)
        write_private(js, (jsontext.dumps(doc, indent=2) + "\n").encode())
        write_private(md, without_secrets(markdown(result), [*known, *map(_md, known)]).encode())
    except OSError as exc:
        result.report_markdown = result.report_json = None
        result.notices.append(f"the drill report could not be written to {folder}: {exc.strerror or exc}")
        envx.notice(f"warning: the drill report could not be written to {folder}: {exc.strerror or exc}")


def _md(text: object) -> str:
    """A name or message in the report, one table cell or line: its controls, newline and bidi
    overrides shown escaped (`shown`: a planted snapshot's host or a file name would otherwise
    drive the terminal that `cat`s the report), and the Markdown that would act backslash-escaped:
    `|` (a cell), `\\` (which made `\\|` a cell again: a name `x\\| 9 |` showed a table's rows as
    matching, the real ones pushed out of the row), `` ` ``, `[`, `]`, `<`, `>` (a link, an image
    fetched from a name's URL when the report is rendered, raw HTML)."""
    return "".join(f"\\{c}" if c in _MARKDOWN else c for c in shown(text))


_MARKDOWN = frozenset("\\|`[]<>")


def markdown(r: DrillResult) -> str:
    files, dbs = r.checked.get("files", 0), r.checked.get("databases", 0)
    lines = [
        f"# Phoenix restore drill: {'PASSED' if r.ok else 'FAILED'}",
        "",
        "| | |",
        "|---|---|",
        f"| snapshot | {_md(r.name)} (`{r.snapshot}`) |",
        f"| taken | {_md(r.time)} on {_md(r.host)} |",
        f"| target | {_md(r.target)} |",
        f"| drill started | {r.started} |",
        f"| duration | {r.duration:.1f} s |",
        f"| restored and checked | {files} files, {r.checked.get('symlinks', 0)} symlinks, "
        f"{r.checked.get('dirs', 0)} folders, {dbs} databases, {r.checked.get('bytes', 0)} bytes |",
        f"| errors | {len(r.errors)} |",
        f"| partial snapshot | {'yes: it lacks ' + str(len(r.lacking)) + ' part(s), below' if r.lacking else 'no'} |",
        "",
        "## Files",
        "",
        "Every file was restored into scratch space by the restore code, then read back from disk: its size, "
        f"mode and SHA-256 compared with the snapshot. {files} files and {dbs} database copies checked; "
        "problems are listed under Errors.",
        "",
        "## Databases",
        "",
    ]
    if r.databases:
        lines += ["| database | engine | integrity | FTS5 | tables | rows | result |", "|---|---|---|---|---|---|---|"]
        for d in r.databases:
            fts = ", ".join(f"{t} {s}" for t, s in sorted(d.fts5.items())) or "-"
            rows = sum(a for _e, a in d.tables.values() if a is not None)
            lines.append(
                f"| {_md(d.path)} | {d.engine} | {_md(d.integrity)} | {_md(fts)} | {len(d.tables)} | {rows} | "
                f"{'ok' if d.ok else 'FAILED'} |"
            )
        for d in r.databases:
            lines += ["", f"### {_md(d.path)}", "", "| table | rows recorded | rows restored |", "|---|---|---|"]
            for table, (expected, actual) in sorted(d.tables.items()):
                mark = "" if expected == actual else " **differs**"
                lines.append(
                    f"| {_md(table)} | {'-' if expected is None else expected} | "
                    f"{'-' if actual is None else actual}{mark} |"
                )
    else:
        lines.append("No database was checked.")
    lines += ["", "## Errors", ""]
    lines += [f"- {_md(e.path or '-')} ({_md(e.object)}): {_md(e.message)}" for e in r.errors] or ["None."]
    if r.lacking:
        lines += [
            "",
            "## Not in the snapshot",
            "",
            "Its backup could not save these parts, so no drill can prove them:",
            "",
        ]
        lines += [f"- {_md(i['path'])}: {_md(i['error'])}" for i in r.lacking]
    if r.unchecked:
        lines += ["", "## Checks that could not run", "", "They prove nothing either way:", ""]
        lines += [f"- {_md(u)}" for u in r.unchecked]
    if r.notices:
        lines += ["", "## Notices", ""]
        lines += [f"- {_md(n)}" for n in r.notices]
    return "\n".join(lines) + "\n"


def latest_reports(folder: Path) -> list[dict[str, Any]]:
    """The drill reports in `folder`, newest first (their names start with the UTC start time)."""
    out = []
    try:
        names = sorted((p for p in folder.glob("*.json") if not p.name.startswith(".")), reverse=True)
    except OSError:
        return []
    for path in names:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(doc, dict) and "ok" in doc and "started" in doc:
            doc["_path"] = str(path)
            out.append(doc)
    return out
