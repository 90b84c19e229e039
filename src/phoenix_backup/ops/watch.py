"""`phx watch`: continuous protection of the configured SQLite databases (docs/continuous.md).

A foreground process polls every configured SQLite database every POLL_SECONDS with a
`SqliteCapture` that it keeps open (sources/sqlite_capture.py). Each poll that finds a new
committed state records the time and the pages that changed; every FLUSH_SECONDS (when something
changed, else every HEARTBEAT_SECONDS) the records are sealed into one capture segment
(repo/captures.py, repository format §15) and written to every enabled target.

- **Base.** A database's history starts from a base: an ordinary snapshot of scope `watch` (tag
  `watch`) of the databases, whose page runs deduplicate against every earlier snapshot. The
  page hashes of that snapshot's copy (kept in the watch's own cache folder, so the regular
  backups' chain is left alone) tell which pages of the capture's first image differ from it: only
  those go into the first segment.
- **Changes.** Afterwards the capture names the pages each new state changed (the WAL frames
  since the previous poll); when it cannot prove that (another process checkpointed and
  restarted the WAL, a rollback-journal database), the pages are compared with the hashes of the
  previous state (16 bytes a page), kept in a file of the watch's cache folder (`WorkingHashes`).
- **Restart.** The position of each capture and the chain's last segment are saved in
  `<data dir>/watch/<repository id>.json` before each segment is written. A restarted watch
  resumes the chain from there when the segment is in the repository and the capture proves that
  only new WAL frames were added since; otherwise it takes a new base (one pass over the database;
  unchanged page runs cost nothing).
- **Lock.** A shared lock is held while the watch writes, released at least every LEASE_SECONDS
  so that a prune or forget can run in between; when one holds the repository, segments wait in
  the spool and are written after it.
- **Writer.** Each sealed segment goes to the spool (one file, so a kill loses none) and is written
  to the first target, then each replica, by a thread of its own (`start_writer`), which also holds
  the lease, checks the bases and publishes: the poll loop never waits on a target. While a write
  is in flight, the segment waiting behind it is sealed again with each new second appended
  (`_seal`), so a slow target gets one object per write and keeps up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import gc
import json
import os
import re
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from phoenix_backup.config import Config
from phoenix_backup.dirs import data_dir, make_dirs, remove_tree, write_private
from phoenix_backup.errors import (
    ConfigError,
    CorruptObject,
    IdentityRequired,
    ObjectNotFound,
    PhoenixError,
    RepositoryLocked,
    SourceError,
    StorageError,
    UsageError,
)
from phoenix_backup.ops import watch_child, watch_files
from phoenix_backup.ops.context import (
    Environment,
    cache_for,
    captures_cache,
    enabled_targets,
    open_repository,
    target_backend,
)
from phoenix_backup.ops.selection import select_sources
from phoenix_backup.process import hide_process_memory, trim_heap
from phoenix_backup.repo import captures
from phoenix_backup.repo.cache import Cache, cache_root
from phoenix_backup.repo.chunker import HASH_SIZE, PageHashes, SpilledHashes
from phoenix_backup.repo.crypto import load_cryptography, same_bytes, sha256_hex, zstandard_module
from phoenix_backup.repo.locks import WATCH_LEASE_SECONDS, HeldLock, ProcessTag
from phoenix_backup.repo.repository import RepoConfig, Repository
from phoenix_backup.sources.files import Entry, segment_folders
from phoenix_backup.sources.scope import SCOPES
from phoenix_backup.sources.sqlite_capture import CHECKPOINT_FRAMES, Image, Position, SqliteCapture
from phoenix_backup.storage.base import Backend

POLL_SECONDS = 0.5
# A database not polled for longer than this (the watch stopped, starved or blocked) records the
# time since its last poll as a gap: more than the timeline's TOUCH_US, so it shows as one.
STALL_US = 5_000_000
LOOK_TAKES = 3  # a look that stalled is taken again (`Watcher._look`), at most this many times in all
FLUSH_SECONDS = 1.0
HEARTBEAT_SECONDS = 30.0
# The C heap's free pages go back to the system after every segment: the pages of a second's
# commits are freed into chunks scattered over the heap, and the next seconds touch others; with a
# trim every HEARTBEAT_SECONDS only, the heap's resident size climbed 2.5-3 MiB between trims
# (docs/benchmarks.md, "What the steady state of `phx watch` adds after its imports").
TRIM_SECONDS = FLUSH_SECONDS
LEASE_SECONDS = float(WATCH_LEASE_SECONDS)
LEASE_GAP_SECONDS = 2.0  # let go this long after each lease: an exclusive command waits for it (repo/locks.py)
PUBLISH_SECONDS = 60.0  # Git targets: one commit and push at most this often
SPOOL_TAG_BYTES = 32  # a spool file: `_spool_mac`'s tag, then the sealed segment
QUEUE_MEMORY_BYTES = 8 << 20  # segments waiting beyond this (or during an outage) go to the spool on disk
# While the writer thread writes a segment, the segments sealed meanwhile are sealed again as one
# (`Watcher._seal`) up to this many bytes of pages: one object a write, so a target that takes
# seconds a request keeps up, without holding more than this in memory.
COALESCE_BYTES = 4 << 20
# At `close` after an error, a segment write in flight is waited for at most this long: past the
# target's own timeouts (S3: a minute a request, its retries within MAX_SECONDS more), a write
# still going is one that may never end (a hung network mount); the lock then stays until exit.
CLOSE_WAIT_SECONDS = 600.0
RETRY_WAIT_SECONDS = 1.0  # a segment the first target refused is tried again this often
OUTAGE_NOTICE_SECONDS = 600.0  # during an outage, a notice of what waits this often
RETRY_SECONDS = 60.0  # a replica that failed is caught up (phx sync) at most this often
QUIET_SECONDS = 5.0  # a database unchanged this long has its page hashes saved for a restart
WATCH_SCOPE = "watch"
WATCH_TAG = "watch"
_READ_PAGES = 256  # pages hashed per read when a whole image is compared
_HASHES_MAC_BYTES = 32  # a saved page-hash file: two segments' names, `_hashes_mac`'s tag, the hashes
CACHE_PROBE_BYTES = 64 << 10  # a cache folder that cannot take this much takes no base's cache


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class WatchResult:
    segments: int = 0
    bytes: int = 0
    commits: int = 0
    bases: int = 0
    file_snapshots: int = 0
    resumed: list[str] = field(default_factory=list)  # databases that continued the saved chain
    warnings: list[str] = field(default_factory=list)
    unwritten: int = 0  # segments that could not be written to the first target before the end
    duration: float = 0.0

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass
class _Db:
    entry: Entry
    capture: SqliteCapture
    page_size: int = 0
    page_count: int = 0
    hashes: WorkingHashes | None = None  # of the last state's pages, 16 bytes each
    need_base: bool = True
    since: int | None = None
    until: int = 0
    base: captures.Base | None = None
    commits: list[captures.Commit] = field(default_factory=list)
    pages: list[bytes] = field(default_factory=list)
    position: Position | None = None  # of the last state recorded
    stamp: tuple[int, int, int] | None = None  # a rollback-journal file's (size, mtime, inode)
    changed_in: str | None = None  # the segment of this database's last commit
    changed_at: float = 0.0  # when (monotonic) that commit was captured
    hashes_tag: str | None = None  # the segment whose state the saved page hashes describe
    hashes_last: str | None = None  # the chain's last segment when they were saved (`_hashes_mac`)
    base_id: str | None = None  # the snapshot the history written so far is rebuilt from (see `check_bases`)

    @property
    def logical(self) -> str:
        return self.entry.logical


@dataclass
class _Tail:
    """The last sealed segment while it waits behind a write in progress: what it was built from,
    so that the next second's parts can be appended to it (`Watcher._seal`)."""

    name: str
    sequence: int
    previous: str | None
    parts: list[tuple[captures.Part, list[bytes]]]


class _SealFailed(Exception):
    """The watch's error met by `flush` inside a database's poll (`Watcher._flush_within`)."""

    def __init__(self, error: PhoenixError | OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _coalesced(
    tail: list[tuple[captures.Part, list[bytes]]], new: list[tuple[captures.Part, list[bytes]]], limit: int
) -> list[tuple[captures.Part, list[bytes]]] | None:
    """The parts of one segment that holds `tail`'s commits and then `new`'s, each at its own time;
    None when they cannot be one segment without changing what a reader sees: a database's new
    part does not start where its part in `tail` ends (a gap), starts from a new base, or has
    another page size; or the pages would pass `limit` bytes."""
    if sum(len(b) for _p, pages in (*tail, *new) for b in pages) > limit:
        return None
    out = list(tail)
    index = {part.path: i for i, (part, _pages) in enumerate(out)}
    for part, pages in new:
        i = index.get(part.path)
        if i is None:
            out.append((part, pages))
            continue
        old, old_pages = out[i]
        if part.base is not None or part.page_size != old.page_size or part.since != old.until or old.thinned:
            return None
        out[i] = (dataclasses.replace(old, until=part.until, commits=old.commits + part.commits), [*old_pages, *pages])
    return out


def _spool_order(path: Path) -> int:
    """The number a spool file's name starts with (0 when it has none)."""
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def state_file(envx: Environment, repo_id: str) -> Path:
    return data_dir(envx.env) / "watch" / f"{repo_id}.json"


def _is_hex(value: object, n: int) -> bool:
    return isinstance(value, str) and len(value) == n and all(c in "0123456789abcdef" for c in value)


def _load_state(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


class Watcher:
    """The state of one `phx watch` process (see the module's docstring)."""

    def __init__(self, cfg: Config, envx: Environment, repo: Repository, *, files: bool = True) -> None:
        self.cfg = cfg
        self.envx = envx
        self.repo = repo
        self.host = socket.gethostname()
        self.result = WatchResult()
        self.cache_dir = Path(envx.env.get("PHX_CACHE_DIR") or cache_root()) / "watch"
        self.base_env = dataclasses.replace(envx, env={**envx.env, "PHX_CACHE_DIR": str(self.cache_dir)})
        self.state_path = state_file(envx, repo.config.id)
        self.target = envx.target or enabled_targets(cfg)[0]  # the one `repo` is (see `open_repository`)
        self.lock: HeldLock | None = None
        self.lock_free_until = 0.0
        # Sealed segments not yet in the first target, in order: in memory (bytes), or in the spool
        # folder (None) once the repository did not take one or QUEUE_MEMORY_BYTES wait.
        # Sealed segments not yet in the first target, in order: each in the spool folder (unless it
        # took no file: `unspooled`), and in memory too (bytes) while no outage lasts and fewer than
        # `queue_limit` bytes wait there (else None).
        self.queue: list[tuple[str, bytes | None]] = []
        self.queue_bytes = 0  # of those in memory
        self.queue_limit = QUEUE_MEMORY_BYTES
        self.spool = self.cache_dir / repo.config.id / "spool"
        # Waiting in memory only (the spool took no file), each with its place in the spool's order
        # (given when it was sealed, so that the saved state's `spoolOrder` counts it: `spill_all`).
        self.unspooled: dict[str, int] = {}
        self.spool_warned = False
        self.spool_order = 0  # the number of the last spool file (they sort in the queue's order)
        self.last_order = 0  # that of the chain's last segment, saved in the state
        # The writer thread (`start_writer`) and what it shares with the poll loop, under `wake`.
        self.wake = threading.Condition()
        self.writer: threading.Thread | None = None
        self.writer_stop = False  # the watch stops: write what waits, then end
        self.writer_progress = True  # the writer's last pass wrote a segment or found none waiting
        self.writer_abort = False  # the watch ends on an error: no more writes
        self.writer_error: BaseException | None = None
        self.want_lease = False  # the poll loop waits for a lease to take a snapshot
        self.in_flight: str | None = None  # the segment being written
        self.tail: _Tail | None = None  # the last segment, while it may still be sealed again longer
        self.bases_found: list[tuple[_Db, str, str | None]] = []  # `check_bases` -> `_apply_bases`
        self.outage_since: float | None = None  # (monotonic) the first write the repository refused
        self.outage_noticed = 0.0
        self.replicas: dict[str, Backend] = {}
        self.lagging: dict[str, float] = {}  # replica -> when it failed (caught up by a sync)
        self.marked: set[str] = set()  # replicas whose config is format 5 (`_mark_captures`)
        self.last_flush = time.monotonic()
        self.last_publish = time.monotonic()
        self.last_trim = time.monotonic()  # release_memory: a collection and a trim of the C heap
        self.last_heap_trim = time.monotonic()  # trim_heap only
        self.hashes_in_memory = False  # warned that the cache folder took no page hashes
        self.cache_refused = False  # warned that the cache folder took no base's cache
        self.dbs: list[_Db] = []
        self.next_base = 0.0  # after a failed base snapshot, not before this (monotonic)
        self.clock = 0  # µs: the latest time recorded in the chain (see `now`)
        self.clock_warned = False
        self.clock_ahead = 0  # µs `clock` was set past the chain's last time at the start (`_resume_clock`)
        self.write_failed = False
        self.bases_due = False  # a lease was taken since the bases were last checked
        self.stop = threading.Event()  # set: the watch is stopping (a hung child is not waited for)
        self.abandon = threading.Event()  # set: stopping at once (a second Ctrl-C): a child's git push is killed
        self.meanwhile_error: PhoenixError | None = None  # see `_meanwhile`
        saved = _load_state(self.state_path)
        chain, sequence, last = saved.get("chain"), saved.get("sequence"), saved.get("last")
        if not (_is_hex(chain, 32) and type(sequence) is int and sequence >= 0 and _is_hex(last, 64)):
            saved = {}  # none, or damaged: a new chain
        self.chain = str(saved.get("chain") or "")
        self.sequence = int(saved.get("sequence", -1)) if self.chain else -1
        self.previous: str | None = str(saved["last"]) if self.chain else None
        positions: dict[str, Any] = saved.get("databases", {}) if self.chain else {}
        changed_in: dict[str, Any] = saved.get("changedIn", {}) if self.chain else {}
        bases: dict[str, Any] = saved.get("bases", {}) if self.chain else {}
        if not isinstance(positions, dict) or not isinstance(changed_in, dict):
            positions, changed_in = {}, {}
        if not isinstance(bases, dict):
            bases = {}
        # The chain's last segment's end (µs), for a machine that cannot read that segment (`_resume_clock`).
        until = saved.get("until") if self.chain else None
        self.last_until = until if type(until) is int and until > 0 else 0
        self.spooled_paths: dict[str, Path] = {}
        order = saved.get("spoolOrder") if self.chain else None
        self.last_order = self.spool_order = order if type(order) is int and order > 0 else 0
        spooled = self._load_spool(self.last_order or None)
        problem = self._last_segment_problem(spooled) if self.chain else None
        if problem is not None:
            self.warn(f"the watch's last segment {problem}: a new chain starts from new bases")
            positions = {}
            self.chain = ""
        if not self.chain:
            self.chain, self.sequence, self.previous = os.urandom(16).hex(), -1, None
        layout, sel = select_sources(cfg, "databases", envx)
        # A configured database that cannot be followed (a FIFO, socket or device in its place, or
        # unreadable) is said as `phx backup` says it (there: not saved, a partial backup).
        for path, message in sel.errors:
            self.warn(f"not followed: {layout.to_logical(Path(path))}: {message}")
        entries = sorted((e for e in sel.entries.values() if e.kind == "sqlite"), key=lambda e: e.logical)
        if not entries:
            raise ConfigError(
                f"no SQLite database is configured or found: `phx watch` has nothing to follow; add one to "
                f"`databases.sqlite` in {cfg.source or 'the config'}"
            )
        for e in entries:
            if segment_folders(e.path.parent):
                self.warn(
                    f"{e.logical} is a chromadb store: the watch follows its database only, not the index files of "
                    "the segment folders beside it, so `restore --at` may pair a database with index files of "
                    "another flush and the store may not open or miss items; restore such a store from a "
                    "`phx backup` snapshot, which saves the database and its index files as one state"
                )
            pos = None
            if isinstance(positions.get(e.logical), dict):
                try:
                    pos = Position.from_json(positions[e.logical])
                except ValueError:
                    pos = None
            db = _Db(e, SqliteCapture(e.path, pos), need_base=pos is None, position=pos)
            if pos is not None and _is_hex(bases.get(e.logical), 64):
                db.base_id = str(bases[e.logical])
            if pos is not None and isinstance(changed_in.get(e.logical), str):
                db.changed_in = db.hashes_tag = changed_in[e.logical]
                db.hashes = self._saved_hashes(db)
                db.hashes_last = self.previous
            self.dbs.append(db)
        for name in enabled_targets(cfg)[1:]:
            try:
                self.replicas[name] = target_backend(cfg, envx, name)
            except PhoenixError as exc:
                self.warn(f"target {name}: {exc}")
        self.files = watch_files.FileWatch(cfg, envx) if files else None
        self.next_files = 0.0  # after a failed file snapshot, not before this (monotonic)

    def watch_files(self) -> None:
        """A snapshot of the files when a burst of changes is due (watch_files.py)."""
        if self.files is None or time.monotonic() < self.next_files or not self.files.due() or not self._may_snapshot():
            return
        try:
            self._snapshot(
                self.envx,
                None,
                watch_files.FILES_SCOPE,
                (),
                (*SCOPES, watch_files.FILES_SCOPE),
                [n for n in self.replicas if n not in self.lagging],
            )
        except PhoenixError as exc:
            self.warn(f"the snapshot of the files failed ({exc}); tried again in {HEARTBEAT_SECONDS:.0f} s")
            self.next_files = time.monotonic() + HEARTBEAT_SECONDS
            return
        finally:
            self._raise_meanwhile()
        self.files.taken()
        self.result.file_snapshots += 1

    def _load_spool(self, committed: int | None) -> dict[str, bytes]:
        """The segments a previous watch left in the spool (the repository was out of reach when
        it stopped or was killed): queued first, in their order. One that is not one this watch
        left there (damaged, or planted by someone who can write the cache folder: see
        `_spooled`) is deleted, saying so; it is never written to the repository."""
        out: dict[str, bytes] = {}
        try:
            files = sorted(p for p in self.spool.iterdir() if "-" in p.name and not p.name.startswith("."))
        except OSError:
            return out
        last = captures.PREFIX + self.previous if self.previous else None
        orders: dict[str, list[Path]] = {}
        late = [p for p in files if committed is not None and _spool_order(p) > committed]
        if late:
            # Sealed, but the watch was killed before its state named them: the chain goes on from
            # the segment the state names (these would fork it); their states are captured again.
            self.envx.notice(
                f"{len(late)} capture segment(s) in {self.spool} were sealed by a watch killed before it recorded "
                "them; they are deleted (the chain goes on from the last segment it recorded, and the databases' "
                "changes since are captured again)"
            )
            for p in late:
                p.unlink(missing_ok=True)
                files.remove(p)
        for path in files:
            orders.setdefault(path.name.split("-", 1)[0], []).append(path)
        for same in orders.values():
            # Two files at one place: a segment sealed again longer (`_seal`) and the one it
            # replaced, when a kill came between writing the one and deleting the other. The saved
            # state names the one that continues the chain; the other would fork it.
            names = [captures.PREFIX + q.name.split("-", 1)[1] for q in same]
            if len(same) > 1 and last in names:
                for q, n in zip(same, names, strict=True):
                    if n != last:
                        q.unlink(missing_ok=True)
                        files.remove(q)
        for path in files:
            name = captures.PREFIX + path.name.split("-", 1)[1]
            self.spooled_paths[name] = path
            self.spool_order = max(self.spool_order, _spool_order(path))
            try:
                raw = self._spooled(name)
            except OSError as exc:
                self.spooled_paths.pop(name)
                self.warn(f"cannot read the waiting segment {path} ({exc.strerror or exc}); it is left there")
                continue
            if raw is None:
                self.spooled_paths.pop(name)
                self.warn(f"the waiting segment {path} is not one this watch left there (damaged); it is deleted")
                path.unlink(missing_ok=True)
                continue
            if not self._opens(name, raw):
                # Sealed before a `phx key rotate` (the watch waited for the rotation's lock, then
                # stopped on the new key): written now, no reader could open it.
                self.spooled_paths.pop(name)
                self.warn(
                    f"the waiting segment {path} was sealed under a key that `phx key rotate` has since retired, so "
                    "nothing could read it; it is deleted (the states it held are lost; stop `phx watch` before "
                    "rotating the key)"
                )
                path.unlink(missing_ok=True)
                continue
            out[name] = raw
            self.queue.append((name, None))
        if out:
            self.envx.notice(f"{len(out)} capture segment(s) left waiting in {self.spool} are written first")
        return out

    def _opens(self, name: str, raw: bytes) -> bool:
        """Whether the spooled segment `name` opens under the repository's key (a machine that
        backs up a write-only repository cannot tell: it keeps it)."""
        if not self.repo.can_read:
            return True
        try:
            captures.open_segment(self.repo, name, raw)
        except IdentityRequired:
            return True
        except CorruptObject:
            return False
        return True

    def _spool_mac(self, name: str, raw: bytes) -> bytes:
        """A spool file's tag: keyed by the repository's key (a write-only machine has it too) and
        bound to the segment's name, so that only this repository's watch makes one."""
        key = blake3.blake3(b"phoenix v1 watch spool", key=self.repo.ids.page_key).digest()
        return blake3.blake3(name.encode() + b"\0" + raw, key=key).digest()

    def _spooled(self, name: str) -> bytes | None:
        """The segment waiting in the spool as `name`, or None when its file does not carry the
        tag `_spill` wrote (`_spool_mac`) or its bytes do not match the name: damaged, or planted
        by someone who can write the cache folder (a file named by its own SHA-256 would
        otherwise be written to the repository as a segment). OSError when it cannot be read."""
        held = self.spooled_paths[name].read_bytes()
        tag, raw = held[:SPOOL_TAG_BYTES], held[SPOOL_TAG_BYTES:]
        if same_bytes(tag, self._spool_mac(name, raw)) and sha256_hex(raw) == name.removeprefix(captures.PREFIX):
            return raw
        return None

    def _last_segment_problem(self, spooled: dict[str, bytes] | None = None) -> str | None:
        """Why the saved chain cannot go on (None: it can): its last segment must be in the
        repository (or waiting in the spool) and open under the repository's key (not after
        `phx key rotate`)."""
        if self.previous is None:
            return "is unknown"
        name = captures.PREFIX + self.previous
        try:
            if spooled and name in spooled:
                last = captures.open_segment(self.repo, name, spooled[name])
            else:
                last = captures.load(self.repo, name)
        except ObjectNotFound:
            return "is not in the repository"
        except IdentityRequired:
            # A write-only repository: this machine cannot read what it wrote; its saved state
            # keeps the last segment's end.
            self._resume_clock(self.last_until)
            return None
        except PhoenixError as exc:
            return f"cannot be read ({exc})"
        self._resume_clock(max((p.until for p in last.parts), default=0))
        return None

    def _resume_clock(self, until: int) -> None:
        """The seconds between the chain's last segment (ending at `until`) and the first poll of
        this watch are a gap, however soon it started again: the timeline joins parts within
        TOUCH_US (a clock step), so the first poll is recorded past that (at most 2 s ahead of the
        clock, see `now`)."""
        self.clock_ahead = captures.TOUCH_US + 1
        self.clock = until + self.clock_ahead

    def now(self) -> int:
        """The wall clock in µs, but never before a time the chain already records: a clock set
        back (by hand, a bad NTP server) would otherwise write parts that end before they begin
        (which no reader accepts) or commits stamped before earlier ones. Until the clock catches
        up, states are recorded at the latest time reached, in their order."""
        now = now_us()
        if now >= self.clock:
            self.clock, self.clock_ahead = now, 0
            return now
        # How far the clock went back: from the chain's last time, not from the restart's gap after it.
        back = self.clock - self.clock_ahead - now
        if not self.clock_warned and back > captures.TOUCH_US:
            self.clock_warned = True
            self.warn(
                f"the clock went back {back / 1e6:.0f} s; until it reaches "
                f"{captures.describe(self.clock)}, captures are recorded at that time"
            )
        return self.clock

    def _hashes_path(self, db: _Db, suffix: str = "page-hashes") -> Path:
        name = blake3.blake3(db.logical.encode()).hexdigest(length=16)
        return self.state_path.with_name(f"{self.repo.config.id}.{name}.{suffix}")

    def _hashes_mac(self, db: _Db, tag: bytes, hashes: bytes | memoryview) -> bytes:
        """A saved page-hash file's tag: keyed by the repository's key (a write-only machine has it
        too), bound to the database, the segment of its state and the chain's last segment then
        (`tag`: both names), so that whoever can write the data folder but lacks the key cannot
        make one that the watch believes, nor put back an older one the watch saved: that one
        names an older last segment than the state does (to roll the state back too forks the
        chain, which every reader reports)."""
        key = blake3.blake3(b"phoenix v1 watch page hashes", key=self.repo.ids.page_key).digest()
        mac = blake3.blake3(db.logical.encode() + b"\0" + tag + b"\0", key=key)
        mac.update(hashes)
        return mac.digest()

    def _saved_hashes(self, db: _Db) -> WorkingHashes | None:
        """The page hashes saved for the database's state as of its last commit in the chain (the
        file names that commit's segment, and carries `_hashes_mac`'s tag): with them a restart
        whose capture cannot prove continuity (the last connection to close checkpointed and
        removed the WAL, or a position without WAL frames) compares pages instead of taking a new
        base. A file whose tag is wrong (damaged, or planted: a page made to look unchanged would
        be left out of the history) is ignored, saying so; the pages are then read again."""
        path = self._hashes_path(db)
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        tag = (db.changed_in or "").encode() + (self.previous or "").encode()
        if len(tag) != 128 or raw[:128] != tag:
            # The hashes of another state: the watch was stopped before it saved newer ones (SIGKILL
            # after other databases' segments), or an older file was put back.
            return None
        body = memoryview(raw)[128 + _HASHES_MAC_BYTES :]
        if (len(raw) - 128 - _HASHES_MAC_BYTES) % HASH_SIZE or not same_bytes(
            raw[128 : 128 + _HASHES_MAC_BYTES], self._hashes_mac(db, tag, body)
        ):
            self.envx.notice(
                f"the page hashes saved in {path} are not the ones this watch saved (damaged, or changed by "
                f"someone who can write that folder); they are ignored and {db.entry.path} is read again"
            )
            return None
        try:
            return WorkingHashes(self.cache_dir, body)
        except OSError:
            return None  # unreadable as it was written: a new base if the capture needs one

    def save_hashes(self, stopping: bool = False) -> None:
        """Save the page hashes of each database that has been quiet for QUIET_SECONDS (or at a
        stop) and whose last commit's segment is written or waits in the spool (see `_saved_hashes`)."""
        if self.unspooled:
            return  # a segment of these states may still be lost with the process
        now = time.monotonic()
        for db in self.dbs:
            if (
                db.hashes is None
                or db.need_base
                or db.commits
                or db.changed_in is None
                or self.previous is None
                # At a stop they are saved again when later segments (other databases') moved the
                # chain's last segment, which the file names.
                or (db.hashes_tag == db.changed_in and (not stopping or db.hashes_last == self.previous))
                or (not stopping and now - db.changed_at < QUIET_SECONDS)
            ):
                continue
            tag, hashes = (db.changed_in + self.previous).encode(), db.hashes[:]
            write_private(self._hashes_path(db), tag + self._hashes_mac(db, tag, hashes) + hashes)
            self._hashes_path(db, "pages").unlink(missing_ok=True)  # an older Phoenix's, without a tag
            db.hashes_tag, db.hashes_last = db.changed_in, self.previous

    def _check_hashes(self, hashes: WorkingHashes | None) -> None:
        """Warn, once a run, when page hashes went to memory: the cache folder takes no file."""
        if hashes is None or hashes.failure is None or self.hashes_in_memory:
            return
        self.hashes_in_memory = True
        exc = hashes.failure
        self.warn(
            f"the watch's cache folder {hashes.folder} takes no page hashes ({exc.strerror or exc}); they are "
            "kept in memory (16 bytes a page) and every commit is still captured; free space there, fix its "
            "permissions or set PHX_CACHE_DIR to a writable folder"
        )

    def warn(self, message: str) -> None:
        self.result.warnings.append(message)
        self.envx.notice(f"warning: {message}")

    # -- polling ---------------------------------------------------------------------------

    def poll(self, *, bases_too: bool = True) -> None:
        if self.bases_found:
            self._apply_bases()
        bases = []
        for db in self.dbs:
            if db.need_base:
                bases.append(db)
                continue
            try:
                self._poll(db)
            except _SealFailed as exc:
                raise exc.error from None
            except (PhoenixError, OSError) as exc:
                self.warn(f"{db.entry.path}: {exc}; it is captured again from a new base")
                db.capture.close()
                db.need_base = True
        if bases and bases_too and time.monotonic() >= self.next_base:
            self._take_bases(bases)
            self._raise_meanwhile()

    def _meanwhile(self) -> None:
        """While a child takes a snapshot (which may take minutes, or hang until it is killed):
        the databases already followed are captured and their segments written as between
        snapshots; no other snapshot starts. An error here (the spool cannot be written) is the
        watch's, not the snapshot's: kept, and raised once the snapshot is over (`_raise_meanwhile`)."""
        if self.meanwhile_error is not None:
            return
        try:
            self.poll(bases_too=False)
            if self.due():
                self.flush()
            elif self.queue:
                self._kick()
        except PhoenixError as exc:
            self.meanwhile_error = exc

    def _raise_meanwhile(self) -> None:
        error, self.meanwhile_error = self.meanwhile_error, None
        if error is not None:
            raise error

    def _poll(self, db: _Db) -> None:
        resumed = db.since is None  # the first poll of a resumed database
        if db.stamp is not None:
            looked = self.now()  # before the stat: a stall after it is not coverage (`_look`)
            st = os.stat(db.entry.path)
            stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
            if stamp == db.stamp:
                db.until = looked  # a rollback-journal file nobody wrote to
                return
        else:
            stamp = None
        image, at = self._look(db)
        # Nothing committed since the last look, as the WAL proves (no frame, same size): the state
        # held all along, however long the watch did not look (a slow target's write, a stop).
        same = (image.page_size, image.page_count) == (db.page_size, db.page_count)
        unchanged = image.changed == frozenset() and same
        if not resumed and not unchanged and at - db.until > STALL_US:
            # The watch did not look for a while (stopped, starved, blocked): what was committed
            # since its last look is seen only now, so the seconds in between are a gap, not
            # coverage of the older state (a restore there would miss commits made long before).
            if db.commits or db.base is not None or db.since is None or db.until > db.since:
                self._flush_within()
            db.since = at
        try:
            changed: set[int] | frozenset[int]
            # A copy of another page size renamed over the database: a part holds pages of one
            # size, so what came before is sealed first, and every page of the new one is recorded.
            resized = bool(db.page_size) and image.page_size != db.page_size
            if resized and db.commits:
                self._flush_within()
            if image.changed is None or resized:
                if db.hashes is None and not resized:
                    self.warn(f"{db.entry.path}: {image.reason}; it is captured again from a new base")
                    db.need_base = True
                    return
                new = _hash_all(image, self.repo.ids.page_key, self.cache_dir)
                changed = (
                    set(range(1, image.page_count + 1))
                    if resized or db.hashes is None
                    else _differ(db.hashes, new, image.page_count)
                )
                if db.hashes is not None:
                    db.hashes.close()
                db.hashes = new
            else:
                changed = image.changed
                if db.hashes is not None:
                    _update(db.hashes, image, changed, self.repo.ids.page_key)
            if changed or image.page_count != db.page_count or resumed:
                pages = sorted(p for p in changed if p <= image.page_count)
                db.commits.append(captures.Commit(at, image.page_count, tuple(pages)))
                db.pages.extend(image.page(p) for p in pages)
                self.result.commits += 1
            if db.hashes is None:
                db.hashes = _hash_all(image, self.repo.ids.page_key, self.cache_dir)  # after a restart: one pass
            self._check_hashes(db.hashes)
            if resumed:
                db.since = at
                self.result.resumed.append(db.logical)
            db.page_size, db.page_count, db.until, db.position = image.page_size, image.page_count, at, image.position
            if image.journal == "rollback":
                db.stamp = stamp if stamp is not None else _stamp(db.entry.path)
        finally:
            if image.journal == "rollback":
                db.capture.release()  # a held SHARED lock would block the application's commits
        if image.journal == "wal" and image.wal_frames >= CHECKPOINT_FRAMES:
            db.capture.checkpoint()

    def _flush_within(self) -> None:
        """`flush` inside a database's poll: what fails there (the spool, the saved state, the
        writer thread) is the watch's error, which ends it, not the database's, which `poll` says
        and goes on from a new base: the watch went on with a segment sealed but never queued
        (the next one linked to it or skipped its number, so no reader followed the chain past it),
        or with a dead writer."""
        try:
            self.flush()
        except (PhoenixError, OSError) as exc:
            raise _SealFailed(exc) from exc

    def _look(self, db: _Db) -> tuple[Image, int]:
        """A capture of `db` and the time its state is recorded at, taken again while the look
        itself stalled (more than STALL_US from its start to its time: the poll loop stopped or
        starved right after the read). When in those seconds the state was read is not known, and
        a commit made after the read would be seen only at the next look, with no gap before it: a
        restore in the stall would give the older state. The changes of a capture taken again go
        to the next one. Taken at most LOOK_TAKES times: a read that waited seconds on a writer's
        lock (busy timeout) read at the end of the wait, so a database whose every read waits so
        long is recorded then, not looked at forever."""
        looked = self.now()
        image = db.capture.capture()
        at = self.now()
        for _again in range(LOOK_TAKES - 1):
            if at - looked <= STALL_US:
                break
            db.capture.unseen(image)
            looked, image, at = at, db.capture.capture(), self.now()
        return image, at

    def _take_bases(self, dbs: list[_Db]) -> None:
        """A snapshot (scope `watch`) of `dbs`, then each capture's first image as its difference."""
        if not self._may_snapshot():
            return
        entries = []
        for db in dbs:
            try:
                st = os.stat(db.entry.path)
            except OSError as exc:
                self.warn(f"{db.entry.path}: {exc.strerror or exc}; tried again in {HEARTBEAT_SECONDS:.0f} s")
                # Not at the next poll: a database that stays broken would start a process (and
                # say so) twice a second.
                self.next_base = time.monotonic() + HEARTBEAT_SECONDS
                continue
            entries.append(dataclasses.replace(db.entry, st=st))
        if not entries:
            return
        with contextlib.ExitStack() as stack:
            try:
                outcome, cache_dir = self._base_snapshot(entries, stack)
            except PhoenixError as exc:
                self.warn(f"the base snapshot failed ({exc}); tried again in {HEARTBEAT_SECONDS:.0f} s")
                self.next_base = time.monotonic() + HEARTBEAT_SECONDS
                return
            self._use_base(dbs, outcome, cache_dir)
        release_memory(self.repo)

    def _base_snapshot(
        self, entries: list[Entry], stack: contextlib.ExitStack
    ) -> tuple[watch_child.SnapshotOutcome, Path]:
        """The base snapshot of `entries`, and the cache folder it was taken with: the watch's own,
        or, while that one takes no file (read-only, a full disk), a temporary folder that lives
        as long as `stack`. The cache only saves time (DESIGN §5): without it the base reads the
        index again and writes its page hashes elsewhere, but it is taken."""

        def take(envx: Environment) -> watch_child.SnapshotOutcome:
            return self._snapshot(
                envx, entries, WATCH_SCOPE, (WATCH_TAG,), (*SCOPES, WATCH_SCOPE), list(self.replicas), base=True
            )

        refused = self._cache_refuses()
        if refused is None:
            try:
                outcome = take(self.base_env)
            except PhoenixError:
                refused = self._cache_refuses()  # the folder may have filled up meanwhile
                if refused is None:
                    raise
            else:
                if not outcome.failed or (refused := self._cache_refuses()) is None:
                    return outcome, self.cache_dir
        try:
            remove_stale_cache_folders()
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=temp_cache_prefix())))
        except OSError as exc:  # a full disk fills the temporary folder too
            raise StorageError(
                f"the watch's cache folder {self.cache_dir} takes no file ({refused}), nor does the temporary "
                f"folder {tempfile.gettempdir()} ({exc.strerror or exc}); free space there, or set PHX_CACHE_DIR "
                "to a writable folder"
            ) from exc
        if not self.cache_refused:
            self.cache_refused = self.hashes_in_memory = True  # one warning says both
            self.warn(
                f"the watch's cache folder {self.cache_dir} takes no file ({refused}); base snapshots use a "
                "temporary folder instead (slower: the index is read again) and page hashes that do not fit there "
                "are kept in memory, as are capture segments its spool does not take until they are written (a kill "
                "loses those); every commit is still captured; free space there, fix its permissions or set "
                "PHX_CACHE_DIR to a writable folder"
            )
        return take(dataclasses.replace(self.base_env, env={**self.base_env.env, "PHX_CACHE_DIR": str(folder)})), folder

    def _cache_refuses(self) -> str | None:
        """Why the watch's cache folder cannot take a base's cache (read-only, full, not a folder),
        or None: it takes a file of CACHE_PROBE_BYTES."""
        folder = self.cache_dir / self.repo.config.id
        try:
            make_dirs(folder)
            with tempfile.TemporaryFile(dir=folder) as f:
                if os.write(f.fileno(), bytes(CACHE_PROBE_BYTES)) != CACHE_PROBE_BYTES:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            return exc.strerror or str(exc)
        return None

    def _use_base(self, dbs: list[_Db], outcome: watch_child.SnapshotOutcome, cache_dir: Path) -> None:
        """Each database's history from the base `outcome` (taken with the cache `cache_dir`): its
        capture's first image, as the pages that differ from the base's copy."""
        assert outcome.id is not None
        self.result.bases += 1
        for logical, checked in outcome.integrity_checked.items():
            if checked != "ok":
                self.warn(
                    f"{logical} fails PRAGMA integrity_check ({checked}); it is followed as it is, the last copy "
                    "that passed is kept, and the next `phx backup` checks it again and alerts"
                )
        # The base's page hashes: in the watch's cache when the base read the database, else in the
        # backups' cache when the base reused an unchanged copy of the last backup (same SHA-256).
        caches = (Cache(self.repo.config.id, cache_dir), cache_for(self.repo, self.envx))
        for db in dbs:
            sha256 = outcome.sha256.get(db.logical)
            if db.logical in outcome.failed or sha256 is None:
                failed = outcome.failed.get(db.logical, "not in the base snapshot")
                self.warn(f"{db.entry.path}: {failed}; tried again in {HEARTBEAT_SECONDS:.0f} s")
                self.next_base = time.monotonic() + HEARTBEAT_SECONDS
                continue
            db.capture.close()
            db.capture = SqliteCapture(db.entry.path)
            try:
                image, at = self._look(db)
                try:
                    new = _hash_all(image, self.repo.ids.page_key, self.cache_dir)
                    state = next((ps for c in caches if (ps := c.load_pages(db.logical, sha256))), None)
                    if state is not None and state.page_size == image.page_size:
                        try:
                            pages = sorted(_differ(state.pages, new, image.page_count))
                        finally:
                            state.close()
                    else:
                        pages = list(range(1, image.page_count + 1))  # every page: correct, if larger
                    db.commits = [captures.Commit(at, image.page_count, tuple(pages))]
                    db.pages = [image.page(p) for p in pages]
                    if db.hashes is not None:
                        db.hashes.close()
                    db.page_size, db.page_count, db.hashes = image.page_size, image.page_count, new
                    self._check_hashes(new)
                    db.position, db.since, db.until = image.position, at, at
                    db.base = captures.Base(outcome.id, sha256)
                    db.base_id = outcome.id
                    db.stamp = _stamp(db.entry.path) if image.journal == "rollback" else None
                    db.need_base = False
                    self.result.commits += 1
                finally:
                    if image.journal == "rollback":
                        db.capture.release()
            except (PhoenixError, OSError) as exc:
                self.warn(f"{db.entry.path}: {exc}; tried again in {HEARTBEAT_SECONDS:.0f} s")
                self.next_base = time.monotonic() + HEARTBEAT_SECONDS

    def _snapshot(
        self,
        envx: Environment,
        entries: list[Entry] | None,
        scope: str,
        tags: tuple[str, ...],
        parent_scopes: tuple[str, ...],
        replicas: list[str],
        *,
        base: bool = False,
    ) -> watch_child.SnapshotOutcome:
        """A snapshot taken in a child process (ops/watch_child.py), then copied to `replicas`
        there; its notices said here. PhoenixError when it failed."""
        secrets_, identities = watch_child.secrets_of(self.repo)
        request = watch_child.SnapshotRequest(
            cfg=self.cfg,
            env=dict(envx.env),
            target=self.target,
            config_raw=self.repo.config.raw,
            secrets=secrets_,
            identities=identities,
            entries=entries,
            scope=scope,
            tags=tags,
            parent_scopes=parent_scopes,
            replicas=tuple(replicas),
            base=base,
        )
        stopping = watch_child.Stopping(self.stop.is_set, self.abandon.is_set, self.envx.notice)
        outcome = watch_child.take_snapshot(request, self._meanwhile, stopping)
        for message in outcome.notices:
            self.envx.notice(message)
        if outcome.error is not None:
            raise outcome.error
        for name, error in outcome.replicas.items():
            if error is None:
                self.lagging.pop(name, None)
            else:
                self.lagging[name] = time.monotonic()
                if error:
                    self.warn(f"target {name}: {error}; caught up later")
        return outcome

    # -- sealing and writing ---------------------------------------------------------------

    def due(self) -> bool:
        elapsed = time.monotonic() - self.last_flush
        pending = any(db.commits for db in self.dbs)
        return (pending and elapsed >= FLUSH_SECONDS) or elapsed >= HEARTBEAT_SECONDS

    def flush(self) -> None:
        parts: list[tuple[captures.Part, list[bytes]]] = []
        for db in self.dbs:
            if db.need_base or db.since is None:
                continue
            if db.base is not None or db.commits or db.until > db.since:
                part = captures.Part(db.logical, db.page_size, db.since, db.until, tuple(db.commits), db.base)
                parts.append((part, db.pages))
        self.last_flush = time.monotonic()
        if not parts:
            return
        with self.wake:  # the writer takes no segment while the last one may still be replaced
            name, raw, replaced = self._seal(parts)
            # In the spool first, then named by the saved state (the commit point): a restart finds
            # every segment the state names in the repository or the spool, and deletes a spool file
            # the state does not name yet (`_load_spool`: it would fork the chain).
            keep = self._to_spool(name, raw, replaced)
            self.previous = name.removeprefix(captures.PREFIX)
            self.last_until = max(self.last_until, max(p.until for p, _pages in parts))
            now = time.monotonic()
            for db in self.dbs:
                if replaced is not None and db.changed_in == replaced.removeprefix(captures.PREFIX):
                    db.changed_in = self.previous  # its commit is in the segment that replaces that one
                if db.commits and not db.need_base:
                    db.changed_in, db.changed_at = self.previous, now
            self._save_state()
            for db in self.dbs:
                if db.since is not None and not db.need_base:
                    db.since, db.base, db.commits, db.pages = db.until, None, [], []
            self._enqueue(name, raw, replaced, keep)
        self._kick()
        self.save_hashes()
        if now - self.last_trim >= HEARTBEAT_SECONDS:
            # What a start-up, a restart's saved page hashes or a burst freed goes back to the
            # system: glibc keeps a freed stretch below the top of its heap for ever otherwise.
            self.last_trim = self.last_heap_trim = now
            release_memory()
        elif now - self.last_heap_trim >= TRIM_SECONDS:
            self.last_heap_trim = now
            trim_heap()  # without the collection, which would cost a pass over every object each second

    def _seal(self, parts: list[tuple[captures.Part, list[bytes]]]) -> tuple[str, bytes, str | None]:
        """The next segment of the chain, sealed: its name, its bytes, and the name of the waiting
        segment it replaces (None: it follows the chain's last). While the writer is busy writing
        an earlier segment (a slow target), the last segment waiting behind it is sealed again with
        these parts appended (`_coalesced`): one object per write, so a target that takes seconds
        per request keeps up with a segment a second, and every state keeps its own time. The
        caller holds `wake`."""
        tail = self.tail
        merged = None
        if (
            tail is not None
            and self.in_flight is not None
            and self.in_flight != tail.name
            and self.queue
            and self.queue[-1][0] == tail.name
        ):
            merged = _coalesced(tail.parts, parts, COALESCE_BYTES)
        if merged is not None and tail is not None:
            seg = captures.build(self.chain, tail.sequence, tail.previous, self.host, merged)
            name, raw = captures.seal(self.repo, seg)
            self.tail = _Tail(name, tail.sequence, tail.previous, merged)
            return name, raw, tail.name
        self.sequence += 1
        seg = captures.build(self.chain, self.sequence, self.previous, self.host, parts)
        name, raw = captures.seal(self.repo, seg)
        small = sum(len(b) for _p, pages in parts for b in pages) <= COALESCE_BYTES
        # Its pages are kept (to be sealed again longer) only while that may happen: not beyond
        # the bound (a first segment after a base may hold most of a database), not without the writer.
        self.tail = _Tail(name, self.sequence, self.previous, parts) if self.writer is not None and small else None
        return name, raw, None

    def _to_spool(self, name: str, raw: bytes, replaced: str | None) -> bool:
        """Put a sealed segment in the spool (the caller holds `wake`, before the state names it),
        so that a kill while it waits or is being written loses none; `replaced`: the waiting
        segment it replaces (`_seal`), whose place in the order it takes. Returns whether it also
        waits in memory: while no outage lasts and fewer than QUEUE_MEMORY_BYTES wait there (the
        writer then reads no file). A spool that takes no file costs nothing while the repository
        takes the segments (kept in memory, one warning); during an outage or beyond the bound it
        ends the watch (`_spill`)."""
        order, held = None, 0
        if replaced is not None:
            waiting = self.queue[-1]
            assert waiting[0] == replaced
            held = len(waiting[1]) if waiting[1] is not None else 0
            if (old := self.spooled_paths.get(replaced)) is not None:
                # The same place in the order: a restart that finds both files (a kill in between)
                # keeps the one the saved state names and deletes the other (`_load_spool`).
                order = int(old.name.split("-", 1)[0])
            else:
                order = self.unspooled.get(replaced)
        if order is None:
            order = self.spool_order = max(time.time_ns(), self.spool_order + 1)
        self.last_order = order
        keep = self.outage_since is None and self.queue_bytes - held + len(raw) <= self.queue_limit
        try:
            self._spill(name, raw, order)
        except SourceError as exc:
            if not keep:
                raise
            self.unspooled[name] = order
            # Once a run; not again when the cache folder that holds the spool was already said
            # to take no file (`_base_snapshot`).
            if not self.spool_warned and not self.cache_refused:
                self.spool_warned = True
                cause = exc.__cause__
                why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause or exc)
                self.warn(
                    f"the spool {self.spool} takes no file ({why}): capture segments wait in memory only until "
                    "written, so a kill of the watch loses those not yet in the first target; free space there or fix "
                    "its permissions"
                )
        return keep

    def _enqueue(self, name: str, raw: bytes, replaced: str | None, keep: bool) -> None:
        """Queue a segment `_to_spool` put in the spool, in place of `replaced` (whose file goes)."""
        if replaced is not None:
            _old, held = self.queue.pop()
            if held is not None:
                self.queue_bytes -= len(held)
            self.unspooled.pop(replaced, None)
            old = self.spooled_paths.pop(replaced, None)
            if old is not None:
                with contextlib.suppress(OSError):
                    old.unlink()
        self.queue.append((name, raw if keep else None))
        if keep:
            self.queue_bytes += len(raw)

    def _spill(self, name: str, raw: bytes, order: int) -> None:
        """Write a waiting segment to the spool; files sort in the queue's order (`order`: given
        when it was sealed, `_to_spool`)."""
        path = self.spool / f"{order:020d}-{name.removeprefix(captures.PREFIX)}"
        try:
            make_dirs(self.spool)
            write_private(path, self._spool_mac(name, raw) + raw)
        except OSError as exc:
            waiting = len(self.queue) + 1
            raise SourceError(
                f"the repository has not taken capture segments for "
                f"{(time.monotonic() - (self.outage_since or time.monotonic())) / 60:.0f} min and {waiting} wait; "
                f"they cannot be kept in {self.spool} ({exc.strerror or exc}): free space there (or set "
                "PHX_CACHE_DIR to a folder with room), bring the repository back, then start `phx watch` again "
                "(the segments already there are written first; the databases still hold their states)"
            ) from exc
        self.spooled_paths[name] = path

    def spill_all(self) -> None:
        """Only the spool holds the waiting segments from now on (an outage began, or the watch
        stops with the repository out of reach): those the spool did not take yet are written to
        it, in order, so that the next run writes them first; memory keeps none."""
        with self.wake:
            if not any(r is not None for _n, r in self.queue):
                return
            # Each file has the number it was given when sealed (`_to_spool`): in the queue's order,
            # and never after the one the saved state names as the last, which a restart would take
            # for a segment sealed by a watch killed before it recorded it (`_load_spool`).
            waiting, self.queue, self.queue_bytes = self.queue, [], 0
            for i, (name, raw) in enumerate(waiting):
                if raw is not None and name in self.unspooled:
                    try:
                        self._spill(name, raw, self.unspooled[name])
                    except SourceError:
                        # Nothing is dropped from the queue: those not spilled wait in memory still.
                        self.queue += waiting[i:]
                        self.queue_bytes = sum(len(r) for _n, r in self.queue if r is not None)
                        raise
                    del self.unspooled[name]
                self.queue.append((name, None))

    def _save_state(self) -> None:
        doc = {
            "chain": self.chain,
            "sequence": self.sequence,
            "last": self.previous,
            "databases": {
                db.logical: db.position.to_json()
                for db in self.dbs
                if db.position is not None and not db.need_base and db.since is not None
            },
            "changedIn": {db.logical: db.changed_in for db in self.dbs if db.changed_in and not db.need_base},
            "bases": {db.logical: db.base_id for db in self.dbs if db.base_id and not db.need_base},
            "spoolOrder": self.last_order,  # of the last segment's spool file (`_load_spool`)
            "until": self.last_until,  # the last segment's end (`_resume_clock`)
        }
        try:
            make_dirs(self.state_path.parent)
            write_private(self.state_path, json.dumps(doc, sort_keys=True).encode())
        except OSError as exc:
            raise SourceError(
                f"cannot save the watch's position in {self.state_path} ({exc.strerror or exc}); "
                "free space or fix its permissions, then start `phx watch` again"
            ) from exc

    def _lease(self) -> bool:
        """Hold the shared lock; False (and a notice) while another command holds the repository.
        Taken by whoever writes the segments: the writer thread while `watch` runs."""
        now = time.monotonic()
        if self._leased():
            return True
        if self.lock is not None:
            if self.lock.doubt is not None:
                self.envx.notice(f"{self.lock.doubt}; the watch takes a fresh lock before it writes on")
            self._release()
            self.lock_free_until = now + LEASE_GAP_SECONDS  # segments wait meanwhile
        if now < self.lock_free_until:
            return False
        try:
            held = self.repo.lock(exclusive=False, command="watch")
        except RepositoryLocked as exc:
            if not getattr(self, "_locked_noticed", False):
                self.envx.notice(f"waiting: {exc}")
                self._locked_noticed = True
            # Another command may hold it for minutes (a prune, a forget that compacts): what
            # waits goes to the spool, so that a kill meanwhile loses none (kept in memory when
            # the spool cannot be written: the lock, unlike an outage, ends by itself).
            with contextlib.suppress(SourceError):
                self.spill_all()
            return False
        self._locked_noticed = False
        self.lock = held if isinstance(held, HeldLock) else None
        # Format 5 at the first lease, so at each start (segments of a watch from before it may be
        # there); should this write fail, the first segment's write tries again and says why.
        with contextlib.suppress(PhoenixError):
            self.repo.mark_captures()
        self.bases_due = True  # checked once the segments waiting are written (`_write_queue`)
        return True

    def _may_snapshot(self) -> bool:
        """May a snapshot (a base, the files) start now? Not while another command holds the
        repository or in the lease's gap. With the writer thread, its lease tells (asked for here,
        never waited for: taking the lock writes to the target)."""
        if self.writer is None:
            return self._lease()
        self.want_lease = True
        self._kick()
        return self._leased()

    def _leased(self) -> bool:
        """Does this watch hold its lease now (never taken here: that writes to the target)? The
        lease runs on the lock's clock that counts a suspend (`HeldLock.held_for`; the monotonic
        clock stands still while the machine sleeps), and ends at once when the lock went
        unrefreshed long enough for another machine to judge it stale (`HeldLock.doubt`): the
        watch then takes a fresh lock, with the usual conflict check, instead of writing on."""
        lock = self.lock
        if lock is None:
            return False
        lock.unrefreshed_for()
        return lock.doubt is None and lock.held_for() < LEASE_SECONDS

    def check_bases(self) -> None:
        """At each lease: is each database's history still rebuildable from a snapshot the
        repository holds? A `phx forget` of a base (run while the lock was let go) ends the
        coverage of everything written from it: the watch says so and takes a new base. A base
        that compaction replaced (ops/compact.py: a newer snapshot holds the history) is followed
        to that snapshot. Run once the segments sealed so far are all in the repository: the
        repository is read here (by the writer thread while `watch` runs), and what it found is
        applied to the databases by the poll loop (`_apply_bases`)."""
        followed = [
            (db, db.since, db.base_id) for db in self.dbs if db.base_id and not db.need_base and db.since is not None
        ]
        if not followed:
            return
        present = {info.name.removeprefix("snapshots/") for info in self.repo.backend.list("snapshots/")}
        gone = [(db, since, sid) for db, since, sid in followed if sid not in present]
        if not gone:
            return
        try:
            tl: captures.Timeline | None = captures.timeline(self.repo, captures_cache(self.repo, self.envx))
        except PhoenixError:
            tl = None  # a write-only repository: this machine cannot read what it wrote
        found: list[tuple[_Db, str, str | None]] = []
        for db, since, sid in gone:
            assert since is not None and sid is not None
            rng = tl.at(db.logical, since, self.chain) if tl is not None else None
            new: str | None = None
            if tl is not None and rng is not None and rng.chain == self.chain:
                with contextlib.suppress(PhoenixError):
                    new = captures.lineage(tl, rng, since)[0].snapshot
            found.append((db, sid, new))
        with self.wake:
            self.bases_found += found
        if self.writer is None:
            self._apply_bases()

    def _apply_bases(self) -> None:
        """What `check_bases` found: a base compaction replaced is followed; one `phx forget`
        removed is said, and a new base is taken. A database whose base changed since (a new
        base was taken meanwhile) is left alone."""
        with self.wake:
            found, self.bases_found = self.bases_found, []
        lost: dict[str, list[_Db]] = {}
        for db, sid, new in found:
            if db.base_id != sid or db.need_base:
                continue
            if new is not None:
                db.base_id = new
            else:
                lost.setdefault(sid, []).append(db)
        for sid, dbs in lost.items():
            paths = ", ".join(str(db.entry.path) for db in dbs)
            if not self.repo.can_read:
                # A compaction (ops/compact.py) forgets the base too, having saved its history in a
                # snapshot this machine cannot read; nor can it read which of the two happened. A
                # new base keeps what comes next covered either way: a notice, not a warning.
                self.envx.notice(
                    f"the base snapshot {sid[:8]} of {paths} is no longer in the repository: a compaction replaced "
                    "it (what the watch captured stays restorable) or `phx forget` removed it (then what the watch "
                    "captured from it is lost); this write-only machine cannot read the repository to tell which, so "
                    "a new base is taken now"
                )
            else:
                self.warn(
                    f"the base snapshot {sid[:8]} of {paths} is gone (`phx forget`): what the watch captured from it "
                    "can no longer be restored; a new base is taken now"
                )
            for db in dbs:
                db.base_id, db.need_base = None, True

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # -- the writer thread -------------------------------------------------------------------

    def _kick(self) -> None:
        """Have the waiting segments written: by the writer thread while `watch` runs (the poll
        loop never waits on a target), else here."""
        if self.writer is None:
            self._write_queue()
            return
        with self.wake:
            self.wake.notify()
        self._raise_writer()

    def start_writer(self) -> None:
        """From now on the segments are written (first target, then each replica) by a thread of
        their own, in order, and so are the lease, the bases' check, the replicas' catch-up and the
        Git targets' publishing: all that waits on a target. The poll loop goes on polling and
        sealing meanwhile. The first lease is taken here, before any poll, as before: the bases
        are taken at the first poll, not half a second later."""
        self._lease()
        self.want_lease = True
        self.writer = threading.Thread(target=self._writer_loop, name="phx-watch-writer", daemon=True)
        self.writer.start()

    def _writer_loop(self) -> None:
        try:
            while True:
                with self.wake:
                    gap = self.lock_free_until - time.monotonic()
                    if self.writer_stop:
                        if not self.queue or self._abandoned() or not self.writer_progress:
                            return  # written, abandoned, or the target refuses them: they stay in the spool
                        if gap > 0:  # a backlog longer than a lease: the rest after the lease's gap
                            self.wake.wait(gap)
                    elif not self.queue or not self.writer_progress:
                        # Nothing to write, or the last pass wrote nothing (an outage, another command's
                        # lock, the lease's gap): until a segment is sealed, or a while.
                        self.wake.wait(RETRY_WAIT_SECONDS if self.write_failed else POLL_SECONDS)
                    elif gap > 0:  # the last pass let go at its lease's end (`_write_queue`)
                        self.wake.wait(gap)
                before = self.result.segments
                if self.queue or self.want_lease:
                    self._lease()
                self._write_queue()
                self.writer_progress = self.result.segments > before or not self.queue
                if not self.queue and self._leased():
                    # Under the lease only, as the writes: a Git commit or a bases' check while
                    # a prune or a compacting forget holds the repository would race it.
                    self._after_writes()
        except BaseException as exc:  # said by the poll loop (`_raise_writer`), which then stops
            with self.wake:
                self.writer_error = exc

    def _abandoned(self) -> bool:
        """The writer writes no more: a second Ctrl-C at the stop, or an error ended the watch."""
        return self.writer_stop and (self.writer_abort or self.abandon.is_set())

    def _raise_writer(self) -> None:
        """The writer thread's error, raised in the poll loop (which then stops), and again at
        every later call: the writer is gone, so a watch that caught it once (a database's poll
        seals a segment, `_poll`) must not go on polling with nothing written."""
        if self.writer_error is not None:
            raise self.writer_error

    def finish_writes(self) -> None:
        """At the stop: the writer writes what waits (unless the target refuses it, or a second
        Ctrl-C abandons it: it then waits in the spool) and ends."""
        if self.writer is None:
            self._write_queue()
            return
        waiting = len(self.queue)
        if waiting > 1 and not self.write_failed:
            self.envx.notice(
                f"writing the {waiting} capture segments that wait to the first target before stopping; Ctrl-C "
                f"again leaves them in {self.spool} for the next `phx watch`"
            )
        with self.wake:
            self.writer_stop, self.writer_progress = True, True
            self.wake.notify()
        while self.writer.is_alive():
            self.writer.join(POLL_SECONDS)
        self.writer = None
        self._raise_writer()

    def _after_writes(self) -> None:
        """Once every segment sealed so far is written: the bases' check of a new lease, the
        replicas that failed caught up, Git targets published."""
        if self.bases_due:
            self.bases_due = False
            self.check_bases()
        now = time.monotonic()
        retry = [n for n, when in list(self.lagging.items()) if now - when >= RETRY_SECONDS]
        if retry:
            self._catch_up(retry)
        if not self.writer_stop and now - self.last_publish >= PUBLISH_SECONDS:
            self.publish()

    def _write_queue(self) -> None:
        if not self.queue or not self._lease():
            return
        while True:
            # The lease is renewed between writes, as between polls: a backlog that takes longer
            # than a lease to drain (a slow target, a long outage's spool) lets go at the lease's
            # end, so that an exclusive command waiting for the watch (repo/locks.py: up to
            # WATCH_LEASE_SECONDS + 10 s) gets in; the rest waits in the spool meanwhile.
            if self.queue and not self._lease():
                break
            if self.queue:
                try:
                    self._mark_captures()
                except PhoenixError as exc:
                    self._outage(self.queue[0][0], exc)
                    return
            with self.wake:
                if not self.queue or self._abandoned():
                    break
                name, held = self.queue[0]
                self.in_flight = name
                if self.tail is not None and self.tail.name == name:
                    self.tail = None  # written as it is now: no longer replaced by a longer one
                path = self.spooled_paths.get(name)
            try:
                raw = held if held is not None else self._spooled(name)
            except OSError as exc:
                raise SourceError(
                    f"cannot read the waiting segment {path} ({exc.strerror or exc}); "
                    "fix the cache folder's permissions, then start `phx watch` again"
                ) from exc
            if raw is None:
                raise SourceError(
                    f"the waiting segment {path} was changed while it waited (damaged); "
                    "start `phx watch` again (it then deletes that file and writes the others)"
                )
            try:
                self.repo.backend.write(name, raw)
            except PhoenixError as exc:
                with self.wake:
                    self.in_flight = None
                self._outage(name, exc)
                return
            if self.outage_since is not None:
                self.envx.notice(
                    f"the first target takes capture segments again after {time.monotonic() - self.outage_since:.0f} s"
                    f"; {len(self.queue)} waiting are written now"
                )
            with self.wake:
                self.write_failed, self.outage_since = False, None
                self.queue.pop(0)
                self.in_flight = None
                if held is not None:
                    self.queue_bytes -= len(raw)
                self.unspooled.pop(name, None)
                done = self.spooled_paths.pop(name, None)
            if done is not None:
                with contextlib.suppress(OSError):
                    done.unlink()
            self.result.segments += 1
            self.result.bytes += len(raw)
            for rname, backend in self.replicas.items():
                if rname in self.lagging:
                    continue
                try:
                    backend.write(name, raw)
                except PhoenixError as exc:
                    self.warn(f"target {rname}: {exc}; caught up later")
                    self.lagging[rname] = time.monotonic()
        if self.writer is None:
            self._after_writes()

    def _mark_captures(self) -> None:
        """Format 5 on each target before a segment reaches it (docs/repository-format.md §2), under
        the lease: the first target's config (`Repository.mark_captures`), then each replica's,
        replaced by the first target's when it is the same repository under the same key. A replica
        whose config is not that (another key: a rotation not brought there yet) gets no segment:
        it lags, and the sync that catches it up brings the config first (repo/replicate.py)."""
        self.repo.mark_captures()
        ours = self.repo.config
        for rname, backend in self.replicas.items():
            if rname in self.lagging or rname in self.marked:
                continue
            problem: str | None = None
            try:
                if not backend.exists():
                    # No repository there yet: a segment written now would sit there without a
                    # config; the catch-up (or `phx sync`) makes one with this config, then copies.
                    problem = "holds no repository yet"
                elif (raw := backend.read("config")) != ours.raw:
                    theirs = RepoConfig.from_bytes(raw, backend.location)
                    if theirs.captures or not (theirs.same_but_captures(ours) and self.repo.authenticates(theirs)):
                        problem = "its config is not the first target's (a key rotation not brought there yet?)"
                    else:
                        self.repo.locks.confirm_held("no capture segment was written there")
                        backend.write("config", ours.raw)
            except PhoenixError as exc:
                problem = str(exc)
            if problem is None:
                self.marked.add(rname)
            else:
                self.warn(f"target {rname}: {problem}; it gets no capture segment until `phx sync` catches it up")
                self.lagging[rname] = time.monotonic()

    def _outage(self, name: str, exc: PhoenixError) -> None:
        """The first target refused a segment: said once (then every OUTAGE_NOTICE_SECONDS with
        what waits), and what waits goes to the spool, so that memory stays bounded and a kill
        loses nothing; written in order once the target takes segments again."""
        now = time.monotonic()
        if not self.write_failed:  # once until a write succeeds, not every second
            self.warn(
                f"cannot write {name} to the first target ({exc}); tried again every second, the segments wait in "
                f"{self.spool}"
            )
            self.outage_since, self.outage_noticed = now, now
        elif now - self.outage_noticed >= OUTAGE_NOTICE_SECONDS:
            self.outage_noticed = now
            minutes = (now - (self.outage_since or now)) / 60
            self.envx.notice(
                f"warning: the first target has refused capture segments for {minutes:.0f} min ({exc}); "
                f"{len(self.queue)} wait in {self.spool}"
            )
        self.write_failed = True
        self.spill_all()

    def _catch_up(self, names: list[str]) -> None:
        """Copy what a replica missed (a write failed), as `phx sync` does. Rare: its code is
        loaded only then, not in every watch (see ops/watch_child.py on the watch's memory)."""
        from phoenix_backup.ops.sync import replicate_all

        for name in names:
            report = replicate_all(self.repo, self.cfg, self.envx, ran="watch", only=name).get(name)
            if report is not None and report.ok:
                self.lagging.pop(name, None)
            else:
                self.lagging[name] = time.monotonic()
                if report is not None:
                    self.warn(f"target {name}: {report.error}; caught up later")

    def publish(self) -> None:
        """Git targets: one commit (and push) of the segments written since the last one."""
        self.last_publish = time.monotonic()
        for name, backend in [("first", self.repo.backend), *self.replicas.items()]:
            try:
                backend.checkpoint("phoenix: capture segments")
                backend.publish()
            except PhoenixError as exc:
                self.warn(f"target {name}: {exc}")

    def close(self) -> None:
        keep_lock = False
        if self.writer is not None:  # an error ended the watch: what waits stays in the spool
            with self.wake:
                self.writer_stop = self.writer_abort = True
                self.wake.notify()
            keep_lock = not self._writer_ended()
        if self.files is not None:
            self.files.close()
        for db in self.dbs:
            db.capture.close()
            if db.hashes is not None:
                db.hashes.close()
        if not keep_lock:
            self._release()
        for backend in self.replicas.values():
            backend.close()

    def _writer_ended(self) -> bool:
        """Wait (at `close`) until the writer thread, told to abandon what waits, has ended: the lock
        is let go only once no write of ours can land after it (another process may then prune,
        compact or start a watch). A write in flight ends within the target's own timeouts (S3: a
        minute a request and its retries); the lock stays refreshed meanwhile (its refresh thread,
        repo/locks.py). False when a second Ctrl-C (`abandon`), a KeyboardInterrupt or
        CLOSE_WAIT_SECONDS (a target that never answers) ended the wait: the lock then stays in
        the store, and the next command removes it once this process is gone (its write cannot
        land after that), as after a kill."""
        assert self.writer is not None
        self.writer.join(POLL_SECONDS)
        if not self.writer.is_alive():
            return True
        self.envx.notice(
            "waiting for the capture segment write in flight to end before letting go of the repository lock "
            "(what waits stays in the spool; Ctrl-C again ends the watch at once)"
        )
        until = time.monotonic() + CLOSE_WAIT_SECONDS
        with contextlib.suppress(KeyboardInterrupt):
            while self.writer.is_alive() and not self.abandon.is_set() and time.monotonic() < until:
                self.writer.join(POLL_SECONDS)
        if not self.writer.is_alive():
            return True
        late = "" if self.abandon.is_set() else f" after {CLOSE_WAIT_SECONDS:.0f} s: the target does not answer"
        self.envx.notice(
            f"warning: the repository lock stays until this process ends (a segment write was still in flight{late}); "
            "the next command removes it then"
        )
        return False


# A base's temporary cache folder (when the watch's own takes no file), in TMPDIR (mode 0700):
# phx-watch-cache-<host>-<boot id>-<pid namespace>-<pid>-<start time>-<time namespace>.<random>,
# <host> the first 8 hex digits of the SHA-256 of the host name: TMPDIR may be a folder that several
# machines share (a home on NFS), where another boot id is another machine's, not a reboot. A watch
# killed (SIGKILL, a power cut) leaves it; the next watch on that host removes it once its process
# is provably gone. An older watch's name has no time namespace (nor the dot: mkdtemp's random part
# has none): its start time is then not compared. `phx drill`'s scratch folder (phx-drill-..., a
# plain copy of a snapshot) is named and removed alike, by the next drill or watch.
_TEMP_CACHE = re.compile(
    r"phx-(?:watch-cache|drill)-([0-9a-f]{8})-((?:[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12})?)-(\d+)-(\d+)-(\d+)-"
    r"(?:(\d+)\.)?.+"
)


def _host_tag() -> str:
    return sha256_hex(socket.gethostname().encode("utf-8", "surrogateescape"))[:8]


def temp_cache_prefix(kind: str = "watch-cache") -> str:
    """The start of the name of a temporary cache folder (`kind` "drill": a drill's scratch folder)
    this process makes (`_TEMP_CACHE`)."""
    me = ProcessTag.current()
    return f"phx-{kind}-{_host_tag()}-{me.boot_id}-{me.pid_ns}-{me.pid}-{me.start}-{me.time_ns}."


def remove_stale_cache_folders(tmp: Path | None = None) -> list[Path]:
    """Remove the temporary cache folders that watches (and the scratch folders that drills) of
    this user left in `tmp` (TMPDIR) when killed: only names of that shape, folders (not
    symlinks) owned by this user, whose process provably no longer runs (`ProcessTag.gone`); a
    live watch's, another user's, another host's or one that cannot be told apart is left alone.
    Returns the folders removed."""
    tmp = tmp if tmp is not None else Path(tempfile.gettempdir())
    try:
        names = os.listdir(tmp)
    except OSError:
        return []
    removed = []
    for name in names:
        m = _TEMP_CACHE.fullmatch(name)
        if m is None:
            continue
        path = tmp / name
        try:
            st = path.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        if m.group(1) != _host_tag():
            continue
        numbers = int(m.group(3)), int(m.group(6) or 0), int(m.group(4)), int(m.group(5))
        if not ProcessTag(socket.gethostname(), m.group(2), *numbers).gone(reboot_proves=True):
            continue
        remove_tree(path)  # a drill's copy may hold a restored 0500 folder
        if not path.exists():
            removed.append(path)
    return removed


def watch(
    cfg: Config,
    envx: Environment,
    stop: threading.Event,
    *,
    duration: float | None = None,
    files: bool = True,
    abandon: threading.Event | None = None,
    started_watching: Callable[[], None] | None = None,
) -> WatchResult:
    """Follow every configured SQLite database (and, with `files`, the files) until `stop` is set
    (SIGTERM, SIGINT) or `duration` seconds passed; a last flush writes what was captured. A
    snapshot's child still working then is waited for, unless `abandon` is set (a second signal).
    `started_watching` is called once the watch holds its lock and runs (not for a refused one)."""
    started = time.monotonic()
    hide_process_memory()  # it holds the master secrets for weeks
    # `cryptography`'s OpenSSL before the passphrase's scrypt, which then runs in it: the watch
    # never maps the standard library's (3.4 MiB held for weeks; repo/keys.py `_derive_kek`).
    load_cryptography()
    repo = open_repository(cfg, envx, upgrade=True)
    remove_stale_cache_folders()
    guard = -1
    try:
        # zstandard, which every segment needs, loaded after the scrypt (issue 20) but before any
        # work: a package that cannot be loaded stops the watch here with one sentence, not at the
        # first seal, where the chain would be dropped and a base retried every 30 s for ever.
        zstandard_module()
        guard = _only_watch(state_file(envx, repo.config.id))
        w = Watcher(cfg, envx, repo, files=files)
        w.stop = stop
        w.abandon = abandon or w.abandon
        try:
            w.start_writer()
            if started_watching is not None:
                started_watching()
            while not stop.is_set():
                tick = time.monotonic()
                w.poll()
                if w.due():
                    w.flush()
                else:
                    w._raise_writer()
                w.watch_files()
                if duration is not None and time.monotonic() - started >= duration:
                    break
                stop.wait(max(0.0, POLL_SECONDS - (time.monotonic() - tick)))
            w.lock_free_until = 0.0  # the last segments are written now, not after the lease's gap
            w.poll()
            w.flush()
            w.finish_writes()
            if not w.abandon.is_set():  # a second Ctrl-C: no push now; the next watch or `phx sync` pushes
                w.publish()
            w.spill_all()  # what the repository did not take waits on disk for the next run
            w.save_hashes(stopping=True)
            w.result.unwritten = len(w.queue)
        finally:
            w.close()
        result = w.result
    finally:
        if guard >= 0:
            os.close(guard)
        repo.close()
    result.duration = time.monotonic() - started
    if result.unwritten:
        raise SourceError(
            f"{result.unwritten} capture segment(s) were not written to the first target before the watch stopped; "
            f"they wait in "
            f"{w.spool} and the next `phx watch` writes them first (nothing the databases hold is lost)"
        )
    return result


def _only_watch(state: Path) -> int:
    """An exclusive lock on `<state>.lock`, held (by the descriptor returned) while the watch runs:
    two watches of one repository on one machine would continue the same chain from the same
    saved position and fork it, and a reader follows no chain past a fork."""
    path = state.with_suffix(".lock")
    try:
        make_dirs(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SourceError(f"cannot open {path} ({exc.strerror or exc}); fix its folder's permissions") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UsageError(
            f"another `phx watch` (pid {other}) already follows this repository on this machine; "
            "stop it first (one watch follows every configured database)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release_memory(repo: Repository | None = None) -> None:
    """Give memory back to the system after a snapshot: the repository's sealing and pack-writing
    threads end (started again when the next snapshot needs them), and the C heap's free memory
    is returned: the page runs and packs pass hundreds of MB through malloc, which glibc otherwise
    keeps for the life of the process (measured: 450 MB resident after a base of 560 MB of
    databases, 30 MB after this)."""
    if repo is not None:
        repo.close()
    gc.collect()
    trim_heap()


# -- page hashes ---------------------------------------------------------------------------


class WorkingHashes(SpilledHashes):
    """The page hashes of a database's last state (HASH_SIZE bytes a page, from page 1) in an
    unnamed file of the watch's cache folder, written in place as pages change. In memory they
    would cost 16 bytes a page of every database for as long as the watch runs (2.3 MB for the
    medium sample's 562 MB of databases, 12 MB for 3 GB); they are read whole only when a capture
    cannot name the pages that changed (docs/benchmarks.md, "What `phx watch` holds in its steady
    state").

    When the folder takes no file or no more bytes (full, read-only, removed, not ours) they move
    to memory, as they were kept before, and `failure` says why (the watch warns once): the
    captures go on, where failing would leave every commit uncovered until the folder is fixed."""

    def __init__(self, folder: Path, raw: bytes | memoryview = b"") -> None:
        super().__init__(-1, 0, 0)
        self.folder = folder
        self.memory: bytearray | None = None
        self.failure: OSError | None = None
        try:
            make_dirs(folder)
            with tempfile.TemporaryFile(dir=folder) as f:
                self.fd = os.dup(f.fileno())
        except OSError as exc:
            self._to_memory(exc)
        if raw:
            self.put(0, raw)

    def _to_memory(self, exc: OSError) -> None:
        """From now on in memory: what the file holds (its first `length` bytes) first."""
        self.memory = bytearray(super().__getitem__(slice(None)) if self.fd >= 0 else b"")
        self.close()
        self.failure = exc

    def __getitem__(self, item: slice, /) -> bytes:
        if self.memory is not None:
            return bytes(self.memory[item])
        return super().__getitem__(item)

    def put(self, at: int, data: bytes | memoryview) -> None:
        """Write `data` at byte `at` (into memory once the file takes no more)."""
        if self.memory is None:
            try:
                if os.pwrite(self.fd, data, at) != len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError as exc:
                self._to_memory(exc)
            else:
                self.length = max(self.length, at + len(data))
                return
        assert self.memory is not None
        end = at + len(data)
        if len(self.memory) < end:
            self.memory.extend(bytes(end - len(self.memory)))
        self.memory[at:end] = data
        self.length = max(self.length, end)

    def resize(self, length: int) -> None:
        if self.memory is None:
            try:
                os.ftruncate(self.fd, length)
            except OSError as exc:
                self._to_memory(exc)
            else:
                self.length = length
                return
        assert self.memory is not None
        if len(self.memory) > length:
            del self.memory[length:]
        else:
            self.memory.extend(bytes(length - len(self.memory)))
        self.length = length


def _hash_all(image: Image, key: bytes, folder: Path) -> WorkingHashes:
    out = WorkingHashes(folder)
    ps = image.page_size
    step = ps * _READ_PAGES
    for start in range(0, len(image), step):
        block = memoryview(image[start : start + step])
        digests = b"".join(
            blake3.blake3(block[o : o + ps], key=key).digest(length=HASH_SIZE) for o in range(0, len(block), ps)
        )
        out.put(start // ps * HASH_SIZE, digests)
    return out


def _update(hashes: WorkingHashes, image: Image, changed: frozenset[int], key: bytes) -> None:
    want = image.page_count * HASH_SIZE
    if len(hashes) != want:
        hashes.resize(want)
    for p in sorted(changed):
        if p <= image.page_count:
            hashes.put((p - 1) * HASH_SIZE, blake3.blake3(image.page(p), key=key).digest(length=HASH_SIZE))


def _differ(old: PageHashes, new: PageHashes, page_count: int) -> set[int]:
    """Pages (from 1) of the new state whose hash differs, or that the old one did not have."""
    known = len(old) // HASH_SIZE
    out = {p for p in range(known + 1, page_count + 1)}
    common = min(known, page_count)
    step = 4096  # pages compared per read
    for first in range(0, common, step):
        stop = min(common, first + step)
        a, b = old[first * HASH_SIZE : stop * HASH_SIZE], new[first * HASH_SIZE : stop * HASH_SIZE]
        if a == b:
            continue
        for i in range(stop - first):
            at = i * HASH_SIZE
            if a[at : at + HASH_SIZE] != b[at : at + HASH_SIZE]:
                out.add(first + i + 1)
    return out


def _stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino
