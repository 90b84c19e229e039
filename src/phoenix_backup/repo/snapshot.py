"""Snapshot objects: the commit point of a backup (sealed canonical JSON under `snapshots/<id>`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from phoenix_backup.errors import CorruptObject, UnsupportedFormat

SNAPSHOT_VERSION = 1
SNAPSHOT_AAD = b"phoenix v1 snapshot"
# `DatabaseInfo.integrity` of a SQLite image that was not given a full `PRAGMA integrity_check` at
# backup (it ran on its own cadence, docs/integrity-cadence.md): neither passed nor failed.
NOT_CHECKED = "not checked"


def unchecked_copy_note(path: str, integrity: str | None) -> str | None:
    """The warning for a SQLite database's copy handed out as it is (`phx dump`, `phx archive`)
    that did not pass `integrity_check` at backup; None when it did. `phx restore` checks such a
    copy itself; these commands cannot, so they say it."""
    if integrity == "ok":
        return None
    why = (
        "was not checked by PRAGMA integrity_check at backup (it runs on its own cadence)"
        if integrity in (None, NOT_CHECKED)
        else f"failed PRAGMA integrity_check at backup ({integrity})"
    )
    return f"the copy of {path} {why}; run PRAGMA integrity_check on it before use (`phx restore` checks it itself)"


@dataclass(frozen=True)
class DatabaseInfo:
    """What a snapshot knows of one database it holds."""

    path: str  # logical path in the snapshot (home/.argentos/memory.db, postgres/main/...)
    engine: str  # "sqlite"
    version: str
    integrity: str  # "ok", NOT_CHECKED, or the first problems reported
    tables: dict[str, int]  # real tables (shadow tables of virtual ones included) -> rows
    virtual_tables: dict[str, str] = field(default_factory=dict)  # name -> module
    page_size: int = 0
    # PostgreSQL: extension -> version. Redis and PostgreSQL: engine-specific facts (agentId,
    # serverVersionNum, key types...). Written only when set, so SQLite entries keep their bytes.
    extensions: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """The database was saved as it was, with problems its checks reported."""
        return self.integrity not in ("ok", NOT_CHECKED)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "path": self.path,
            "engine": self.engine,
            "version": self.version,
            "integrity": self.integrity,
            "tables": dict(sorted(self.tables.items())),
            "virtualTables": dict(sorted(self.virtual_tables.items())),
            "pageSize": self.page_size,
        }
        if self.extensions:
            doc["extensions"] = dict(sorted(self.extensions.items()))
        if self.details:
            doc["details"] = self.details
        return doc

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DatabaseInfo:
        return cls(
            path=_text(d["path"]),
            engine=_text(d["engine"]),
            version=_text(d["version"]),
            integrity=_text(d["integrity"]),
            tables={_text(k): _count(v) for k, v in _object(d["tables"]).items()},
            virtual_tables={_text(k): _text(v) for k, v in _object(d.get("virtualTables", {})).items()},
            page_size=_count(d.get("pageSize", 0)),
            extensions={_text(k): _text(v) for k, v in _object(d.get("extensions", {})).items()},
            details=_object(d.get("details", {})),
        )


@dataclass(frozen=True)
class SnapshotStats:
    files: int = 0
    dirs: int = 0
    size: int = 0  # logical bytes of files and databases
    added: int = 0  # bytes this backup added to the repository (sealed packs and index)
    blobs_added: int = 0
    files_read: int = 0  # files read again (not unchanged since the parent)
    duration: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "size": self.size,
            "added": self.added,
            "blobsAdded": self.blobs_added,
            "filesRead": self.files_read,
            "duration": round(self.duration, 3),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SnapshotStats:
        duration = d.get("duration", 0.0)
        if not isinstance(duration, int | float) or isinstance(duration, bool) or not 0 <= duration < 2**63:
            raise ValueError("duration is not a number of seconds")
        return cls(
            files=_count(d["files"]),
            dirs=_count(d["dirs"]),
            size=_count(d["size"]),
            added=_count(d["added"]),
            blobs_added=_count(d.get("blobsAdded", 0)),
            files_read=_count(d.get("filesRead", 0)),
            duration=float(duration),
        )


@dataclass(frozen=True)
class Snapshot:
    time: str  # RFC 3339 with the UTC offset, exactly as recorded
    name: str  # a timestamp name, 2026-03-15-14-30, made unique with -2, -3
    host: str
    username: str
    scope: str  # full | memory | databases | identity
    tags: tuple[str, ...]
    tree: bytes
    parent: str | None
    sources: dict[str, str]  # logical root -> absolute path at backup time (workspace, home)
    databases: tuple[DatabaseInfo, ...]
    stats: SnapshotStats
    incomplete: tuple[dict[str, str], ...] = ()  # [{path, error}] files that vanished or failed
    phoenix_version: str = ""
    started: str = ""  # RFC 3339 UTC, when the backup began reading (for the unchanged-file rule)
    # Logical paths that did not exist when the snapshot was taken (safety snapshots record what a
    # restore is about to create, so that restoring them deletes it again). Empty for backups.
    absent: tuple[str, ...] = ()
    id: str = ""  # object name; set when loaded or saved

    @property
    def datetime(self) -> datetime:
        return datetime.fromisoformat(self.time)

    def to_json_bytes(self) -> bytes:
        doc = {
            "version": SNAPSHOT_VERSION,
            "time": self.time,
            "name": self.name,
            "host": self.host,
            "username": self.username,
            "scope": self.scope,
            "tags": list(self.tags),
            "tree": self.tree.hex(),
            "parent": self.parent,
            "sources": self.sources,
            "databases": [d.to_json() for d in self.databases],
            "stats": self.stats.to_json(),
            "incomplete": list(self.incomplete),
            "phoenixVersion": self.phoenix_version,
            "started": self.started,
        }
        if self.absent:  # only safety snapshots carry it: ordinary snapshots keep their bytes
            doc["absent"] = list(self.absent)
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json_bytes(cls, data: bytes, snapshot_id: str) -> Snapshot:
        """A snapshot from its plaintext; every field is checked, and any fault is one
        CorruptObject naming the snapshot (UnsupportedFormat for a newer format)."""
        try:
            d = json.loads(data)
            if not isinstance(d, dict):
                raise ValueError("it is not a JSON object")
            version = d.get("version")
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise ValueError(f"unknown version {version!r}")
            if version > SNAPSHOT_VERSION:
                raise UnsupportedFormat(
                    f"snapshot {snapshot_id[:8]} was written by a newer Phoenix (snapshot format "
                    f"{version}); upgrade phoenix-backup to read it"
                )
            tree = bytes.fromhex(_text(d["tree"]))
            parent = d.get("parent")
            if len(tree) != 32 or not (parent is None or _is_hex_id(parent)):
                raise ValueError("tree or parent is not a 64-character hex id")
            snap = cls(
                time=_time(d["time"]),
                name=_snapshot_name(d["name"]),
                host=_text(d["host"]),
                username=_text(d.get("username", "")),
                scope=_text(d["scope"]),
                tags=tuple(_text(t) for t in _array(d["tags"])),
                tree=tree,
                parent=parent,
                sources={_text(k): _text(v) for k, v in _object(d.get("sources", {})).items()},
                databases=tuple(DatabaseInfo.from_json(_object(x)) for x in _array(d.get("databases", []))),
                stats=SnapshotStats.from_json(_object(d["stats"])),
                incomplete=tuple(_incomplete(x) for x in _array(d.get("incomplete", []))),
                phoenix_version=_text(d.get("phoenixVersion", "")),
                started=_text(d.get("started", "")),
                absent=_absent(d.get("absent", [])),
                id=snapshot_id,
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as exc:
            raise CorruptObject(f"snapshot {snapshot_id[:8]} is malformed: {exc}") from exc
        return snap


def _snapshot_name(value: object) -> str:
    """A timestamp name (2026-03-15-14-30, -2, -3 ...), or any printable text of at most 64
    characters without a path separator: it names archive folders and drill reports, and is
    printed to terminals."""
    if not isinstance(value, str) or not 0 < len(value) <= 64 or not value.isprintable():
        raise ValueError(f"name {value!r} is not a timestamp name")
    if "/" in value or "\\" in value:
        raise ValueError(f"name {value!r} is not a timestamp name")
    return value


_HEX_ID = re.compile(r"[0-9a-f]{64}")


def _is_hex_id(value: object) -> bool:
    return isinstance(value, str) and _HEX_ID.fullmatch(value) is not None


# The years a snapshot's time may name: every command can sort, shift and print these (the ends of
# the calendar overflow when a UTC offset moves them past year 1 or 9999).
MIN_YEAR, MAX_YEAR = 1900, 9998


def _time(value: object) -> str:
    """RFC 3339 with a UTC offset, within MIN_YEAR..MAX_YEAR."""
    when = datetime.fromisoformat(_text(value))
    if when.tzinfo is None:
        raise ValueError("time has no UTC offset")
    if not MIN_YEAR <= when.year <= MAX_YEAR:
        raise ValueError(f"time {value!r} is outside the years {MIN_YEAR} to {MAX_YEAR}")
    return _text(value)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    # JSON's \ud800 escapes decode to lone surrogates, which no terminal or file system call
    # takes (\udc80-\udcff stand for the bytes of a name that is not UTF-8, and are fine).
    value.encode("utf-8", "surrogateescape")
    return value


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise ValueError(f"{value!r} is not a count")
    return value


def _object(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("expected a JSON object")
    return value


def _array(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("expected a JSON array")
    return value


def _incomplete(value: object) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in _object(value).items()}


def _absent(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise ValueError("absent is not a list of paths")
    return tuple(_text(p) for p in raw)


@dataclass(frozen=True)
class Latest:
    """What `latest` means (DESIGN §2): the newest complete snapshot of scope `scope` from `host`
    (None: this host) carrying every tag in `tags`. Safety snapshots have a scope of their own, so
    they are chosen only when that scope is asked for (or when named by id or name)."""

    host: str | None = None
    scope: str = "full"
    tags: tuple[str, ...] = ()
    # (user, workspace folder) of the agent asking: of the host's snapshots, its own (two agents of
    # one host sharing a repository never restore each other's workspace). None: any agent.
    agent: tuple[str, str] | None = None

    def describe(self, host: str) -> str:
        tags = f" tagged {', '.join(self.tags)}" if self.tags else ""
        agent = f" by user {self.agent[0]} of workspace {self.agent[1]}" if self.agent else ""
        return f"complete {self.scope} snapshot{tags} from host {host}{agent}"

    def matches(self, snap: Snapshot, host: str) -> bool:
        return (
            snap.host == host
            and snap.scope == self.scope
            and all(t in snap.tags for t in self.tags)
            and not snap.incomplete
        )


@dataclass(frozen=True)
class Selection:
    """Which snapshots a listing shows (`phx list --host --scope --tag --last`): those of `host` and
    `scope` (None: any) carrying every tag in `tags`, and of those the `last` newest (None: all)."""

    host: str | None = None
    scope: str | None = None
    tags: tuple[str, ...] = ()
    last: int | None = None

    def apply(self, snaps: list[Snapshot]) -> list[Snapshot]:
        """The selected snapshots of `snaps` (oldest first), in the same order."""
        found = [
            s
            for s in snaps
            if (self.host is None or s.host == self.host)
            and (self.scope is None or s.scope == self.scope)
            and all(t in s.tags for t in self.tags)
        ]
        return found[len(found) - self.last :] if self.last is not None and self.last < len(found) else found


# The snapshots of the files that `phx watch` takes within seconds of each change (ops/watch_files.py).
CAPTURE_SCOPES = ("watch-files",)
# Every scope `phx watch` writes: its base snapshots (ops/watch.py) and those of the files. `phx
# list` hides them unless asked; thinning does not count them as the policy's oldest snapshot.
WATCH_SCOPES = ("watch", *CAPTURE_SCOPES)


# How far ahead of the clock a snapshot may be dated before it counts as "from the future" (a
# clock set wrong on one run, or `--time`): clocks of one host drift by seconds, not minutes.
FUTURE_SLACK = timedelta(minutes=5)


def is_future(snap: Snapshot, now: datetime) -> bool:
    return snap.datetime - now > FUTURE_SLACK


def choose_latest(
    snaps: list[Snapshot], rule: Latest, this_host: str, now: datetime | None = None
) -> tuple[Snapshot | None, str]:
    """The snapshot `latest` names among `snaps` (oldest first), and the host it was looked for on.

    Without `rule.host`, the host is this one; when no snapshot of this host matches but those that
    do all come from one other host, that host is used: a new machine restoring from the
    repository alone (its host name differs) still has a `latest`. A snapshot dated in the future
    (given `now`) is `latest` only when no snapshot of the present matches: one run under a clock
    set years ahead must not stand for every later backup."""
    host = rule.host or this_host
    found = [s for s in snaps if rule.matches(s, host)]
    if not found and rule.host is None:
        others = {s.host for s in snaps if rule.matches(s, s.host)}
        if len(others) == 1:
            host = others.pop()
            found = [s for s in snaps if rule.matches(s, host)]
    if rule.agent is not None:
        found = of_agent(found, rule.agent)
    present = [s for s in found if now is None or not is_future(s, now)]
    return ((present or found)[-1] if found else None), host


def of_agent(snaps: list[Snapshot], agent: tuple[str, str]) -> list[Snapshot]:
    """Those of `snaps` (one host's) that `agent` (user, workspace folder) made; when it made none and
    they all come from one other agent, all of them (a workspace that moved to another folder, a
    repository restored on a new machine); of several other agents, none."""
    mine = [s for s in snaps if same_agent(s, agent)]
    if not mine and len({recorded_agent(s) for s in snaps}) == 1:
        return snaps
    return mine


def recorded_agent(s: object) -> tuple[str, str]:
    """(user, workspace folder) a snapshot records; ("", "") for one that records no workspace
    folder (made before it was recorded), which is any agent's."""
    sources = getattr(s, "sources", None)
    workspace = sources.get("workspace", "") if isinstance(sources, dict) else ""
    if not workspace:
        return "", ""
    return str(getattr(s, "username", "") or ""), str(workspace)


def same_agent(s: object, agent: tuple[str, str]) -> bool:
    """Whether `s` was made by `agent` (user, workspace folder); a snapshot recording neither is
    any agent's, as it was before both were recorded."""
    recorded = recorded_agent(s)
    return recorded == ("", "") or recorded == agent


def timestamp_name(when: datetime, taken: set[str]) -> str:
    """The ArgentOS timestamp name (`2026-03-15-14-30`), made unique with `-2`, `-3`."""
    base = when.strftime("%Y-%m-%d-%H-%M")
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"
