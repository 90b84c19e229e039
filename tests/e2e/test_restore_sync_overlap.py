"""A restore's files are fsynced on threads of their own (docs/restore-checks.md): on a slow disk
many files' fsyncs are under way at once instead of one per writer, and every guarantee holds —
each file fsynced before it is renamed into place, a damaged file never in place, no temporary
file left behind, the files that could be restored restored exactly.

A slow disk is made by a `sitecustomize` module on the restore's PYTHONPATH: each fsync of a file
below the destination waits 40 ms after the real fsync, and the module counts how many are under
way at once and notes each file whose name changed before its fsync ended (a rename before the
file was durable)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from e2e_support import Sandbox, damage_blob, numbered_notes

SLOW_FSYNC = """
import atexit, json, os, stat, threading, time
_dest = os.environ["SLOW_FSYNC_BELOW"]
_real = os.fsync
_lock = threading.Lock()
_state = {"now": 0, "most": 0, "files": 0, "renamed_early": []}

def _fsync(fd):
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        path, regular = "", False
    if not (regular and path.startswith(_dest)):
        return _real(fd)
    with _lock:
        _state["now"] += 1
        _state["files"] += 1
        _state["most"] = max(_state["most"], _state["now"])
    try:
        _real(fd)
        time.sleep(0.04)
        if os.readlink(f"/proc/self/fd/{fd}") != path:
            _state["renamed_early"].append(path)
    finally:
        with _lock:
            _state["now"] -= 1

os.fsync = _fsync

@atexit.register
def _report():
    with open(os.environ["SLOW_FSYNC_REPORT"], "w") as f:
        json.dump(_state, f)
"""


def _slow_disk(sb: Sandbox, tmp_path: Path, dest: Path) -> tuple[dict[str, str], Path]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_FSYNC)
    report = tmp_path / "fsyncs.json"
    env = dict(sb.env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env["SLOW_FSYNC_BELOW"] = str(dest)
    env["SLOW_FSYNC_REPORT"] = str(report)
    return env, report


def test_on_a_slow_disk_many_restored_files_are_fsynced_at_once(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    files = numbered_notes(sb, 48)
    snap = sb.backup()
    dest = tmp_path / "restored"
    env, report = _slow_disk(sb, tmp_path, dest)
    sb.phx("restore", "--backup", snap["id"], "--to", dest, env=env)
    got = json.loads(report.read_text())
    restored = dest / "workspace" / "notes"
    assert {p.name: p.read_bytes() for p in restored.iterdir()} == files
    assert got["files"] >= len(files)
    assert got["renamed_early"] == []  # each file durable before its name is in place
    # Two writers fsyncing their own files one at a time had at most two under way.
    assert got["most"] >= 4, got
    assert list(dest.rglob(".phx-tmp-*")) == []


def test_a_damaged_file_among_files_waiting_for_their_fsync_is_never_put_in_place(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = sandbox
    files = numbered_notes(sb, 40)
    snap = sb.backup()
    damage_blob(sb, "workspace/notes/n007.md", snapshot=snap["id"])
    dest = tmp_path / "restored"
    env, report = _slow_disk(sb, tmp_path, dest)
    res = sb.phx("restore", "--backup", snap["id"], "--to", dest, "--json", env=env, check=1)
    assert [d["path"] for d in res.json()["damaged"]] == ["workspace/notes/n007.md"]
    restored = dest / "workspace" / "notes"
    assert not (restored / "n007.md").exists()
    assert {p.name: p.read_bytes() for p in restored.iterdir()} == {k: v for k, v in files.items() if k != "n007.md"}
    assert json.loads(report.read_text())["renamed_early"] == []
    assert list(dest.rglob(".phx-tmp-*")) == []
