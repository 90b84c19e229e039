"""Repository locks: shared for backups, exclusive for prune and key changes; one object per lock
under `locks/`.

A lock names its host, boot id, PID namespace, pid and the process's start time. It is refreshed
every REFRESH_SECONDS while held and counts as stale once not refreshed for STALE_SECONDS by
every clock that can tell: its own time (its holder's clock; not believed when it lies ahead of
ours) and the store's time of its object, which each refresh rewrites, read on the store's clock
(`LockManager.store_skew`). So a holder whose clock is behind is not taken for gone while it
refreshes, one whose clock is ahead does not block for ever once it stops, and a machine whose own
clock is ahead does not take a live lock for stale. A store whose clock cannot be read (it takes
no write) leaves no lock judged stale on our clock alone; a lock stale by our clock but not by the
store's (a store whose times never advance) is stale once watched unchanged for STALE_SECONDS
(`LockManager.unchanged_for`). So is a lock no clock can date (`LockManager.undated`: its own
time ahead of ours, its object's time unknown or ahead of the store's clock: a lock planted dated
2100, or a dead host's whose clock was years ahead), which no age ever made stale before; never
while its process provably runs here. A lock whose
process is provably gone is removed with a notice; any other stale lock is reported with the
command that removes it, never broken silently.

"Provably gone" needs all of: the same host name, the same boot, the same PID namespace (a pid
means nothing in another one: containers that share the host name, e.g. `--uts=host`, number
their processes from 1), and a pid that no longer runs or runs with another start time. A lock
that cannot be decoded (empty, random bytes, sealed with other keys) ages by its object's time
in the store; `phx unlock` removes it once stale (a fresh one may be the live lock of a `phx key
rotate` elsewhere, moved under the new key before its commit point), `phx unlock --all` at once.

A holder confirms its lock before it commits (`HeldLock.confirm`): a lock that another process
removed (`phx unlock`, a prune that judged it dead) means that prune may have run meanwhile, so
the holder does not commit. Nor does one whose lock went unrefreshed for LOST_AFTER_SECONDS on
`holder_clock`, a clock that counts a suspend (the monotonic clock stands still while the machine
sleeps, the wall clock others judge by does not): another machine may have judged it stale and be
removing it while the holder commits.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from phoenix_backup.dirs import make_dirs, trustworthy, write_private
from phoenix_backup.errors import (
    CorruptObject,
    LockNotReleased,
    ObjectNotFound,
    PhoenixError,
    RepositoryError,
    RepositoryLocked,
    StorageError,
)
from phoenix_backup.repo.crypto import Sealer, sha256_hex
from phoenix_backup.storage.base import Backend
from phoenix_backup.users import username

REFRESH_SECONDS = 300
# How often `phx watch` (ops/watch.py) lets go of its shared lock for a moment.
WATCH_LEASE_SECONDS = 60

STALE_SECONDS = 1800
# A holder whose lock has gone unrefreshed this long on its own suspend-counting clock
# (`holder_clock`: the machine slept, or the process stalled) may have had it judged stale elsewhere
# and removed, and a prune run: it commits nothing under it (`HeldLock.confirm`). Two refresh
# intervals below STALE_SECONDS: a commit confirmed just under it lands well before any judge's verdict.
LOST_AFTER_SECONDS = STALE_SECONDS - 2 * REFRESH_SECONDS
# What a command that stops at a lock it can no longer trust says it did meanwhile (`HeldLock.confirm`).
COMMITTED = "nothing was committed"
MORE_COMMITTED = "nothing more was committed"
DELETED = "nothing more was deleted"
# A long run of deletions or copies reads its locks back from the store at least this often, in
# objects and in seconds of `holder_clock` (`Confirmer.step`; the doubt is looked at every object).
CONFIRM_EVERY = 100
CONFIRM_SECONDS = 30.0
# How often the refresh thread looks at `holder_clock` between refreshes: its waits run on the
# monotonic clock, which stands still while the machine sleeps, so after a resume it refreshes
# within this long rather than waiting out REFRESH_SECONDS more.
REFRESH_LOOK_SECONDS = 5.0
# How long a measurement of the store's clock is used (`LockManager.stale`): `phx watch` runs for
# days, and a clock can be set, or drift, meanwhile.
SKEW_MAX_AGE = REFRESH_SECONDS
# A measurement older than this may say a lock is live, never that it is stale: it is taken again.
SKEW_CONFIRM = 2.0
# A lock's time further ahead of our clock than this is not believed (its holder's clock is ahead).
MAX_CLOCK_AHEAD = REFRESH_SECONDS
LOCK_AAD = b"phoenix v1 lock"
# Where, in the cache folder, this user's processes note since when they have seen each lock's
# bytes unchanged (`LockManager.unchanged_for`).
SIGHTINGS = "lock-sightings.json"


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _namespace(kind: str) -> int:
    """The inode of this process's `kind` namespace (Linux), 0 when unknown. Inodes are unique
    among the namespaces alive on one boot."""
    try:
        return os.stat(f"/proc/self/ns/{kind}").st_ino
    except OSError:
        return 0


def pid_namespace() -> int:
    return _namespace("pid")


def time_namespace() -> int:
    # Start times in /proc/<pid>/stat are shifted by a time namespace's boot-time offset.
    return _namespace("time")


def _proc_is_ours() -> bool:
    """Whether /proc shows our PID namespace's pids (`unshare --pid` without a new /proc mount
    leaves the parent's /proc in place, where our pids name other processes)."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


def _start_of(stat: str) -> int:
    # The command name may hold spaces and parentheses: split after the last ')'.
    return int(stat[stat.rfind(")") + 2 :].split()[19])


_own_start: int | None = None  # this process's start time, once read


def _forget_own_start() -> None:
    global _own_start
    _own_start = None


os.register_at_fork(after_in_child=_forget_own_start)  # a forked child reads its own


def own_start_time() -> int:
    """This process's start time in clock ticks since boot, 0 when unknown. A process's start time
    never changes, so it is read once per process: a restore named each temporary file with it and
    read /proc/self/stat once per file (issue 20)."""
    global _own_start
    if _own_start is None:
        try:
            _own_start = _start_of(Path("/proc/self/stat").read_text())
        except (OSError, ValueError, IndexError):
            return 0  # not kept: read again next time
    return _own_start


def process_start_time(pid: int) -> int | None:
    """Start time of `pid` (in our PID namespace) in clock ticks since boot; None when there is no
    such process; 0 when it runs but its start time cannot be read."""
    if pid <= 0:
        return 0  # not a process id: nothing can be proved (kill(0) would mean our group)
    if pid > MAX_PID:
        return None  # no system gives such a pid (and `os.kill` would raise OverflowError)
    if _proc_is_ours():
        try:
            return _start_of(Path(f"/proc/{pid}/stat").read_text())
        except (ValueError, IndexError):
            return 0
        except OSError:
            pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return 0
    return 0


@dataclass(frozen=True)
class ProcessTag:
    """Who wrote a lock, a restore journal or a watch's temporary folder: enough to prove later,
    perhaps from another machine sharing the folder, that the process no longer runs."""

    host: str | None  # the host name; None: not recorded (a restore journal of an older Phoenix)
    boot_id: str  # "" when unknown
    pid_ns: int  # 0 when unknown: a pid in an unknown PID namespace means nothing here
    time_ns: int  # 0 when unknown: the start time is then not comparable
    pid: int
    start: int  # clock ticks since boot, as seen in the time namespace `time_ns`

    @classmethod
    def current(cls) -> ProcessTag:
        return cls(socket.gethostname(), boot_id(), pid_namespace(), time_namespace(), os.getpid(), own_start_time())

    def gone(self, *, reboot_proves: bool) -> bool:
        """True only when the process is provably dead, never on a doubt.

        Its host must be ours (a folder shared over NFS holds other machines' files, whose boot id
        differs from ours while they run). Another boot of this host proves it only with
        `reboot_proves` (a user's own cache folder and TMPDIR; not a repository's locks, which
        machines of one host name may share and which are removed without a delay). Else the same
        boot and PID namespace, and its pid no longer runs, or runs with another start time seen
        in the same time namespace (start times are shifted by a time namespace's offset)."""
        ours = boot_id()
        if self.host is None:
            # Unrecorded host: only the same boot id (a random number per boot) says "this machine".
            if not self.boot_id or self.boot_id != ours:
                return False
        elif self.host != socket.gethostname():
            return False
        if not self.boot_id or not ours:
            return False
        if self.boot_id != ours:
            return reboot_proves
        if not self.pid_ns or self.pid_ns != pid_namespace():
            return False
        now = process_start_time(self.pid)
        if now is None:
            return True
        return now != 0 and now != self.start and self.time_ns == time_namespace()

    def runs(self) -> bool:
        """True only when the process provably runs here: same host, boot, PID and time
        namespaces, and its pid is a live process (not a zombie) with the recorded start time. A
        stopped process (SIGSTOP, a suspended machine, a debugger) runs: it resumes and writes on."""
        return self.state() != ""

    def state(self) -> str:
        """The process's state letter in /proc (R, S, D, T for stopped, t for traced) when it
        provably runs here (`runs`); "" otherwise."""
        if self.host != socket.gethostname() or not self.boot_id or self.boot_id != boot_id():
            return ""
        if not self.pid_ns or self.pid_ns != pid_namespace() or not self.time_ns or self.time_ns != time_namespace():
            return ""
        if not self.start or not 0 < self.pid <= MAX_PID or not _proc_is_ours():
            return ""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            state = stat[stat.rfind(")") + 2]
            return state if _start_of(stat) == self.start and state not in "ZX" else ""
        except (OSError, ValueError, IndexError):
            return ""


@dataclass(frozen=True)
class LockInfo:
    name: str
    host: str
    boot_id: str
    pid: int
    process_start: int
    username: str
    exclusive: bool
    time: float  # last refresh (an unreadable lock: its object's time), seconds since the epoch
    command: str
    pid_ns: int = 0  # 0: not recorded (a lock of an older Phoenix): death is unprovable
    time_ns: int = 0
    created: float = 0.0  # when the lock was taken; 0 when unknown
    problem: str | None = None  # why the lock cannot be decoded; None for a readable lock
    written: float | None = None  # when the store says the object was last written; None: unknown
    digest: str = ""  # SHA-256 of the object's bytes (every refresh changes them); "": not read

    @property
    def readable(self) -> bool:
        return self.problem is None

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="seconds")
        if not self.readable:
            if self.written is None:
                return f"unreadable lock {self.name} ({self.problem}), its time not given by the store"
            return f"unreadable lock {self.name} ({self.problem}), written {when}"
        kind = "exclusive" if self.exclusive else "shared"
        ahead = self.time - time.time()
        skew = f" ({ahead / 60:.0f} minutes ahead of this machine's clock)" if ahead > MAX_CLOCK_AHEAD else ""
        return (
            f"{kind} lock by {self.command} (pid {self.pid}) on {self.host} as {self.username}, refreshed {when}{skew}"
        )

    def is_stale(self, now: float, skew: float = 0.0) -> bool:
        """Not refreshed for STALE_SECONDS by every clock that can tell: the lock's own time (its
        holder's clock), unless it lies in the future, and the store's time of its object (which
        every refresh rewrites), read on the store's clock (`skew`: how far the store's clock is
        ahead of ours, `LockManager.store_skew`; `LockManager.stale` also takes a lock watched
        unchanged for STALE_SECONDS). A holder whose clock is behind is not taken for
        gone while it refreshes; one whose clock is ahead does not block for ever once it stops;
        and a judge whose own clock is ahead of the store's and the holder's does not take a lock
        being refreshed for stale."""
        ages = [] if self.written is None else [now + skew - self.written]
        if self.time <= now + MAX_CLOCK_AHEAD:
            ages.append(now - self.time)
        return bool(ages) and all(age > STALE_SECONDS for age in ages)

    def process_gone(self) -> bool:
        """True only when we can prove the owner is dead: same host, boot and PID namespace, and
        no such process (or one that started at another time)."""
        if not self.readable:
            return False
        tag = ProcessTag(self.host, self.boot_id, self.pid_ns, self.time_ns, self.pid, self.process_start)
        return tag.gone(reboot_proves=False)

    def process_runs(self) -> bool:
        """True only when we can prove the owner still runs on this machine (`ProcessTag.runs`)."""
        return self.process_state() != ""

    def process_state(self) -> str:
        """The owner's state letter when it provably runs on this machine (`ProcessTag.state`)."""
        if not self.readable:
            return ""
        return ProcessTag(self.host, self.boot_id, self.pid_ns, self.time_ns, self.pid, self.process_start).state()

    def is_ours(self) -> bool:
        """Whether this lock was written by this very process."""
        return (
            self.readable
            and self.host == socket.gethostname()
            and self.boot_id == boot_id()
            and self.pid_ns == pid_namespace()
            and self.pid == os.getpid()
            and self.process_start == own_start_time()
        )


# Linux's pid_max ceiling; a lock naming another pid is damaged (and 0 or a negative pid would make
# the liveness check signal a whole process group).
MAX_PID = 2**22


def decode_lock(raw: bytes, name: str) -> LockInfo:
    """A lock from its plaintext; any fault is one CorruptObject naming the lock."""
    try:
        d = json.loads(raw)
        if not isinstance(d, dict):
            raise TypeError("it is not a JSON object")
        texts = {k: d[k] for k in ("host", "bootId", "username")}
        command = d.get("command", "phx")
        pid, start, when, exclusive = d["pid"], d["processStart"], d["time"], d["exclusive"]
        # Absent in locks of an older Phoenix (0: unknown, so the owner's death is never provable).
        pid_ns, time_ns, created = d.get("pidNs", 0), d.get("timeNs", 0), d.get("created", 0)
        if not all(isinstance(v, str) for v in (*texts.values(), command)) or not isinstance(exclusive, bool):
            raise TypeError("a field has the wrong type")
        for text in (*texts.values(), command):
            text.encode("utf-8", "surrogateescape")  # printed: no lone surrogate (JSON's \ud800)
        if not (_is_int(pid) and 0 < pid <= MAX_PID and _is_int(start) and start >= 0):
            raise ValueError("pid or processStart is out of range")
        if not (_is_int(pid_ns) and 0 <= pid_ns < 2**64 and _is_int(time_ns) and 0 <= time_ns < 2**64):
            raise ValueError("pidNs or timeNs is out of range")
        # Seconds since the epoch, within what datetime can print (the year 9999).
        for value in (when, created):
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 253402300799:
                raise ValueError("time or created is out of range")
        return LockInfo(
            name=name,
            host=texts["host"],
            boot_id=texts["bootId"],
            pid=pid,
            process_start=start,
            username=texts["username"],
            exclusive=exclusive,
            time=float(when),
            command=command,
            pid_ns=pid_ns,
            time_ns=time_ns,
            created=float(created),
        )
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        raise CorruptObject(f"lock {name} is malformed: {exc}") from exc


def _boot_clock() -> float | None:
    """Seconds since boot, suspend included (Linux); None where there is no such clock."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return None


def holder_clock() -> float:
    """Seconds on a clock that counts the time the machine was suspended, by which a lock's holder
    measures its own gaps (other machines judge its lock by wall time, which a suspend does not
    stop): Linux's CLOCK_BOOTTIME; on macOS `clock_gettime(CLOCK_MONOTONIC)`, which Apple documents
    as continuing to increment while the system is asleep (unlike `time.monotonic`, which is
    mach_absolute_time, and CLOCK_UPTIME_RAW); elsewhere `time.monotonic`, which may stand still
    across a suspend (docs/reliability.md says so)."""
    boot = _boot_clock()
    if boot is not None:
        return boot
    if sys.platform == "darwin":
        return time.clock_gettime(time.CLOCK_MONOTONIC)
    return time.monotonic()


# A sightings file larger than this is not read (it holds one short entry per lock watched).
MAX_SIGHTINGS_BYTES = 4 << 20
# At most this many locks are watched at once (`LockManager.unchanged_for`): past it, the locks
# seen last are not noted until some of those watched go, which only delays their verdicts
# (~300 bytes each).
MAX_SIGHTINGS = 4096


def _read_sightings(path: Path) -> dict[str, object]:
    """The sightings noted in `path`, if this user wrote them and no one else may rewrite them (a
    planted note could hasten a verdict); {} otherwise. The open file is what is judged, never the
    name (another file swapped in after a check is not read), and only a regular file (a FIFO would
    hold the command up), of a sane size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or not trustworthy(st) or st.st_size > MAX_SIGHTINGS_BYTES:
                return {}
            loaded = json.loads(f.read(MAX_SIGHTINGS_BYTES + 1))
    except (OSError, ValueError, RecursionError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def unreadable_lock_fix(info: LockInfo) -> str:
    """What removes an unreadable lock (another key's, damaged or planted) that no clock leaves
    undated (`LockManager.undated_reason` says what happens to one that is), said the same by every
    command, `phx unlock` and `phx doctor`. Its age is its object's time on the store."""
    return (
        f"it may be the live lock of a `phx key rotate` running elsewhere; `phx unlock` removes it once "
        f"{STALE_SECONDS // 60} minutes old by the store's clock, and if no Phoenix runs anywhere on this repository, "
        "`phx unlock --all` removes it now"
    )


class LockManager:
    def __init__(
        self, backend: Backend, sealer: Sealer, notice: Callable[[str], None], also: Sequence[Sealer] = ()
    ) -> None:
        self.backend = backend
        self.sealer = sealer
        self.notice = notice
        # Other keys a lock may be sealed under: a `phx key rotate` killed on this machine left
        # its lock under the key it was moving from or to (see Repository.__init__).
        self.also = tuple(also)
        self.held: list[HeldLock] = []  # the locks this process holds through this manager
        # How far the store's clock is ahead of ours (None: it cannot be read), when (monotonic)
        # that was measured, and our clock less the monotonic one then (a step of our clock since
        # makes the measurement wrong); None before the first measurement.
        self._skew: tuple[float | None, float, float] | None = None
        # Why the store's clock could not be read (its probe was refused), for the messages.
        self.clock_problem: str | None = None
        # Why this process cannot watch a lock unchanged (`unchanged_for`), for the messages.
        self.watch_problem: str | None = None
        # The names the last listing of `locks/` gave (`all`): the sightings of others are dropped.
        self._listed: set[str] | None = None

    def read(self, name: str) -> LockInfo:
        return self._decode(self.backend.read(name), name)

    def _decode(self, sealed: bytes, name: str) -> LockInfo:
        for other in self.also:
            try:
                raw = other.open(sealed, LOCK_AAD, name)
            except CorruptObject:
                continue
            return decode_lock(raw, name)
        return decode_lock(self.sealer.open(sealed, LOCK_AAD, name), name)

    def all(self) -> list[LockInfo]:
        out = []
        listed = list(self.backend.list("locks/"))
        self._listed = {info.name for info in listed}
        for info in listed:
            digest = ""
            try:
                sealed = self.backend.read(info.name)
                digest = sha256_hex(sealed)
                out.append(replace(self._decode(sealed, info.name), written=info.modified, digest=digest))
            except ObjectNotFound:
                continue  # released while we listed
            except CorruptObject:
                # A lock we cannot read still blocks, as an exclusive one, but it ages by the time
                # the store gives its object (a store that gives none: its time is now, and no
                # clock can date it: `undated`).
                written = info.modified if info.modified is not None else time.time()
                problem = "empty" if info.size == 0 else f"{info.size} bytes that cannot be decoded"
                out.append(
                    LockInfo(
                        info.name,
                        "?",
                        "",
                        0,
                        0,
                        "?",
                        True,
                        written,
                        "unknown",
                        problem=problem,
                        written=info.modified,
                        digest=digest,
                    )
                )
        return out

    def acquire(self, exclusive: bool, command: str, *, ran: str | None = None) -> HeldLock:
        # `phx watch` holds a shared lock all the time and lets go for a moment at least every
        # WATCH_LEASE_SECONDS: an exclusive command waits for that moment instead of failing.
        deadline = time.monotonic() + WATCH_LEASE_SECONDS + 10
        noticed = False
        while True:
            try:
                self._check_conflicts(exclusive)
                break
            except RepositoryLocked:
                watching = [i for i in self.others() if i.exclusive is False and i.command == "watch"]
                blocking = [i for i in self.others() if i.exclusive or i.command != "watch"]
                if not (exclusive and watching and not blocking) or time.monotonic() > deadline:
                    raise
                if not noticed:
                    self.notice("waiting (up to a minute) for `phx watch` to let go of the repository")
                    noticed = True
                time.sleep(0.5)
        name = f"locks/{os.urandom(16).hex()}"
        lock = HeldLock(self, name, exclusive, command, ran)
        lock.write()
        # Two processes may have passed the check at once: look again after our lock is visible.
        try:
            self._check_conflicts(exclusive, ignore=name)
        except RepositoryLocked:
            lock.release_after_error()
            raise
        lock.start_refresh()
        self.held.append(lock)
        return lock

    def _check_conflicts(self, exclusive: bool, ignore: str | None = None) -> None:
        now = time.time()
        for info in self.all():
            if info.name == ignore:
                continue
            if info.process_gone():
                self.backend.delete(info.name)
                self.notice(f"removed a lock left by a process that no longer runs: {info.describe()}")
                continue
            if not (exclusive or info.exclusive):
                continue
            if self.unjudged(info, now):
                raise RepositoryLocked(
                    f"the repository is locked: {info.describe()}; {self.unjudged_reason(info)}; if no Phoenix runs "
                    "anywhere on this repository, `phx unlock --all` removes it now"
                )
            if self.stale(info, now):
                raise RepositoryLocked(
                    f"the repository has a stale {info.describe()}; if no Phoenix runs there, "
                    "remove it with `phx unlock`"
                )
            if self.undated(info, now):
                raise RepositoryLocked(f"the repository is locked: {info.describe()}; {self.undated_reason(info, now)}")
            if not info.readable:
                fix = unreadable_lock_fix(info)
                raise RepositoryLocked(f"the repository has an {info.describe()}; it blocks every command: {fix}")
            raise RepositoryLocked(
                f"the repository is locked: {info.describe()}{self.watch_note(info, now, frozen_only=True)}; wait for "
                "it to finish and try again"
            )

    def others(self) -> list[LockInfo]:
        """Every lock present except those this process holds here."""
        mine = {lock.name for lock in self.held}
        return [info for info in self.all() if info.name not in mine]

    def confirm_held(self, nothing: str = COMMITTED, *, present: bool = True) -> None:
        """Raise unless every lock this process holds here is still in the store and its own, and
        not doubted (`HeldLock.confirm`; `nothing` says what the error's reader lost: nothing).
        Every commit point and batch of deletions goes through this, or `Confirmer` for a long run."""
        for lock in list(self.held):
            lock.confirm(nothing, present=present)

    def confirmer(self) -> Confirmer:
        """A `Confirmer` of the locks this process holds here."""
        return Confirmer([self])

    def confirm_exclusive(self, command: str) -> None:
        """Raise RepositoryError unless this process holds an exclusive lock here, still in the
        store and its own: `command` (forget, prune) deletes under a lock its caller took, and
        must not run without one, nor after another process removed it (`phx unlock`)."""
        if not any(lock.exclusive for lock in self.held):
            raise RepositoryError(
                f"{command} was called without the repository's exclusive lock; nothing was deleted; this is a bug, "
                "please report it"
            )
        self.confirm_held()

    def stale(self, info: LockInfo, now: float) -> bool:
        """`info.is_stale`, its object's age read on the store's clock (measured only when our
        clock says the lock is stale or it is dated ahead of our clock (`undated`), and again once
        the measurement is SKEW_MAX_AGE old or our clock was set since: `phx watch` runs for days;
        a stale verdict is never given on a measurement older than SKEW_CONFIRM: a verdict can be
        delayed, never hastened). A store whose clock cannot be read (it takes no write) leaves
        the lock live: our clock alone may be ahead (`unjudged` tells). A lock no clock can date
        (`undated`) is stale once watched unchanged for STALE_SECONDS, unless its process
        provably runs here."""
        if not info.is_stale(now):
            # No clock can date it: only the watch can tell (a live holder's refreshes change its bytes).
            return self.undated(info, now) and not info.process_runs() and self.unchanged_for(info) > STALE_SECONDS
        if info.process_runs():
            return False  # a holder that runs here was stopped, not lost: it resumes and writes on
        mono, wall = time.monotonic(), time.time()
        skew = self._skew_now(mono, wall)
        assert self._skew is not None
        # Our clock set back since the caller read `now` (once for all the locks it judges): the
        # measurement is against the new setting, and the old `now` with it would age every lock.
        now = min(now, time.time())
        if skew is not None and info.is_stale(now, skew) and mono - self._skew[1] > SKEW_CONFIRM:
            # The store's clock may have been set since: look again.
            self._skew = (skew := self.store_skew("lock check"), mono, wall - mono)
            now = min(now, time.time())
        if skew is not None and info.is_stale(now, skew):
            return True
        # The store's clock says it is young, or cannot be read: stale only once watched unchanged
        # for STALE_SECONDS (a store whose times do not advance, a FUSE mount giving one time).
        return self.unchanged_for(info) > STALE_SECONDS

    def _skew_now(self, mono: float, wall: float) -> float | None:
        """`store_skew`, measured again once SKEW_MAX_AGE old or when our clock was set since
        (`mono` and `wall`: the monotonic clock and ours, read now)."""
        if self._skew is None or mono - self._skew[1] > SKEW_MAX_AGE or abs(wall - mono - self._skew[2]) > 1:
            self._skew = (self.store_skew("lock check"), mono, wall - mono)
        return self._skew[0]

    def undated(self, info: LockInfo, now: float) -> bool:
        """Whether no clock can date `info`: its own time lies more than MAX_CLOCK_AHEAD ahead of
        our clock (so it is not believed), and its object's time on the store is unknown or lies
        more than MAX_CLOCK_AHEAD ahead of the store's clock (our clock when the store's cannot be
        read); or it is unreadable and the store gives its object no time. Such a lock never ages
        (a lock planted dated 2100 by whoever can write the storage, a dead host's whose clock was
        years ahead): `stale` judges it by `unchanged_for` alone, which needs no clock but this
        machine's boot clock. Measures the store's clock only for a lock dated ahead of ours that
        the store gives a time."""
        if not info.readable and info.written is None:
            return True  # its time is our clock's now, for want of any
        if info.time <= now + MAX_CLOCK_AHEAD:
            return False
        if info.written is None:
            return True
        skew = self._skew_now(time.monotonic(), time.time())
        return info.written > now + (skew or 0.0) + MAX_CLOCK_AHEAD

    def undated_reason(self, info: LockInfo, now: float) -> str:
        """What happens to an `undated` lock, and when (it is not stale yet)."""
        way_out = "if no Phoenix runs anywhere on this repository, `phx unlock --all` removes it now"
        # A readable lock's description says already how far ahead its time is.
        ahead = "ahead of" if info.readable else f"{(info.time - now) / 60:.0f} minutes ahead of"
        if info.written is None:
            store = "not given by the store"
        elif self._skew is not None and self._skew[0] is None:
            # Judged on our clock alone (`undated`): ours may be the one behind.
            store = (
                f"ahead of this machine's clock too, and the store's clock cannot be read ({self.clock_problem}), "
                "so this machine's clock may be the one behind"
            )
        else:
            store = "ahead of the store's clock"
        dated = "no clock can tell how long ago it was written: " + (
            "the store gives its object no time"
            if not info.readable and info.written is None
            else f"its time is {ahead} this machine's clock, its object's time {store}"
        )
        if info.process_state():
            return (
                f"{dated}; its process (pid {info.pid}) runs on this machine, so it is never judged stale while "
                f"that process runs; if pid {info.pid} is not a Phoenix, {way_out}"
            )
        minutes = self.unchanged_for(info) / 60
        return (
            f"{dated}; once this user's processes on this machine have seen it unchanged for {STALE_SECONDS // 60} "
            f"minutes ({minutes:.0f} so far{self._watch_problem()}) it is stale and `phx unlock` removes it "
            f"(a live holder rewrites it every {REFRESH_SECONDS // 60} minutes); {way_out}"
        )

    def unchanged_for(self, info: LockInfo) -> float:
        """Seconds for which this user's processes on this boot have seen `info`'s bytes unchanged
        (every refresh changes them: a new time, a new nonce), on this machine's boot clock, which
        no setting of a clock moves; 0 the first time, which is noted. A clock that cannot tell
        (another boot, no boot clock) or a note that cannot be kept only delays a verdict."""
        from phoenix_backup.repo.cache import cache_root  # repo.cache imports this module

        clock, boot = _boot_clock(), boot_id()
        if clock is None or not boot:
            self.watch_problem = "this machine has no boot clock to watch it by"
        if not info.digest or clock is None or not boot:
            return 0.0
        path = cache_root() / SIGHTINGS
        seen = _read_sightings(path)
        # The boot clock is shifted by a time namespace's offset (a container restored elsewhere by
        # CRIU): a note taken in another one is not on our clock.
        clock_id = f"{boot} {time_namespace()}"
        key = f"{self.backend.location} {info.name}"
        entry = seen.get(key)
        if isinstance(entry, dict) and entry.get("digest") == info.digest and entry.get("boot") == clock_id:
            since = entry.get("since")
            if isinstance(since, int | float) and not isinstance(since, bool) and 0 <= since <= clock:
                self.watch_problem = None
                return clock - since
        # Only this boot's notes, and of this store only the locks its last listing gave (a `phx
        # watch` takes a new lock every minute): the note stays as small as the locks watched.
        listed, store = self._listed, self.backend.location
        kept = {
            k: v
            for k, v in seen.items()
            if isinstance(v, dict)
            and v.get("boot") == clock_id
            and isinstance(v.get("since"), int | float)
            and not (listed is not None and v.get("store") == store and v.get("name") not in listed)
        }
        kept[key] = {"digest": info.digest, "boot": clock_id, "since": clock, "store": store, "name": info.name}
        full = None
        if len(kept) > MAX_SIGHTINGS:
            # The locks watched longest stay noted, so that they go stale and `phx unlock` removes
            # them; pushing them out for newer ones instead (more locks than the note holds, planted
            # by whoever can write the storage) watched each from 0 again at every look, for ever.
            oldest = sorted(kept, key=lambda k: kept[k]["since"])[:MAX_SIGHTINGS]
            kept = {k: kept[k] for k in oldest}
            if key not in kept:
                full = (
                    f"this machine already watches {MAX_SIGHTINGS} other locks, the most it notes (it is watched once "
                    "`phx unlock` has removed some of them)"
                )
        try:
            if kept != seen:  # a full note left as it was is not written again (thousands of planted locks)
                make_dirs(path.parent)
                write_private(path, json.dumps(kept).encode())
            self.watch_problem = full
        except OSError as exc:
            self.watch_problem = f"the note of it cannot be kept in {path.parent} ({exc.strerror or exc})"
        return 0.0

    def watch_note(self, info: LockInfo, now: float, *, frozen_only: bool = False) -> str:
        """For a lock stale by our clock but not judged so: how long it has been watched. With
        `frozen_only`, only when the store gives its object the time it gives one written now (to
        the second): the sign of a store whose times do not advance (or of a refresh this instant)."""
        if self.undated(info, now) and not self.stale(info, now):
            return f" ({self.undated_reason(info, now)})"
        if not info.is_stale(now) or self.stale(info, now) or self.unjudged(info, now):
            return ""
        if state := info.process_state():
            # Never judged stale, so the way out is named too: pid 1 and its start time, readable by
            # anyone, make a lock planted with the key that runs for ever.
            way_out = "`phx unlock --all` removes it now, only if no Phoenix runs anywhere on this repository"
            minutes = (now - info.time) / 60
            late = f"its process runs on this machine but has not refreshed the lock for {minutes:.0f} minutes"
            if state in "Tt":
                return (
                    f" ({late}: it is stopped or suspended; `kill -CONT {info.pid}` lets it finish; if pid "
                    f"{info.pid} is not a Phoenix, {way_out})"
                )
            return (
                f" ({late} though it is not stopped: it hangs, or pid {info.pid} is not a Phoenix (`ps -p {info.pid}` "
                f"shows it); {way_out})"
            )
        skew = None if self._skew is None else self._skew[0]  # measured by `stale`
        if skew is None or info.written is None or (frozen_only and abs(now + skew - info.written) > 1):
            return ""
        age = max(0.0, now + skew - info.written) / 60
        minutes = self.unchanged_for(info) / 60
        return (
            f" (by the store's clock it was written {age:.0f} minutes ago; if the store's times do not advance, as "
            f"on some FUSE mounts, `phx unlock` removes it once this user has seen it unchanged on this machine for "
            f"{STALE_SECONDS // 60} minutes: {minutes:.0f} so far{self._watch_problem()}; `phx unlock --all` removes "
            "it now, only if no Phoenix runs anywhere on this repository)"
        )

    def _watch_problem(self) -> str:
        """Why the watch of `unchanged_for` cannot advance here, if it cannot: the lock is then
        never judged stale that way, and only `phx unlock --all` removes it."""
        return "" if self.watch_problem is None else f", and it will stay 0: {self.watch_problem}"

    def unjudged(self, info: LockInfo, now: float) -> bool:
        """Whether `info` is stale by our clock but was not judged so because the store's clock
        cannot be read."""
        return (
            info.is_stale(now)
            and not self.stale(info, now)
            and self._skew is not None
            and self._skew[0] is None
            and not info.process_runs()
        )

    def unjudged_reason(self, info: LockInfo) -> str:
        minutes = self.unchanged_for(info) / 60
        return (
            f"it looks stale by this machine's clock, but the store's clock cannot be read ({self.clock_problem}), "
            "and this machine's clock may be ahead, so it is not judged stale here; `phx unlock` removes it once "
            f"the store takes a write again, or once seen unchanged for {STALE_SECONDS // 60} minutes (seen "
            f"unchanged for {minutes:.0f} so far, by this user on this machine{self._watch_problem()})"
        )

    def store_skew(self, command: str) -> float | None:
        """How far the store's clock is ahead of ours (negative: behind): the time the store gives
        a lock object this process wrote, less our time when it wrote it. The object is a lock
        held here (one stat), else a shared lock written for the purpose and removed at once.
        0 when the store gives no time (nor then to any lock). None when it takes no write (a full
        disk, a read-only mount): its clock is unknown, and our clock alone may be ahead, so no
        lock is judged stale by it (`clock_problem` says why). The ages of objects (locks, packs)
        are read on the store's clock, so that a machine whose clock runs ahead does not take a
        lock being refreshed for stale, nor a pack just written for old."""
        for lock in list(self.held):
            with lock._mutex:  # not while a refresh rewrites it: its time and `wrote` must match
                info, wrote = self.backend.stat(lock.name), lock.wrote_now()
            if info is not None and info.modified is not None:
                return info.modified - wrote
        probe = HeldLock(self, f"locks/{os.urandom(16).hex()}", False, command)
        try:
            probe.write()
        except PhoenixError as exc:
            self.clock_problem = f"it takes no write: {exc}"
            return None
        try:
            info = self.backend.stat(probe.name)
        finally:
            self.backend.delete(probe.name)
        return 0.0 if info is None or info.modified is None else info.modified - probe.wrote_now()

    def set_back(self) -> float:
        """How far our clock was set back since the locks this process holds were last written (0:
        not set back, or no lock held): a time read before then is that much ahead of our clock as
        `store_skew` measures on it now."""
        return max((lock.set_back() for lock in list(self.held)), default=0.0)

    def unlock(self, remove_all: bool = False) -> list[LockInfo]:
        """Remove stale and dead locks (all locks with `remove_all`); return what was removed. An
        unreadable lock goes once stale by its object's time: until then it may be live (a
        `phx key rotate` elsewhere moved its lock under the new key before its commit point)."""
        removed = []
        now = time.time()
        for info in self.all():
            if remove_all or info.process_gone() or self.stale(info, now):
                self.backend.delete(info.name)
                removed.append(info)
            elif note := self.watch_note(info, now):
                self.notice(f"kept the {info.describe()}{note}")
            elif self.unjudged(info, now):
                self.notice(
                    f"kept the {info.describe()}: {self.unjudged_reason(info)}; `phx unlock --all` removes it now "
                    "(only if no Phoenix runs anywhere on this repository)"
                )
            elif not info.readable:
                self.notice(f"kept the {info.describe()}: {unreadable_lock_fix(info)}")
        return removed


class HeldLock:
    def __init__(self, manager: LockManager, name: str, exclusive: bool, command: str, ran: str | None = None) -> None:
        self.manager = manager
        self.name = name
        self.exclusive = exclusive
        self.command = command
        # The command the user ran, which errors tell to run again: `phx sync` holds a lock whose
        # command is "replicate", and "run the replicate again" names nothing the user can run.
        self.ran = ran or command
        self.created = time.time()
        self.lost: str | None = None  # why the lock is no longer ours, once a refresh found out
        self.wrote = 0.0  # our time when the store had last taken the lock object (`LockManager.store_skew`)
        self._setting = 0.0  # our clock less the monotonic one then (`wrote_now`)
        # `holder_clock` when the lock was taken and when the store last took a refresh of it
        # (read before the write: a gap is never measured short).
        self.taken = self.refreshed = holder_clock()
        # Why the lock may be lost though still in the store: it went unrefreshed for
        # LOST_AFTER_SECONDS (a suspend, a stall), so another machine may have judged it stale.
        self.doubt: str | None = None
        # Why the last refresh failed, until one succeeds: a gap of refreshes the store refused (an
        # outage) is said as such, not as a suspend.
        self.refresh_failed: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()  # a refresh never writes while `rekey` moves the lock

    def rekey(self, sealer: Sealer) -> None:
        """Move this lock under another key (`phx key rotate` past its commit point, so that
        readers with the new key can read it). The new lock object is written before the old one
        goes: the repository is never unlocked in between. A lock that was removed meanwhile is
        not moved (that would hide the removal): RepositoryError, as `confirm` says."""
        self.confirm()
        with self._mutex:
            old = self.name
            self.manager.sealer = sealer
            self.name = f"locks/{os.urandom(16).hex()}"
            self._write()
            self.manager.backend.delete(old)

    def write(self) -> None:
        with self._mutex:
            self._write()

    def _write(self) -> None:
        clock = holder_clock()
        # A gap that ends now is noted before this write hides it: the refresh thread measured it
        # before reading the lock back (`_check_present`, a store call a suspend may fall in).
        self._note_gap(clock - self.refreshed)
        doc = {
            "host": socket.gethostname(),
            "bootId": boot_id(),
            "pidNs": pid_namespace(),
            "timeNs": time_namespace(),
            "pid": os.getpid(),
            "processStart": own_start_time(),
            "username": username(),
            "exclusive": self.exclusive,
            "created": self.created,
            "time": time.time(),
            "command": self.command,
            # Every refresh changes the lock's bytes (`LockManager.unchanged_for`), even where they are
            # not sealed with a random nonce (a repository without encryption) and the holder's clock
            # stands still (it would otherwise write the same bytes, and be taken for gone).
            "refresh": os.urandom(8).hex(),
        }
        data = self.manager.sealer.seal(json.dumps(doc).encode(), LOCK_AAD)
        self.manager.backend.write(self.name, data)
        # Once the store has it: the store's time of the object is earlier on its clock, so the skew
        # measured from it can only make the store's clock look behind (a verdict delayed by the
        # write's latency, never hastened; with our time before the write, a slow store looked ahead).
        self.wrote = time.time()
        self._setting = self.wrote - time.monotonic()
        self.refreshed = clock

    def unrefreshed_for(self) -> float:
        """Seconds since the store last took a refresh of this lock, on `holder_clock` (a suspend
        counts); past LOST_AFTER_SECONDS the lock is doubted from then on (`doubt`)."""
        gap = holder_clock() - self.refreshed
        self._note_gap(gap)
        return gap

    def _note_gap(self, gap: float) -> None:
        """Doubt the lock from now on when it went `gap` seconds unrefreshed, past LOST_AFTER_SECONDS."""
        if gap > LOST_AFTER_SECONDS and self.doubt is None:
            if self.refresh_failed is not None:
                cause = f"the lock {self.name} could not be refreshed for {gap / 60:.0f} min ({self.refresh_failed})"
            else:
                cause = f"this machine slept or stalled for {gap / 60:.0f} min while holding the lock {self.name}"
            self.doubt = (
                f"{cause}; another machine may have judged it stale (after {STALE_SECONDS // 60} min unrefreshed) "
                "and pruned"
            )

    def held_for(self) -> float:
        """Seconds since the lock was taken, on `holder_clock` (a suspend counts)."""
        return holder_clock() - self.taken

    def wrote_now(self) -> float:
        """`wrote` on our clock as it is now set: a clock set forward an hour since the lock was
        last written (a refresh is up to REFRESH_SECONDS old) made the store's clock look an hour
        behind ours, which it is not, and prune aged young packs by that hour. A suspend since moves
        it later (the monotonic clock stands still then), which can only delay a verdict."""
        return self.wrote + (time.time() - time.monotonic() - self._setting)

    def set_back(self) -> float:
        """How far our clock was set back since the lock was last written (never negative)."""
        return max(0.0, self._setting - (time.time() - time.monotonic()))

    def confirm(self, nothing: str = COMMITTED, *, present: bool = True) -> None:
        """Raise RepositoryError unless the lock is still in the store and still ours, and was
        refreshed within LOST_AFTER_SECONDS on `holder_clock`: another process that removed it, or
        that judged it stale while this machine slept (and may remove it while we commit), may
        have pruned meanwhile, so nothing may be committed. `nothing` ends the error's cause ("nothing
        more was deleted"); without `present` the store is not read (`Confirmer.step` between its
        reads): only the doubt and a loss already found out are."""
        self.unrefreshed_for()
        self._check_present(nothing, read=present)
        if self.doubt is not None:
            raise RepositoryError(f"{self.doubt}; {nothing}; run the {self.ran} again")

    def _check_present(self, nothing: str = COMMITTED, *, read: bool = True) -> None:
        """Raise RepositoryError unless the lock is still in the store and still ours (without
        `read`: unless a refresh or an earlier look found it gone)."""
        if self.lost is None and read:
            try:
                info = self.manager.read(self.name)
                if not info.is_ours():
                    self.lost = f"{self.name} now holds another process's lock"
            except ObjectNotFound:
                self.lost = f"{self.name} was removed by another process (`phx unlock` or a prune)"
            except CorruptObject:
                self.lost = f"{self.name} was overwritten with bytes that cannot be decoded"
        if self.lost is not None:
            raise RepositoryError(
                f"this {self.ran}'s repository lock is gone: {self.lost}; {nothing}; run the {self.ran} again"
            )

    def start_refresh(self) -> None:
        def loop() -> None:
            # The waits run on the monotonic clock, which stands still while the machine sleeps:
            # the refresh is due by `holder_clock`, looked at every REFRESH_LOOK_SECONDS, so that a
            # resumed holder refreshes at once (a doubted lock too: the holder commits nothing
            # under it, `confirm`, but others should not judge it stale while it winds down).
            due = self.refreshed + REFRESH_SECONDS
            while not self._stop.wait(min(REFRESH_LOOK_SECONDS, max(0.0, due - holder_clock()))):
                self.unrefreshed_for()  # a gap past LOST_AFTER_SECONDS is noted before the refresh hides it
                if holder_clock() < due:
                    continue
                due = holder_clock() + REFRESH_SECONDS  # a failed refresh is tried again then
                try:
                    # Never recreate a lock someone removed: the holder must learn it lost it.
                    self._check_present()
                    with self._mutex:
                        # Nor one the holder released while the store answered slowly (`release`
                        # waits only so long for this thread): it would outlive its process.
                        if self._stop.is_set():
                            return
                        self._write()
                    self.refresh_failed = None
                except RepositoryError as exc:
                    self.manager.notice(str(exc))
                    return
                except Exception as exc:  # a refresh failure must not kill the run
                    self.refresh_failed = str(exc)
                    self.manager.notice(f"could not refresh the repository lock: {exc}")

        self._thread = threading.Thread(target=loop, name="phx-lock-refresh", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._mutex:
            if self in self.manager.held:
                self.manager.held.remove(self)
            if self.lost is None:
                try:
                    self.manager.backend.delete(self.name)
                except ObjectNotFound:
                    pass  # gone already: released
                except (StorageError, OSError) as exc:
                    raise LockNotReleased(
                        f"the {self.command} lock {self.name} in {self.manager.backend.location} could not be removed "
                        f"({exc}); run `phx unlock` for that target once it answers (other processes wait for the "
                        "lock until then)"
                    ) from exc

    def release_after_error(self) -> None:
        """Release while another error is on its way out: a lock that cannot be removed is said,
        and the error that ended the command stays the one reported."""
        try:
            self.release()
        except LockNotReleased as exc:
            self.manager.notice(f"warning: {exc}")

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.release()
        else:
            self.release_after_error()


class Confirmer:
    """Confirms the locks a command holds (`LockManager.confirm_held`, on every manager given: a
    replication holds one on each side) before each commit point (`now`) and before each object of
    a long run of deletions or copies (`step`). A step reads the store's copy of each lock every
    CONFIRM_EVERY objects and every CONFIRM_SECONDS of `holder_clock` (the doubt, a clock reading,
    at every object): a suspend mid-way stops the run at the next object, a lock removed meanwhile
    within CONFIRM_EVERY objects, long before a refresh interval's worth of work. Thread-safe: the
    copies of a replication run in parallel."""

    def __init__(self, managers: Sequence[LockManager]) -> None:
        self.managers = list(managers)
        self._since = 0  # objects stepped since the store was last read
        self._read_at: float | None = None  # `holder_clock` then; None: never read
        self._mutex = threading.Lock()

    def now(self, nothing: str) -> None:
        """Confirm every lock held, reading the store: right before a commit point. `nothing`
        says what the error's reader lost ("nothing more was committed")."""
        with self._mutex:
            self._confirm(nothing, present=True)

    def step(self, nothing: str) -> None:
        """Confirm before one more object is deleted or committed ("nothing more was deleted")."""
        with self._mutex:
            due = (
                self._read_at is None
                or self._since >= CONFIRM_EVERY
                or holder_clock() - self._read_at >= CONFIRM_SECONDS
            )
            self._confirm(nothing, present=due)
            self._since += 1

    def _confirm(self, nothing: str, *, present: bool) -> None:
        for manager in self.managers:
            manager.confirm_held(nothing, present=present)
        if present:
            self._since, self._read_at = 0, holder_clock()


@contextlib.contextmanager
def noting_unreleased(lock: AbstractContextManager[object], note: Callable[[str], None]) -> Iterator[None]:
    """Hold `lock` (a `Repository.lock`) around the body; when the body succeeded but the lock
    object could not be removed after it (LockNotReleased), hand that sentence to `note` instead of
    raising: the command's work is done, and its result says it is partial (exit 3)."""
    try:
        with lock:
            yield
    except LockNotReleased as exc:
        note(str(exc))
