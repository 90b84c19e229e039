"""Issue #5, a full disk during an in-place restore: one clear error line (no traceback) naming the
cause, the fix and the undo; no half-written file under its real name and no temporary file left;
the gateway is started again; the safety snapshot rolls the partial restore back, and once there is
room the same restore completes.

The workspace lives on a small tmpfs mounted by the test (root only). Where mounting is not
permitted, the test is skipped with the reason, never faked.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import Sandbox, assert_error, file_manifest
from safe_restore_support import assert_state, build_template, copy_template, gateway_calls, install_gateway

MIB = 1024 * 1024


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, stdin=subprocess.DEVNULL)


@pytest.fixture
def sb(tmp_path: Path) -> Iterator[Sandbox]:
    """A backed-up sample whose workspace is a 24 MiB tmpfs, unmounted afterwards."""
    if not shutil.which("mount") or not shutil.which("umount"):
        pytest.skip("mount/umount are not installed")
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    template = tmp_path / "template"
    build_template(template)
    sandbox = copy_template(template, tmp_path / "sb")
    ws = sandbox.workspace
    # A 6 MB recording the restore must bring back: more than the room left below.
    (ws / "attachments").mkdir()
    (ws / "attachments" / "recording.bin").write_bytes(random.Random(3).randbytes(6 * MIB))
    sandbox.backup()
    saved = tmp_path / "workspace-files"
    shutil.copytree(ws, saved, symlinks=True)
    shutil.rmtree(ws)
    ws.mkdir()
    proc = _run("mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", str(ws))
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        shutil.copytree(saved, ws, symlinks=True, dirs_exist_ok=True)
        shutil.copystat(saved, ws)
        yield sandbox
    finally:
        _run("umount", str(ws))
        _run("umount", "-l", str(ws))


def test_full_disk_during_an_in_place_restore(sb: Sandbox, tmp_path: Path) -> None:
    ws = sb.workspace
    snapshot_state = sb.state()
    log = tmp_path / "gateway.log"
    install_gateway(sb, log)
    # The agent deleted the recording and edited a few files; then the disk filled up.
    (ws / "attachments" / "recording.bin").unlink()
    for name in ("SOUL.md", "USER.md", "MEMORY.md"):
        (ws / name).write_text(f"# {name}\n\nedited after the backup\n")
    filler = ws / "attachments" / "cache.bin"
    free = shutil.disk_usage(ws).free
    filler.write_bytes(b"\0" * (free - 2 * MIB))  # 2 MiB left: the edited files fit, the recording does not
    prior = sb.state()

    res = sb.phx("restore", "--latest", "--yes", check=None)
    line = assert_error(res, 1, "no space", "free space there", "phx restore --backup")
    assert [c.split()[0] for c in gateway_calls(log)] == ["stop", "start"], "gateway.start must run after a failure"
    # Nothing half-written under a real name, no temporary file left behind.
    now = file_manifest(ws)
    assert "attachments/recording.bin" not in now, "a half-written file under its real name"
    assert [k for k in now if Path(k).name.startswith(".phx-tmp-")] == []
    for rel, entry in now.items():
        if entry[0] == "file":
            old, new = prior["workspace"].get(rel), snapshot_state["workspace"].get(rel)
            assert entry[3:] in (old[3:] if old else None, new[3:] if new else None), f"{rel} is torn: {entry}"

    # Rolling back works on the still-full disk: the safety snapshot named in the error.
    safety_id = line.split("phx restore --backup ")[1].split()[0].strip("`")
    sb.phx("restore", "--backup", safety_id, "--yes")
    assert_state(prior, sb.state(), "after rolling back the failed restore")

    # With room again, the same restore completes.
    filler.unlink()
    sb.phx("restore", "--latest", "--yes", "--delete")
    assert_state(snapshot_state, sb.state(), "after the restore with room again")
