"""Point-in-time restore from the capture segments of `phx watch` (docs/continuous.md):
`phx restore --at TIME`, `phx list --timeline` and `--at`, `phx drill --at`.

A database at time T is rebuilt from its base snapshot's copy (checked against its SHA-256 as it
is written), then the pages of every commit the watch saw up to T, in order (each segment is
authenticated as a whole when it is opened), then cut to the size of the last of them. The result
passes `integrity_check` and FTS5's own check before it replaces anything.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from phoenix_backup.config import Config
from phoenix_backup.dirs import fsync_dir
from phoenix_backup.errors import (
    ConfirmationRequired,
    CorruptObject,
    ExitStatus,
    PhoenixError,
    RestoreError,
    UsageError,
)
from phoenix_backup.ops import safety
from phoenix_backup.ops.context import (
    Environment,
    captures_cache,
    open_repository,
    parse_time,
    refuse_plain_copies_in_repository,
    require_identity,
    scratch_dir,
)
from phoenix_backup.ops.watch_files import FILES_SCOPE
from phoenix_backup.repo import captures
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.snapshot import Snapshot
from phoenix_backup.repo.walker import walk_tree
from phoenix_backup.sinks import sqlite_live
from phoenix_backup.sinks.files import write_content
from phoenix_backup.sources.layout import Layout


def files_as_of(snap: Snapshot) -> int | None:
    """When a snapshot of the files (scope `watch-files`) had read every file (µs), or None."""
    try:
        begun = datetime.fromisoformat(snap.started or snap.time)
    except ValueError:
        return None
    return captures.to_us(begun) + int(snap.stats.duration * 1_000_000)


def file_snapshots(snapshots: list[Snapshot]) -> list[tuple[int, Snapshot]]:
    """The complete snapshots of the files `phx watch` took, by the time they hold, oldest first."""
    out = []
    for snap in snapshots:
        when = files_as_of(snap) if snap.scope == FILES_SCOPE and not snap.incomplete else None
        if when is not None:
            out.append((when, snap))
    return sorted(out, key=lambda x: x[0])


def _no_files_note(snapshots: list[Snapshot], at: int) -> str:
    """Why no files are restored at `at` (no snapshot of the files was complete by then: the time
    lies before the first one a watch took), and where the files of that time are."""
    when = captures.asked(at)
    older = [
        (as_of, snap)
        for snap in snapshots
        if snap.scope == "full" and not snap.incomplete and (as_of := files_as_of(snap)) is not None and as_of <= at
    ]
    where = "no backup before it holds them either"
    if older:
        _as_of, snap = max(older, key=lambda x: x[0])
        where = (
            f"the newest backup before it, {snap.id[:8]} of {snap.time}, holds them: "
            f"`phx restore --backup {snap.id[:8]}` restores them"
        )
    return (
        f"no snapshot of the files by `phx watch` was complete by {when}, so no file was restored "
        f"(only the databases); {where}"
    )


def parse_at(text: str) -> int:
    """`--at TIME` (RFC 3339 with a UTC offset, fractions of a second allowed) in µs."""
    return captures.to_us(parse_time(text, "--at"))


def ranges_text(tl: captures.Timeline, path: str | None = None) -> str:
    paths = [path] if path else tl.paths()
    out = []
    for p in paths:
        spans = ", ".join(captures.span(r.start, r.end) for r in tl.for_path(p))
        out.append(f"{p}: {spans or 'none'}")
    return "; ".join(out) or "none (no `phx watch` has written to this repository)"


@dataclass
class TimelineReport:
    databases: dict[str, list[dict[str, object]]]  # path -> ranges and gaps, in time order
    segments: int
    bytes: int
    problems: dict[str, str]
    broken: list[str]
    files: list[dict[str, str]] = field(default_factory=list)  # snapshots of the files: id, as of

    def to_json(self) -> dict[str, object]:
        return {
            "databases": self.databases,
            "files": self.files,
            "segments": self.segments,
            "bytes": self.bytes,
            "problems": self.problems,
            "brokenChains": self.broken,
        }


def timeline_report(tl: captures.Timeline) -> TimelineReport:
    dbs: dict[str, list[dict[str, object]]] = {}
    for path in tl.paths():
        rows: list[dict[str, object]] = []
        prev_end: int | None = None
        for r in tl.for_path(path):
            if prev_end is not None and r.start > prev_end:
                rows.append(
                    {
                        "kind": "gap",
                        "from": captures.describe(prev_end, exact=True),
                        "to": captures.describe(r.start, exact=True),
                    }
                )
            row: dict[str, object] = {
                "kind": "covered" if r.points is None else "thinned",
                "from": captures.describe(r.start, exact=True),
                "to": captures.describe(r.end, exact=True),
                "chain": r.chain,
                "seconds": round((r.end - r.start) / 1e6, 1),
            }
            if r.points is not None:
                row["points"] = [captures.describe(t, exact=True) for t in r.points]
            rows.append(row)
            prev_end = r.end if prev_end is None else max(prev_end, r.end)
        dbs[path] = rows
    size = sum(s.stored_size for s in tl.segments.values())
    return TimelineReport(dbs, len(tl.segments), size, tl.problems, tl.broken)


def timeline(cfg: Config, envx: Environment) -> TimelineReport:
    repo = open_repository(cfg, envx)
    try:
        require_identity(repo, "the capture segments")
        report = timeline_report(captures.timeline(repo, captures_cache(repo, envx)))
        report.files = [
            {"snapshot": snap.id, "asOf": captures.describe(when, exact=True)}
            for when, snap in file_snapshots(repo.list_snapshots())
        ]
        return report
    finally:
        repo.close()


@dataclass
class StateAt:
    path: str
    covered: bool
    seen: str | None = None  # when the watch saw the state that holds at the time asked
    page_count: int = 0
    range: tuple[str, str] | None = None
    thinned: bool = False  # the time lies in a thinned range: the newest kept state at or before it

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "covered": self.covered,
            "seen": self.seen,
            "pageCount": self.page_count,
            "range": list(self.range) if self.range else None,
            "thinned": self.thinned,
        }


def states_at(tl: captures.Timeline, at: int) -> list[StateAt]:
    out = []
    for path in tl.paths():
        rng = tl.at(path, at)
        if rng is None:
            out.append(StateAt(path, False))
            continue
        _base, parts = captures.lineage(tl, rng, at)
        # The last in the chain's order (as `rebuild` applies them): states recorded while the
        # clock was set back share a time, and the newest of them is the one restored.
        last = [c for _s, p in parts for c in p.commits if c.at <= at][-1]
        out.append(
            StateAt(
                path,
                True,
                captures.describe(last.at, exact=True),
                last.page_count,
                (captures.describe(rng.start, exact=True), captures.describe(rng.end, exact=True)),
                rng.points is not None,
            )
        )
    return out


def list_at(cfg: Config, envx: Environment, at_text: str) -> list[StateAt]:
    at = parse_at(at_text)
    repo = open_repository(cfg, envx)
    try:
        require_identity(repo, "the capture segments")
        tl = captures.timeline(repo, captures_cache(repo, envx))
        states = states_at(tl, at)
        if not any(s.covered for s in states):
            raise UsageError(f"no capture covers {captures.asked(at)}; covered: {ranges_text(tl)}")
        return states
    finally:
        repo.close()


def rebuild(
    repo: Repository,
    tl: captures.Timeline,
    path: str,
    at: int,
    dest: Path,
    chain: str | None = None,
    *,
    sync: bool = True,
) -> captures.Commit:
    """Write `path` as it was at `at` into the new file `dest` (as `chain` recorded it, when
    given); the commit state it holds. `sync=False` leaves the fsync to the caller (`_one`: after
    the checks, which read the pages from memory while the disk writes them, and only for a copy
    that is placed)."""
    rng = tl.at(path, at, chain)
    if rng is None:
        raise UsageError(f"no capture covers {path} at {captures.asked(at)}; covered: {ranges_text(tl, path)}")
    base, parts = captures.lineage(tl, rng, at)
    snap = repo.load_snapshot(base.snapshot)
    node = next((n for logical, n in walk_tree(repo, snap.tree) if logical == path), None)
    if node is None or node.sha256 != base.sha256:
        raise CorruptObject(f"the base snapshot {base.snapshot[:8]} does not hold the copy of {path} its segment names")
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    last: captures.Commit | None = None
    page_size = 0
    try:
        write_content(repo, fd, path, node)

        # The commits in the chain's order, up to the first one after `at`: each applies to the
        # state before it, so none after a skipped one may be applied. One segment's pages are
        # held at a time (the timeline holds headers only).
        def chain_commits() -> Iterator[tuple[captures.Segment, captures.Part, captures.Commit]]:
            for bare, part in parts:
                seg = captures.with_pages(repo, bare)
                for commit in part.commits:
                    yield seg, part, commit

        for seg, part, commit in chain_commits():
            if commit.at > at:
                break
            for i, page in enumerate(commit.pages):
                os.pwrite(fd, seg.page(part, commit, i), (page - 1) * part.page_size)
            last, page_size = commit, part.page_size
        if last is None:
            raise CorruptObject(f"the segments of {path} hold no state at {captures.asked(at)}")
        os.ftruncate(fd, last.page_count * page_size)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return last


@dataclass
class AtResult:
    at: str
    to: str | None
    dry_run: bool
    databases: list[dict[str, object]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    safety_snapshot: str | None = None
    files: dict[str, object] | None = None  # the snapshot of the files restored, and what happened
    duration: float = 0.0
    notices: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.PARTIAL if self.errors else ExitStatus.OK

    def to_json(self) -> dict[str, object]:
        return {
            "at": self.at,
            "to": self.to,
            "dryRun": self.dry_run,
            "databases": self.databases,
            "errors": self.errors,
            "safetySnapshot": self.safety_snapshot,
            "files": self.files,
            "notices": self.notices,
            "duration": round(self.duration, 3),
        }


def _chosen(tl: captures.Timeline, layout: Layout, paths: tuple[str, ...]) -> list[str]:
    every = tl.paths()
    if not paths:
        return every
    out = []
    for p in every:
        real = str(layout.to_real(p))
        if any(fnmatch.fnmatchcase(p, g) or fnmatch.fnmatchcase(real, g) for g in paths):
            out.append(p)
    return out


def _names_databases(paths: tuple[str, ...], chosen: list[str], layout: Layout) -> bool:
    """Whether every --path is exactly the logical or real path of a captured database (no
    wildcard): no file can match it, so the files are not restored (which would open the
    repository a second time, a key derivation of half a second, to restore nothing)."""
    names = set(chosen) | {str(layout.to_real(p)) for p in chosen}
    return bool(paths) and all(g in names and not any(c in g for c in "*?[") for g in paths)


def restore_at(
    cfg: Config,
    envx: Environment,
    at_text: str,
    *,
    paths: tuple[str, ...] = (),
    to: Path | None = None,
    dry_run: bool = False,
    yes: bool = False,
    safety_snapshot: bool = True,
    check_only: bool = False,
) -> AtResult:
    """Restore the captured databases as they were at `at_text`: in place, below `to`, or (a
    drill, `check_only`) into a scratch folder where they are only checked. The files come from
    the newest snapshot of the files `phx watch` took by then (ops/restore.py restores it), unless
    `paths` select databases only."""
    started = time.time()
    at = parse_at(at_text)
    if to is not None:
        refuse_plain_copies_in_repository(cfg, to, "--to")
    result = AtResult(captures.asked(at), str(to) if to else None, dry_run)
    files: Snapshot | None = None
    repo = open_repository(cfg, envx)
    try:
        require_identity(repo, "the capture segments and snapshots")
        with repo.lock(exclusive=False, command="restore"):
            repo.load_index()
            tl = captures.timeline(repo, captures_cache(repo, envx))
            layout = Layout(cfg.workspace, envx.home)
            chosen = _chosen(tl, layout, paths)
            covered = [p for p in chosen if tl.at(p, at) is not None]
            if (
                not check_only
                and (not paths or len(chosen) < len(tl.paths()))
                and not _names_databases(paths, chosen, layout)
            ):
                snapshots = repo.list_snapshots()  # once: each is a request per snapshot on S3
                files = next((snap for when, snap in reversed(file_snapshots(snapshots)) if when <= at), None)
                if files is None:
                    result.notices.append(_no_files_note(snapshots, at))
            if not covered and (files is None or (tl.paths() and not paths)):
                if paths and not chosen and files is None:
                    captured = ", ".join(tl.paths()) or "none"
                    raise UsageError(f"--path {' '.join(paths)} names no database the watch captured ({captured})")
                raise UsageError(
                    f"no capture covers {captures.asked(at)}; covered: "
                    f"{'; '.join(ranges_text(tl, p) for p in chosen) if chosen else ranges_text(tl)}"
                )
            for p in chosen:
                if p not in covered:
                    result.errors.append(
                        {"path": p, "error": f"not covered at {result.at}; covered: {ranges_text(tl, p)}"}
                    )
            if dry_run:
                result.databases = [s.to_json() for s in states_at(tl, at) if s.path in covered]
            in_place = to is None and not check_only
            if dry_run or not covered:
                pass
            elif in_place and not yes:
                names = ", ".join(str(layout.to_real(p)) for p in covered)
                ask = envx.confirm
                if ask is None:
                    raise ConfirmationRequired(
                        f"restoring {names} as of {result.at} overwrites them; pass --yes (or --to DIR to look first)"
                    )
                if not ask(f"Overwrite {names} with their state at {result.at}?"):
                    raise UsageError("nothing was restored")
            if in_place and safety_snapshot and covered and not dry_run:
                snap = safety.take(repo, cfg, envx, layout, dict.fromkeys(covered, "sqlite"))
                result.safety_snapshot = snap.id
            with scratch_dir("phx-at-") as scratch:
                for i, p in enumerate(covered if not dry_run else ()):
                    # Rebuilt beside its destination, so that placing it is a rename.
                    if check_only:
                        copy = scratch / f"{i}.db"
                    else:
                        dest = layout.to_real(p, to)
                        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                        copy = dest.with_name(f".{dest.name}.phx-at.{os.getpid()}")
                    try:
                        result.databases.append(_one(repo, tl, p, at, copy, layout, to, in_place, check_only))
                    except (RestoreError, CorruptObject, OSError) as exc:
                        result.errors.append({"path": p, "error": str(exc)})
                    finally:
                        copy.unlink(missing_ok=True)
    finally:
        repo.close()
    if files is not None:
        result.files = _restore_files(cfg, envx, files, paths, to, dry_run, yes, safety_snapshot)
        errors = result.files.get("errors")
        if isinstance(errors, list):
            result.errors.extend(errors)
    result.duration = time.time() - started
    return result


def _restore_files(
    cfg: Config,
    envx: Environment,
    snap: Snapshot,
    paths: tuple[str, ...],
    to: Path | None,
    dry_run: bool,
    yes: bool,
    safety_snapshot: bool,
) -> dict[str, object]:
    """The files as of the snapshot `phx watch` took of them, by the ordinary restore."""
    from phoenix_backup.ops import restore as restore_op

    info: dict[str, object] = {"snapshot": snap.id, "time": snap.time}
    try:
        done = restore_op.restore(
            cfg, envx, ref=snap.id, paths=paths, to=to, dry_run=dry_run, yes=yes, safety_snapshot=safety_snapshot
        )
    except PhoenixError as exc:
        info["errors"] = [{"path": "files", "error": str(exc)}]
        return info
    info["restored"] = done.restored
    info["errors"] = [{"path": str(e["path"]), "error": str(e["error"])} for e in done.errors]
    return info


def _one(
    repo: Repository,
    tl: captures.Timeline,
    path: str,
    at: int,
    copy: Path,
    layout: Layout,
    to: Path | None,
    in_place: bool,
    check_only: bool,
) -> dict[str, object]:
    commit = rebuild(repo, tl, path, at, copy, sync=False)
    check = sqlite_live.check_live(str(copy))
    bad = [f"{t}: {m}" for t, m in check.fts.items() if m != "ok"]
    if check.integrity != "ok" or bad:
        raise RestoreError(
            f"the rebuilt {path} fails its checks ({'; '.join([check.integrity, *bad])}); nothing was replaced"
        )
    info: dict[str, object] = {
        "path": path,
        "seen": captures.describe(commit.at, exact=True),
        "pages": commit.page_count,
        "integrity": check.integrity,
        "fts": check.fts,
    }
    if check_only:
        info["method"] = "checked"
        return info
    if in_place:
        live = layout.to_real(path)
        if sqlite_live.apply_if_readable(str(copy), str(live), path, str(live)):
            info["method"] = "backup-api"
        else:
            _place(copy, live)
            info["method"] = "rename"
        after = sqlite_live.check_live(str(live))
        info["integrity"], info["fts"] = after.integrity, after.fts
        info["to"] = str(live)
        return info
    assert to is not None
    dest = layout.to_real(path, to)
    _place(copy, dest)
    info["method"], info["to"] = "rename", str(dest)
    return info


def _place(copy: Path, dest: Path) -> None:
    """Put the checked copy (in the same folder) in the place of `dest`: on the disk first."""
    fd = os.open(copy, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{dest}{suffix}")  # SQLite would replay a stale journal into the new file
    os.replace(copy, dest)
    fsync_dir(dest.parent)
