"""Issue 15, suite 5: resources. A full repository disk and a full restore disk have their own tests
(test_full_disk.py, test_safe_restore_full_disk.py); here:

- a read-only repository: everything that only reads works (without a lock, saying so); what
  would write fails with one error naming the cause, and loses nothing;
- files changing while they are read: read again, a warning when they never hold still, every
  snapshot consistent, and the next backup saves the final content;
- 100,000 small files and a multi-GB sparse file (PHX_TEST_HEAVY=1: they take minutes), with a
  smaller sample of each in the default run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_support import (
    Result,
    Sandbox,
    assert_error,
    assert_restored,
    mount,
    retention_only,
    run_phx,
    wait_past_racy_window,
)
from pause_support import Paused

# The sandboxes' helpers (the backups that set a test up, the checks after) run phx in this process;
# the commands under test stay real `phx` processes (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
MIB = 1024 * 1024


# -- a read-only repository ----------------------------------------------------------------------


def test_a_read_only_repository_can_be_read(sandbox: Sandbox, tmpfs: Callable[[str], Path], tmp_path: Path) -> None:
    sb = sandbox
    fs = tmpfs("256m")
    repo = fs / "repo"
    sb.write_config(backupDir=str(repo))
    sb.init_repository()
    state = sb.state()
    doc = sb.backup()
    before = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*"))
    proc = mount("-o", "remount,ro", str(fs))
    assert proc.returncode == 0, proc.stderr

    res = sb.phx("verify", "--read-data", "--json")
    assert res.json()["ok"] is True
    assert "read-only: reading it without a lock" in res.err
    sb.restore_to(doc["id"], tmp_path / "restored")
    assert_restored(state, tmp_path / "restored", "restore from a read-only repository")
    assert sb.phx("dump", doc["id"], "SOUL.md").out == (sb.workspace / "SOUL.md").read_text()
    assert [s["id"] for s in sb.snapshots()] == [doc["id"]]

    (sb.workspace / "new.md").write_text("written after the repository went read-only\n")
    assert_error(sb.phx("backup", check=None), 1, "read-only file system", "writable")
    # In place, the safety snapshot cannot be written: nothing is restored, and the error names
    # the way on (before: "choose a writable location", as if the restore wrote the repository).
    soul = (sb.workspace / "SOUL.md").read_bytes()
    (sb.workspace / "SOUL.md").write_text("changed\n")
    res = sb.phx("restore", "--backup", doc["id"], "--yes", check=None)
    assert_error(res, 1, "read-only", "safety snapshot", "--no-safety-snapshot")
    assert (sb.workspace / "SOUL.md").read_text() == "changed\n"
    sb.phx("restore", "--backup", doc["id"], "--yes", "--no-safety-snapshot", "--path", "workspace/SOUL.md")
    assert (sb.workspace / "SOUL.md").read_bytes() == soul
    res = sb.phx("prune", check=1)  # prune reports per target, on stdout
    assert "target local: FAILED: read-only file system" in res.out, res
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == before

    proc = mount("-o", "remount,rw", str(fs))
    assert proc.returncode == 0, proc.stderr
    assert sb.verify("--read-data")["ok"] is True
    sb.backup()


def test_a_prune_elsewhere_never_makes_a_lockless_read_lie(sandbox: Sandbox, tmp_path: Path) -> None:
    """A repository this host sees read-only (a bind mount) while another host prunes it: the
    restore and verify here take no lock, so nothing stops the prune. Held at their first pack
    read while a prune repacks and deletes what they planned to read, they fail with one error
    naming the missing object, never write a wrong byte; run again, they succeed."""
    sb = sandbox
    ws = sb.workspace
    y, z = os.urandom(200_000), os.urandom(200_000)
    (ws / "x.bin").write_bytes(os.urandom(3_000_000))  # only in the first snapshot: pruned away
    (ws / "y.bin").write_bytes(y)
    sb.backup()
    (ws / "x.bin").unlink()
    (ws / "z.bin").write_bytes(z)
    doc = sb.backup()
    view = tmp_path / "view"
    view.mkdir()
    if mount("--bind", str(sb.repo), str(view)).returncode != 0:
        pytest.skip("bind mounts are not allowed here")
    try:
        proc = mount("-o", "remount,ro,bind", str(view))
        assert proc.returncode == 0, proc.stderr
        reader = {**sb.config, "backupDir": str(view)}
        (tmp_path / "reader.json").write_text(json.dumps(reader))
        env = {**sb.env, "PHX_CONFIG": str(tmp_path / "reader.json"), "PHX_CACHE_DIR": str(tmp_path / "reader-cache")}
        dest = tmp_path / "out"
        rounds = [["restore", "--backup", doc["id"], "--to", str(dest)], ["verify", "--read-data"]]
        for n, args in enumerate(rounds):
            if n:  # something new for the next prune to move
                (ws / "x.bin").write_bytes(os.urandom(3_000_000))
                sb.backup()
                (ws / "x.bin").unlink()
                doc = sb.backup()
            aged = time.time() - 7200  # older than prune's grace period for young packs
            for p in (sb.repo / "data").rglob("*"):
                os.utime(p, (aged, aged))
            with Paused(args, env, tmp_path / f"pause-{n}", at="before:read_range:data/") as run:
                run.wait_paused()
                sb.write_config(retention=retention_only(last=1))
                sb.phx("forget")
                pruned = sb.phx("prune").out
                assert "freed 0 B" not in pruned, pruned
                code = run.finish()
            res = Result(code, run.out, run.err, args)
            if args[0] == "restore":
                assert_error(res, 1, "missing")
            else:  # verify reports on stdout
                assert code == 1 and "is missing from" in res.out and "Traceback" not in res.err, res
            assert "a prune run elsewhere" in res.err
            for name, data in (("y.bin", y), ("z.bin", z)):
                got = dest / "workspace" / name
                assert not got.exists() or got.read_bytes() == data, f"{name}: wrong bytes restored"
        env["PHX_CACHE_DIR"] = str(tmp_path / "reader-cache-2")
        assert run_phx(["restore", "--backup", doc["id"], "--to", str(tmp_path / "again")], env).code == 0
        assert (tmp_path / "again" / "workspace" / "y.bin").read_bytes() == y
        assert run_phx(["verify", "--read-data"], env).code == 0
    finally:
        subprocess.run(["umount", str(view)], capture_output=True, stdin=subprocess.DEVNULL)


# -- files changing while they are read ----------------------------------------------------------

WRITER = """
import os, sys
path, stop = sys.argv[1], sys.argv[2]
size = os.path.getsize(path)
i = 0
with open(path, "r+b") as f:
    while not os.path.exists(stop):
        f.seek((i * 7919 * 4096) % size)
        f.write(os.urandom(4096))
        f.flush()
        i += 1
"""


def test_files_changing_while_read(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    busy = sb.workspace / "busy.log"
    busy.write_bytes(os.urandom(16 * MIB))  # read for long enough to be written meanwhile
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(busy), str(stop)])
    try:
        time.sleep(0.3)
        assert writer.poll() is None
        res = sb.phx("backup", "--json")
        doc = res.json()
    finally:
        stop.touch()
        writer.wait(timeout=30)
    assert any("busy.log changed while it was read" in w for w in doc["warnings"]), doc["warnings"]
    assert doc["incomplete"] == []
    # The snapshot is consistent with itself: every byte read back matches its SHA-256.
    assert sb.verify("--read-data")["ok"] is True
    first = tmp_path / "first"
    sb.restore_to(doc["id"], first)  # the restore checks the file against its SHA-256

    wait_past_racy_window()
    state = sb.state()
    doc2 = sb.backup()
    assert not [w for w in doc2["warnings"] if "changed while it was read" in w]
    sb.restore_to(doc2["id"], tmp_path / "second")
    assert_restored(state, tmp_path / "second", "the backup after the writes stopped")


def test_a_file_holding_more_than_its_size_says_is_read_whole(sandbox: Sandbox, tmp_path: Path) -> None:
    """Reads stop near a file's stat size, so that a file appended for ever cannot keep a backup
    reading; a file whose size says less than it holds (0, on virtual file systems such as
    /proc, and some FUSE ones) must still be saved whole, not as an empty file."""
    sb = sandbox
    target = sb.workspace / "version.txt"
    target.write_text("")
    if mount("--bind", "/proc/version", str(target)).returncode != 0:
        pytest.skip("bind mounts are not allowed here")
    try:
        assert target.stat().st_size == 0
        doc = sb.backup()
        sb.restore_to(doc["id"], tmp_path / "out")
        assert (tmp_path / "out" / "workspace" / "version.txt").read_bytes() == Path("/proc/version").read_bytes()
    finally:
        subprocess.run(["umount", str(target)], capture_output=True, stdin=subprocess.DEVNULL)


def test_a_file_size_limit_during_a_restore_is_named_with_its_fix(sandbox: Sandbox, tmp_path: Path) -> None:
    """`ulimit -f` lower than a file of the snapshot: the restore stops with one sentence that names
    the limit and how to raise it (not a bare "File too large"), and nothing is left half-written."""
    sb = sandbox
    (sb.workspace / "MEMORY.md").write_text("remember this line well\n" * 100_000)  # 2.4 MB
    doc = sb.backup()
    sb.prefix = ["sh", "-c", 'ulimit -f 1024 && exec "$@"', "sh"]  # 0.5 or 1 MiB, by the shell
    try:
        res = sb.phx("restore", "--backup", doc["id"], "--to", tmp_path / "out", "--yes", check=None)
    finally:
        sb.prefix = ()
    assert_error(res, 1, "file size limit", "ulimit -f", "restoring workspace/MEMORY.md", "ulimit -f unlimited")
    assert not (tmp_path / "out" / "workspace" / "MEMORY.md").exists()


# -- many small files ----------------------------------------------------------------------------


def test_many_small_files(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    count = 100_000 if HEAVY else 2_000
    base = sb.workspace / "notes"
    for i in range(count):
        folder = base / f"{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"note-{i:06d}.md").write_text(f"# note {i}\n")
    state = sb.state()
    wait_past_racy_window()  # files written within a second of a backup's start are read again
    t0 = time.monotonic()
    doc = sb.backup()
    t1 = time.monotonic()
    assert doc["incomplete"] == [] and doc["files"] >= count
    dest = tmp_path / "restored"
    sb.restore_to(doc["id"], dest)
    t2 = time.monotonic()
    assert_restored(state, dest, f"{count} small files")
    t3 = time.monotonic()
    doc2 = sb.backup()  # unchanged: nothing read again
    t4 = time.monotonic()
    assert doc2["filesRead"] == 0, doc2["filesRead"]
    print(
        f"{count} small files: backup {t1 - t0:.1f} s, restore {t2 - t1:.1f} s, unchanged backup {t4 - t3:.1f} s, "
        f"repository {sum(p.stat().st_size for p in sb.repo.rglob('*') if p.is_file()) / MIB:.1f} MiB"
    )


# -- a multi-GB sparse file ----------------------------------------------------------------------


def test_large_sparse_file(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    size = 4 * 1024 * MIB if HEAVY else 128 * MIB
    image = sb.workspace / "vm.img"
    rng_data = [os.urandom(64 * 1024) for _ in range(16)]  # 1 MiB of data spread over the file
    with open(image, "wb") as f:
        for i, block in enumerate(rng_data):
            f.seek(i * (size // 16))
            f.write(block)
        f.truncate(size)
    if image.stat().st_blocks * 512 > 8 * MIB:
        pytest.skip("this file system does not keep holes in files")
    expected = _sha256(image)
    repo_before = _size(sb.repo)
    t0 = time.monotonic()
    doc = sb.backup()
    t1 = time.monotonic()
    added = _size(sb.repo) - repo_before
    dest = tmp_path / "restored"
    sb.restore_to(doc["id"], dest, "--path", "vm.img")
    t2 = time.monotonic()
    restored = dest / "workspace" / "vm.img"
    assert restored.stat().st_size == size
    allocated = restored.stat().st_blocks * 512
    assert _sha256(restored) == expected
    print(
        f"sparse file of {size // MIB} MiB with 1 MiB of data: backup {t1 - t0:.1f} s, restore {t2 - t1:.1f} s, "
        f"repository grew {added / MIB:.1f} MiB, {allocated / MIB:.1f} MiB allocated after the restore"
    )
    assert allocated <= 4 * MIB, f"{allocated} bytes allocated: the holes were written"
    assert added <= 64 * MIB, f"the repository grew {added} bytes for 1 MiB of data"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0
