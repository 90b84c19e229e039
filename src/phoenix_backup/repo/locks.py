"""Repository locks: shared for backups, exclusive for prune; one object per lock under `locks/`.

A lock names its host, boot id, pid and the process's start time. It is refreshed every
REFRESH_SECONDS while held and counts as stale once older than STALE_SECONDS. A lock whose process
is provably gone (same host, same boot, pid absent or started at another time) is removed with a
notice; any other stale lock is reported with the command that removes it, never broken silently.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from phoenix_backup.errors import CorruptObject, ObjectNotFound, RepositoryLocked
from phoenix_backup.repo.crypto import Sealer
from phoenix_backup.storage.base import Backend

REFRESH_SECONDS = 300
STALE_SECONDS = 1800
LOCK_AAD = b"phoenix v1 lock"


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (Linux), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0
        return 0
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19])


@dataclass(frozen=True)
class LockInfo:
    name: str
    host: str
    boot_id: str
    pid: int
    process_start: int
    username: str
    exclusive: bool
    time: float  # last refresh, seconds since the epoch
    command: str

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        when = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="seconds")
        return f"{kind} lock by {self.command} (pid {self.pid}) on {self.host} as {self.username}, refreshed {when}"

    def is_stale(self, now: float) -> bool:
        return now - self.time > STALE_SECONDS

    def process_gone(self) -> bool:
        """True only when we can prove the owner is dead: same host and boot, and no such process."""
        if self.host != socket.gethostname() or not self.boot_id or self.boot_id != boot_id():
            return False
        start = process_start_time(self.pid)
        return start is None or (start != 0 and start != self.process_start)


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
        if not all(isinstance(v, str) for v in (*texts.values(), command)) or not isinstance(exclusive, bool):
            raise TypeError("a field has the wrong type")
        for text in (*texts.values(), command):
            text.encode("utf-8", "surrogateescape")  # printed: no lone surrogate (JSON's \ud800)
        if not (_is_int(pid) and 0 < pid <= MAX_PID and _is_int(start) and start >= 0):
            raise ValueError("pid or processStart is out of range")
        # Seconds since the epoch, within what datetime can print (the year 9999).
        if not isinstance(when, int | float) or isinstance(when, bool) or not 0 <= when < 253402300799:
            raise ValueError("time is out of range")
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
        )
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        raise CorruptObject(f"lock {name} is malformed: {exc}") from exc


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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

    def read(self, name: str) -> LockInfo:
        sealed = self.backend.read(name)
        for other in self.also:
            try:
                raw = other.open(sealed, LOCK_AAD, name)
            except CorruptObject:
                continue
            return decode_lock(raw, name)
        return decode_lock(self.sealer.open(sealed, LOCK_AAD, name), name)

    def all(self) -> list[LockInfo]:
        out = []
        for info in self.backend.list("locks/"):
            try:
                out.append(self.read(info.name))
            except ObjectNotFound:
                continue  # released while we listed
            except CorruptObject:
                # A lock we cannot read still blocks: report it as held by an unknown owner.
                out.append(LockInfo(info.name, "?", "", 0, 0, "?", True, time.time(), "unknown"))
        return out

    def acquire(self, exclusive: bool, command: str) -> HeldLock:
        self._check_conflicts(exclusive)
        name = f"locks/{secrets.token_hex(16)}"
        lock = HeldLock(self, name, exclusive, command)
        lock.write()
        # Two processes may have passed the check at once: look again after our lock is visible.
        try:
            self._check_conflicts(exclusive, ignore=name)
        except RepositoryLocked:
            lock.release()
            raise
        lock.start_refresh()
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
            if info.is_stale(now):
                raise RepositoryLocked(
                    f"the repository has a stale {info.describe()}; if no Phoenix runs there, "
                    "remove it with `phx unlock`"
                )
            raise RepositoryLocked(f"the repository is locked: {info.describe()}; wait for it to finish and try again")

    def unlock(self, remove_all: bool = False) -> list[LockInfo]:
        """Remove stale or dead locks (all locks with `remove_all`); return what was removed."""
        removed = []
        now = time.time()
        for info in self.all():
            if remove_all or info.process_gone() or info.is_stale(now):
                self.backend.delete(info.name)
                removed.append(info)
        return removed


class HeldLock:
    def __init__(self, manager: LockManager, name: str, exclusive: bool, command: str) -> None:
        self.manager = manager
        self.name = name
        self.exclusive = exclusive
        self.command = command
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()  # a refresh never writes while `rekey` moves the lock

    def rekey(self, sealer: Sealer) -> None:
        """Move this lock under another key (`phx key rotate` past its commit point, so that
        readers with the new key can read it). The new lock object is written before the old one
        goes: the repository is never unlocked in between."""
        with self._mutex:
            old = self.name
            self.manager.sealer = sealer
            self.name = f"locks/{secrets.token_hex(16)}"
            self._write()
            self.manager.backend.delete(old)

    def write(self) -> None:
        with self._mutex:
            self._write()

    def _write(self) -> None:
        doc = {
            "host": socket.gethostname(),
            "bootId": boot_id(),
            "pid": os.getpid(),
            "processStart": process_start_time(os.getpid()) or 0,
            "username": _username(),
            "exclusive": self.exclusive,
            "time": time.time(),
            "command": self.command,
        }
        data = self.manager.sealer.seal(json.dumps(doc).encode(), LOCK_AAD)
        self.manager.backend.write(self.name, data)

    def start_refresh(self) -> None:
        def loop() -> None:
            while not self._stop.wait(REFRESH_SECONDS):
                try:
                    self.write()
                except Exception as exc:  # a refresh failure must not kill the backup
                    self.manager.notice(f"could not refresh the repository lock: {exc}")

        self._thread = threading.Thread(target=loop, name="phx-lock-refresh", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._mutex:
            self.manager.backend.delete(self.name)

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _username() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):
        return str(os.getuid())
