"""A restore's files fsynced and renamed on threads of their own (docs/restore-checks.md), attacked:
an fsync failing on one file among many or on every file (more files than may wait for their
fsync at once), a rename refused, Ctrl-C, SIGTERM or SIGHUP on a slow disk (more moments with
`PHX_TEST_HEAVY=1`), and a process that may open few files. Each ends in one sentence and the
right exit code, with no temporary file left, no file in place that is not the snapshot's, and
each folder fsynced after the last rename into it.

Faults come from a `sitecustomize` module on the restore's PYTHONPATH (as in
tests/e2e/test_restore_sync_overlap.py): it wraps `os.fsync` and `os.rename` for paths below the
destination, and notes in order each rename into a folder and each fsync of a folder."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from e2e_support import PHX, Sandbox, numbered_notes

# The sandboxes' helpers (backup, restore_to, verify, snapshots) run phx in this process
pytestmark = pytest.mark.phx_in_process

FAULTS = """
import atexit, errno, json, os, resource, stat, threading, time
_dest = os.environ["FAULT_BELOW"]
_size = int(os.environ.get("FAULT_FSYNC_SIZE", "-2"))  # -1: every file
_errno = int(os.environ.get("FAULT_ERRNO", "0"))
_rename_to = os.environ.get("FAULT_RENAME_TO", "")
_slow = float(os.environ.get("FAULT_SLOW", "0"))
if os.environ.get("FAULT_NOFILE"):  # as `ulimit -n` would
    _hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(os.environ["FAULT_NOFILE"]), _hard))
_real_fsync, _real_rename = os.fsync, os.rename
_lock = threading.Lock()
_events = []

def _path(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""

def _fsync(fd):
    path = _path(fd)
    if not path.startswith(_dest):
        return _real_fsync(fd)
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        time.sleep(_slow)
        if _size == -1 or st.st_size == _size:
            raise OSError(_errno, os.strerror(_errno))
        return _real_fsync(fd)
    _real_fsync(fd)
    with _lock:
        _events.append(("folder fsynced", path))

def _rename(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
    folder = _path(dst_dir_fd) if dst_dir_fd is not None else os.path.dirname(os.path.abspath(dst))
    if _rename_to and folder.startswith(_dest) and os.path.basename(dst) == _rename_to:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), src, None, dst)
    _real_rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
    if folder.startswith(_dest):
        with _lock:
            _events.append(("renamed into", folder))

_close_named = os.environ.get("FAULT_CLOSE_NAMED", "")
_real_close = os.close

def _close(fd):
    path = _path(fd) if _close_named else ""
    _real_close(fd)
    if path.startswith(_dest) and os.path.basename(path) == _close_named:
        raise OSError(errno.EIO, os.strerror(errno.EIO))  # as NFS may say on close, after the fsync

os.fsync = _fsync
os.rename = _rename
os.close = _close

@atexit.register
def _report():
    with open(os.environ["FAULT_REPORT"], "w") as f:
        json.dump(_events, f)
"""

COUNT = 90  # more files than SYNC_BACKLOG


def _size_of(i: int) -> int:
    return 32 * (100 + i)


def _faults(sb: Sandbox, tmp_path: Path, dest: Path, **faults: object) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(FAULTS)
    env = dict(sb.env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env["FAULT_BELOW"] = str(dest)
    env["FAULT_REPORT"] = str(tmp_path / "events.json")
    env.update({f"FAULT_{k.upper()}": str(v) for k, v in faults.items()})
    return env


def _renamed_before_last_folder_fsync_missing(tmp_path: Path) -> list[str]:
    """Folders a file was renamed into after the last fsync of that folder."""
    events = json.loads((tmp_path / "events.json").read_text())
    last = {folder: i for i, (what, folder) in enumerate(events) if what == "folder fsynced"}
    return sorted({f for i, (what, f) in enumerate(events) if what == "renamed into" and last.get(f, -1) < i})


def _check_restored(dest: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    """What is in place is the snapshot's, no temporary file is left; return what is in place."""
    notes = dest / "workspace" / "notes"
    got = {p.name: p.read_bytes() for p in notes.iterdir()} if notes.exists() else {}
    assert {k: v for k, v in got.items() if files.get(k) != v} == {}
    assert list(dest.rglob(".phx-tmp-*")) == []
    return got


@pytest.mark.parametrize(("code", "said"), [(errno.EIO, "Input/output error"), (errno.ENOSPC, "no space left")])
def test_an_fsync_failing_on_one_file_among_many_stops_the_restore_with_its_name(
    sandbox: Sandbox, tmp_path: Path, code: int, said: str
) -> None:
    sb = sandbox
    files = numbered_notes(sb, COUNT)
    snap = sb.backup()
    dest = tmp_path / "restored"
    env = _faults(sb, tmp_path, dest, fsync_size=_size_of(17), errno=code, slow=0.01)
    res = sb.phx("restore", "--backup", snap["id"], "--to", dest, env=env, check=1, timeout=120)
    assert res.err.strip().splitlines() == [res.err.strip()]  # one sentence, no traceback
    assert said in res.err and "workspace/notes/n017.md" in res.err, res.err
    got = _check_restored(dest, files)
    assert "n017.md" not in got
    assert _renamed_before_last_folder_fsync_missing(tmp_path) == []


def test_an_fsync_failing_on_every_file_of_more_than_the_backlog_ends_without_hanging(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = sandbox
    files = numbered_notes(sb, COUNT)
    snap = sb.backup()
    dest = tmp_path / "restored"
    env = _faults(sb, tmp_path, dest, fsync_size=-1, errno=errno.EIO)
    res = sb.phx("restore", "--backup", snap["id"], "--to", dest, env=env, check=1, timeout=120)
    assert "Input/output error while restoring" in res.err and "Traceback" not in res.err, res.err
    assert _check_restored(dest, files) == {}


def test_a_refused_rename_stops_the_restore_and_leaves_no_temporary_file(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    files = numbered_notes(sb, COUNT)
    snap = sb.backup()
    dest = tmp_path / "restored"
    env = _faults(sb, tmp_path, dest, rename_to="n017.md", slow=0.01)
    res = sb.phx("restore", "--backup", snap["id"], "--to", dest, env=env, check=1, timeout=120)
    assert "permission denied while restoring workspace/notes/n017.md" in res.err, res.err
    assert "the folder workspace/notes in the destination" in res.err and "None" not in res.err, res.err
    assert "n017.md" not in _check_restored(dest, files)
    assert _renamed_before_last_folder_fsync_missing(tmp_path) == []


# (signal, seconds after the first file, seconds to a second signal or None)
STOPS = [(signal.SIGINT, 0.0, None), (signal.SIGINT, 0.5, None), (signal.SIGTERM, 0.0, None)]
STOPS += [(signal.SIGTERM, 0.5, 0.05), (signal.SIGHUP, 0.3, None)]
# A second Ctrl-C 200 ms into the stop: before, it raised KeyboardInterrupt inside the stop, which
# then left a temporary file that no journal named (the next command never removed it).
STOPS += [(signal.SIGINT, 0.1, 0.2)]
if os.environ.get("PHX_TEST_HEAVY") == "1":
    STOPS += [
        (sig, after, again)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        for after in (0.1, 0.2, 0.8, 1.2, 1.6)
        for again in (None, 0.0, 0.02, 0.2)
    ]


@pytest.mark.parametrize(("sig", "after", "again"), STOPS)
def test_ctrl_c_on_a_slow_disk_leaves_only_whole_files_and_their_folders_synced(
    sandbox: Sandbox, tmp_path: Path, sig: signal.Signals, after: float, again: float | None
) -> None:
    """Ctrl-C (SIGINT), SIGTERM (systemd's stop, `kill`) and SIGHUP (a terminal closed) stop the
    restore alike, with exit 128 + the signal's number (before, SIGTERM and SIGHUP ended it at once,
    leaving its temporary files for the next restore's journal). A second Ctrl-C or SIGTERM while it
    stops ends it at once, as a kill would (a second SIGHUP changes nothing): the files in place
    are still whole, the fsync of their folders may be skipped, and the next command removes the
    temporary files."""
    sb = sandbox
    files = numbered_notes(sb, 300)
    snap = sb.backup()
    dest = tmp_path / "restored"
    # Each file's fsync is slowed so that the restore outlasts the signal by 2 s at least (300
    # fsyncs on eight threads): with 50 ms for all, a signal 1.6 s in had 0.2 s to spare, which a
    # loaded machine's late wake-up of this test could take, and the restore ended with exit 0.
    env = _faults(sb, tmp_path, dest, slow=max(0.05, (after + 2.0) * 8 / 300))
    cmd = [PHX, "restore", "--backup", snap["id"], "--to", str(dest)]
    proc = subprocess.Popen(cmd, env=env, cwd=sb.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any((dest / "workspace").rglob("*.md")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)  # until files are being written (a Ctrl-C during start-up is another matter)
    time.sleep(after)
    proc.send_signal(sig)
    if again is not None:
        time.sleep(again)
        proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    # The fsyncs last 2 s past the signal at least (above): the restore is still writing.
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert ("interrupted" in err or (again is not None and "stopped at once" in err)) and "Traceback" not in err, err
    if again is not None:
        # A second signal ends it at once, as a kill would: the next command removes the
        # temporary files (the restore's journal).
        sb.phx("list")
    _check_restored(dest, files)
    assert list((sb.cache / "restore-journal").glob("*")) == [], "the restore's journal is deleted"
    if again is None:
        assert _renamed_before_last_folder_fsync_missing(tmp_path) == []


def test_a_process_that_may_open_few_files_restores_many(sandbox: Sandbox, tmp_path: Path) -> None:
    """Each file waiting for its fsync holds two descriptors: with `ulimit -n 64` a restore of a
    few hundred files worked when each writer fsynced its own, and must still."""
    sb = sandbox
    files = numbered_notes(sb, 300)
    snap = sb.backup()
    dest = tmp_path / "restored"
    env = _faults(sb, tmp_path, dest, nofile=64, slow=0.01)
    sb.phx("restore", "--backup", snap["id"], "--to", dest, env=env, timeout=120)
    assert _check_restored(dest, files) == files
    assert _renamed_before_last_folder_fsync_missing(tmp_path) == []


def test_an_error_closing_a_file_already_fsynced_and_renamed_loses_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """close() may report an error (NFS) for a file whose fsync succeeded: its data is on disk and
    its name in place, so the restore goes on, and its folder is still fsynced after the rename."""
    sb = sandbox
    files = numbered_notes(sb, COUNT)
    snap = sb.backup()
    dest = tmp_path / "restored"
    env = _faults(sb, tmp_path, dest, close_named="n017.md", slow=0.01)
    sb.phx("restore", "--backup", snap["id"], "--to", dest, env=env, timeout=120)
    assert _check_restored(dest, files) == files
    assert _renamed_before_last_folder_fsync_missing(tmp_path) == []
