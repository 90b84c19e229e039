"""Run `phx` and SIGKILL it at its Nth I/O call: the crash-consistency suite's fault hook.

    python tests/e2e/killpoint.py ARGS...        # the same as `phx ARGS...`, with the hook

Everything lives here, in test support; Phoenix's code has no hook of its own. The script wraps,
in the `phx` process only, the calls through which Phoenix changes anything on disk or in a
store, counts them, and kills the process with SIGKILL just before the Nth one:

- os.write, os.pwrite, os.fsync, os.fdatasync, os.ftruncate, os.replace, os.rename, os.link,
  os.symlink, os.unlink, os.rmdir, os.mkdir (local repositories, restores, the cache, state files);
- every object a target writes or deletes (S3, R2 and Git as well as local disk);
- SQLite's backup API into a live database (`sqlite_live.apply_copy`): there the kill comes after
  a seeded delay of up to 20 ms, from another thread, so that it lands inside SQLite's own writes.

Environment:

- PHX_KILL_AT=N: kill before the Nth counted call (unset or 0: only count);
- PHX_KILL_MATCH=TEXT: count only calls whose arguments (paths; a descriptor's path) hold TEXT,
  or, when TEXT holds a `*`, whose description (`unlink(/full/path)`) matches it as a pattern;
- PHX_KILL_AFTER=CALL:TEXT: count nothing until the first call CALL (say `replace`) whose
  arguments hold TEXT has returned (a backup's commit point: `replace:/snapshots/`), so that
  the kill points are those of what follows it (the retention after a backup);
- PHX_KILL_REPORT=FILE: written at exit with the number of calls counted (a run that was not
  killed), or at the kill with `killed at call N: <call>`;
- PHX_KILL_SEED: seeds the delay inside SQLite calls;
- PHX_KILL_SIGNAL=TERM (or INT, HUP): send that signal instead of SIGKILL. The process stops as
  `phx` stops at a user's signal (its handler raises in the main thread, so a call made there
  is not made); the report still names the call, and the exit code is 128 + the signal's;
- PHX_KILL_ONLY=changes: count only the calls that change what is visible (a rename, link,
  unlink or rmdir; a target's object written or deleted), the points between which a crash
  leaves one state or the next (the key rotation's kill test walks every one of them).
- PHX_TEST_INDEX_PART_BLOBS=N: index objects of at most N blobs (repo/repository.py
  INDEX_PART_BLOBS), so that a small sample's index is written in several parts.
- PHX_TEST_MAX_INDEX_OBJECTS=N: a prune merges the index objects once more than N are live
  (repo/prune.py MAX_INDEX_OBJECTS), so that a few backups are enough.

Threads share one counter, so with parallel writers the Nth call is not always the same one; the
seed fixes N, and the report names the call that was hit.
"""

from __future__ import annotations

import atexit
import fnmatch
import functools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_ORIGINAL_WRITE = os.write
_ORIGINAL_OPEN = os.open
_ORIGINAL_CLOSE = os.close
_lock = threading.Lock()
_count = 0
_kill_at = int(os.environ.get("PHX_KILL_AT") or 0)
_match = os.environ.get("PHX_KILL_MATCH") or ""
_report = os.environ.get("PHX_KILL_REPORT") or ""
_rng = random.Random(os.environ.get("PHX_KILL_SEED") or 0)
_changes_only = os.environ.get("PHX_KILL_ONLY") == "changes"
_after_call, _, _after_text = (os.environ.get("PHX_KILL_AFTER") or "").partition(":")
_signal = signal.Signals[f"SIG{os.environ.get('PHX_KILL_SIGNAL') or 'KILL'}"]
_hit = threading.Event()  # the kill point was reached (a stop signal lets the process go on to exit)
_started = threading.Event()
if not _after_call:
    _started.set()

OS_CALLS = (
    "write",
    "pwrite",
    "fsync",
    "fdatasync",
    "ftruncate",
    "replace",
    "rename",
    "link",
    "symlink",
    "unlink",
    "rmdir",
    "mkdir",
)
CHANGE_CALLS = ("replace", "rename", "link", "unlink", "rmdir")


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"


def _describe(name: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> str:
    """The call with its paths; a path relative to a folder descriptor (`dir_fd`, `src_dir_fd`,
    `dst_dir_fd`: how a local repository reaches its objects) is shown in full."""
    kwargs = kwargs or {}
    folders = (kwargs.get("src_dir_fd", kwargs.get("dir_fd")), kwargs.get("dst_dir_fd", kwargs.get("dir_fd")))
    parts = []
    for a, folder in zip(args[:2], folders, strict=False):
        if isinstance(a, int) and name in ("write", "pwrite", "fsync", "fdatasync", "ftruncate"):
            parts.append(_fd_path(a))
        elif isinstance(a, str | bytes | os.PathLike):
            path = os.fsdecode(a)
            parts.append(os.path.join(_fd_path(folder), path) if isinstance(folder, int) else path)
    return f"{name}({', '.join(parts)})"


def _write_report(text: str) -> None:
    if not _report:
        return
    fd = _ORIGINAL_OPEN(_report, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _ORIGINAL_WRITE(fd, text.encode(errors="replace"))
    finally:
        _ORIGINAL_CLOSE(fd)


def _counted(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Count this call if it matches; return its number (0 when not counted)."""
    global _count
    if not _started.is_set():
        return 0
    what = _describe(name, args, kwargs) if (_match or _kill_at) else name
    if _match and not (fnmatch.fnmatchcase(what, _match) if "*" in _match else _match in what):
        return 0
    with _lock:
        _count += 1
        n = _count
    if n == _kill_at:
        _hit.set()
        _write_report(f"killed at call {n}: {what}\n")
    return n


def _kill() -> None:
    os.kill(os.getpid(), _signal)
    # Never returns: SIGKILL ends the process at once; a stop signal's handler raises here (in
    # the main thread) before the call is made.
    time.sleep(10)


def _wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def hooked(*args: Any, **kwargs: Any) -> Any:
        if _counted(name, args, kwargs) == _kill_at and _kill_at:
            _kill()
        result = fn(*args, **kwargs)
        if not _started.is_set() and name == _after_call and _after_text in _describe(name, args, kwargs):
            _started.set()
        return result

    return hooked


def _wrap_inside(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Kill from another thread a few milliseconds into the call (inside native code)."""

    @functools.wraps(fn)
    def hooked(*args: Any, **kwargs: Any) -> Any:
        if _counted(name, args, kwargs) == _kill_at and _kill_at:
            threading.Timer(_rng.uniform(0, 0.02), _kill).start()
        return fn(*args, **kwargs)

    return hooked


def install() -> None:
    if os.environ.get("PHX_TEST_INDEX_PART_BLOBS"):
        import phoenix_backup.repo.repository as repository

        repository.INDEX_PART_BLOBS = int(os.environ["PHX_TEST_INDEX_PART_BLOBS"])
    if os.environ.get("PHX_TEST_MAX_INDEX_OBJECTS"):
        import phoenix_backup.repo.prune as prune

        prune.MAX_INDEX_OBJECTS = int(os.environ["PHX_TEST_MAX_INDEX_OBJECTS"])
    for name in CHANGE_CALLS if _changes_only else OS_CALLS:
        setattr(os, name, _wrap(name, getattr(os, name)))
    # Every backend's mutating calls (remote stores write nothing through os.*), counted on the
    # outermost wrapper of the standard stack every target is opened with (storage/wrappers.py),
    # so that S3 and Git are not imported where they are not used.
    from phoenix_backup.storage.wrappers import LimitedBackend

    for method in ("write", "delete"):
        setattr(LimitedBackend, method, _wrap(f"store.{method}", getattr(LimitedBackend, method)))
    if not _changes_only:
        from phoenix_backup.sinks import sqlite_live

        sqlite_live.apply_copy = _wrap_inside("apply_copy", sqlite_live.apply_copy)
    atexit.register(lambda: None if _hit.is_set() else _write_report(f"calls {_count}\n"))


def main() -> None:
    install()
    from phoenix_backup.cli.main import main as phx_main

    sys.argv = ["phx", *sys.argv[1:]]
    phx_main()


# -- used by the tests -------------------------------------------------------------------------

SCRIPT = Path(__file__).resolve()


def run_killed(args: list[str], env: dict[str, str], report: Path, timeout: float = 180) -> tuple[str, int, str]:
    """Run `phx ARGS` under the hook with `env` (which sets the PHX_KILL_* variables, the report
    among them at `report`); the outcome as `read_report` gives it."""
    cmd = [sys.executable, str(SCRIPT), *args]
    subprocess.run(
        cmd, env={**env, "PHX_KILL_REPORT": str(report)}, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout
    )
    return read_report(report)


def read_report(path: Path) -> tuple[str, int, str]:
    """("calls", total, "") for a run that ended, ("killed", N, the call) for a killed one."""
    text = path.read_text().strip() if path.exists() else ""
    if text.startswith("killed at call "):
        head, _, call = text.partition(": ")
        return "killed", int(head.split()[-1]), call
    if text.startswith("calls "):
        return "calls", int(text.split()[1]), ""
    return "none", 0, ""


if __name__ == "__main__":
    main()
