"""The logs of scheduled runs: ~/.argentos/backup/logs/backup.log (drill.log for drills), each
rotated at MAX_BYTES with KEEP older files (backup.log.1 is the newest of them), so a schedule never
fills the disk."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path

from phoenix_backup.dirs import make_dirs
from phoenix_backup.errors import shown
from phoenix_backup.redaction import redact

LOG_NAME = "backup.log"
DRILL_LOG_NAME = "drill.log"
MAX_BYTES = 1024 * 1024
KEEP = 5


def log_dir(home: Path) -> Path:
    return home / ".argentos" / "backup" / "logs"


def running_lock(folder: Path, name: str) -> Path:
    """The file a scheduled run holds a shared lock (flock) on while it runs: the kernel drops it
    when the run ends, killed (SIGKILL, a reboot) or not, so `running` tells a run still going from
    one that was killed, which its log alone (a start and no end) cannot."""
    return folder / f".{name}.running"


@contextlib.contextmanager
def holding(folder: Path, name: str) -> Iterator[None]:
    """Hold `running_lock` for the run (shared: overlapping runs each hold it). A lock that cannot
    be taken never stops the run."""
    fd = -1
    with contextlib.suppress(OSError):
        fd = os.open(running_lock(folder, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        yield
    finally:
        if fd >= 0:
            os.close(fd)


def running(folder: Path, name: str) -> bool:
    """Whether a scheduled run of the log `name` holds its `running_lock` now."""
    try:
        fd = os.open(running_lock(folder, name), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def log_name(kind: str) -> str:
    """The log of a scheduled job: backup.log, or drill.log for the drill job."""
    return DRILL_LOG_NAME if kind == "drill" else LOG_NAME


class RunLog:
    """A scheduled run's log. `secrets` gives the secrets the run knows at each write (the
    environment's, then the config's once it is read): every line is redacted as a terminal's error
    is (`redact`), since the log is a plain file the scheduled run's messages and a library's error
    text (a bug's) go to unseen."""

    def __init__(
        self,
        folder: Path,
        *,
        name: str = LOG_NAME,
        max_bytes: int = MAX_BYTES,
        keep: int = KEEP,
        secrets: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self.folder = folder
        self.secrets = secrets
        self.name = name
        self.path = folder / name
        self.max_bytes = max_bytes
        self.keep = keep
        make_dirs(folder)
        self.rotate_if_needed()

    def rotate_if_needed(self) -> bool:
        try:
            if self.path.stat().st_size < self.max_bytes:
                return False
        except FileNotFoundError:
            return False
        with contextlib.suppress(FileNotFoundError):
            (self.folder / f"{self.name}.{self.keep}").unlink()
        for n in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.folder / f"{self.name}.{n}", self.folder / f"{self.name}.{n + 1}")
        os.replace(self.path, self.folder / f"{self.name}.1")
        return True

    def write(self, text: str, *, report: bool = False) -> None:
        """One message (a notice, an error) as one line, its newline, tab or escape shown escaped
        (`shown`): a file name's newline would forge a line of the log, such as the "scheduled
        backup starting" that `phx status` reads as the last scheduled run. `report`: a result's
        text, whose lines (names already shown escaped) each stay a line."""
        stamp = datetime.now().astimezone().isoformat(timespec="seconds")
        # Redacted first, whole: a secret is found as it is, before its characters are escaped, and
        # before a report is cut into lines (a passphrase file's two lines stayed in the log, one
        # half a line, when each line was redacted alone).
        said = redact(text, list(self.secrets()))
        lines = [shown(line) for line in (said.split("\n") if report else [said])]
        # O_APPEND keeps concurrent writers' lines whole; 0600 because errors may name paths.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        # A name that is not UTF-8 as its bytes, as a terminal gets it (surrogateescape): strict
        # UTF-8 raised, and a notice naming such a file stopped the scheduled run it reported on.
        with os.fdopen(fd, "a", encoding="utf-8", errors="surrogateescape") as f:
            f.write("".join(f"{stamp} {line}\n" for line in lines))
