"""A restore whose destination refuses a folder (sinks/files.py): each OS error creating or opening
a folder there is one sentence naming the folder (its logical path and its real path) and what to
check, exit 1, no traceback, no "bug in Phoenix", no temporary file left; once the cause is gone
the same restore completes. Before, each of these errors reached the user as "unexpected internal
error (PermissionError/OSError ...): a bug in Phoenix".

Each errno is made real: EACCES by a folder of mode 0555 and a `phx` run as root without
capabilities (setpriv), EPERM by `chattr +i`, EROFS by a read-only bind mount, ENOSPC by a tmpfs
out of inodes, ENOTDIR by a file planted where a folder goes (a per-path error, exit 1), EMFILE by
`ulimit -n` so low that the restore's folders cannot all be opened."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_support import Sandbox, assert_error, mount

from phoenix_backup.repo.locks import boot_id, pid_namespace

# The sandboxes' helpers (backup, restore_to, verify, snapshots) run phx in this process
pytestmark = pytest.mark.phx_in_process

CAPLESS = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
NOTE = b"a note three folders down\n" * 40


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def _read_only(tree: Path) -> Iterator[None]:
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a read-only bind mount needs root and mount(8)")
    bind = mount("--bind", str(tree), str(tree))
    if bind.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bind.stderr.strip()}")
    try:
        ro = mount("-o", "remount,ro,bind", str(tree))
        if ro.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {ro.stderr.strip()}")
        yield
    finally:
        _run("umount", str(tree))


@contextlib.contextmanager
def _no_inodes(tree: Path) -> Iterator[None]:
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    proc = mount("-t", "tmpfs", "-o", "size=1m,nr_inodes=1,mode=0755", "tmpfs", str(tree))
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield
    finally:
        _run("umount", str(tree))


@contextlib.contextmanager
def _immutable(tree: Path) -> Iterator[None]:
    proc = _run("chattr", "+i", str(tree))
    if proc.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {proc.stderr.strip()}")
    try:
        yield
    finally:
        _run("chattr", "-i", str(tree))


@contextlib.contextmanager
def _read_only_mode(tree: Path) -> Iterator[None]:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) runs phx without the capability to ignore file modes")
    tree.chmod(0o555)
    try:
        yield
    finally:
        tree.chmod(0o755)


@contextlib.contextmanager
def _file_in_the_way(tree: Path) -> Iterator[None]:
    (tree / "sub").write_bytes(b"not a folder\n")
    try:
        yield
    finally:
        (tree / "sub").unlink()


@contextlib.contextmanager
def _nothing(tree: Path) -> Iterator[None]:
    yield


CASES: dict[str, tuple[Callable[[Path], contextlib.AbstractContextManager[None]], list[str], tuple[str, ...]]] = {
    # errno: (the cause, made real at DEST/workspace/tree; the command prefix; what the sentence says)
    "EACCES": (_read_only_mode, CAPLESS, ("permission denied", "check the owner and mode")),
    "EPERM": (_immutable, [], ("permission denied", "lsattr")),
    "EROFS": (_read_only, [], ("read-only file system",)),
    "ENOSPC": (_no_inodes, [], ("no space left",)),
    "ENOTDIR": (_file_in_the_way, [], ("is a symlink or not a folder", "move it aside")),
    # So few descriptors that the restore runs out of them while opening its folders (with 13 it
    # completes here; with 11 it stops reading a pack, which says the same sentence).
    "EMFILE": (_nothing, ["sh", "-c", 'ulimit -n 12 && exec "$@"', "sh"], ("too many open files", "ulimit -n")),
}


@pytest.mark.parametrize("errno_name", sorted(CASES))
def test_a_folder_the_destination_refuses_is_one_clear_error(sandbox: Sandbox, tmp_path: Path, errno_name: str) -> None:
    """Exit 1 and one `phx: error:` sentence; a file in the way of a folder is, as every unsafe
    path, an error of the paths below it (exit 3, the rest restored), in the same words."""
    cause, prefix, says = CASES[errno_name]
    sb = sandbox
    deep = sb.workspace / "tree" / "sub" / "deep"
    deep.mkdir(parents=True)
    (deep / "note.md").write_bytes(NOTE)
    os.symlink("deep/note.md", sb.workspace / "tree" / "sub" / "link.md")
    snap = sb.backup()
    dest = tmp_path / "restored"
    tree = dest / "workspace" / "tree"
    tree.mkdir(parents=True)
    with cause(tree):
        sb.prefix = prefix
        try:
            res = sb.phx("restore", "--backup", snap["id"], "--to", dest, "--json", check=None, timeout=120)
        finally:
            sb.prefix = ()
        assert "bug in Phoenix" not in res.err, res
        if errno_name == "ENOTDIR":
            assert res.code == 3, res
            errors = {e["path"]: e["error"] for e in res.json()["errors"]}
            assert set(errors) == {
                "workspace/tree/sub",
                "workspace/tree/sub/deep",
                "workspace/tree/sub/deep/note.md",
                "workspace/tree/sub/link.md",
            }, res
            lines = list(errors.values())
        else:
            lines = [assert_error(res, 1, *says)]
        for line in lines:
            for needle in says:
                assert needle in line.lower(), line
            if errno_name != "EMFILE":  # which folder runs out of descriptors first is not fixed
                assert f"the folder workspace/tree/sub in the destination ({tree / 'sub'})" in line, line
        left = [str(p) for p in dest.rglob(".phx-tmp-*")]
        assert left == [], left
    again = sb.phx("restore", "--backup", snap["id"], "--to", dest, check=None, timeout=120)
    assert again.code == 0, again
    assert (tree / "sub" / "deep" / "note.md").read_bytes() == NOTE
    assert os.readlink(tree / "sub" / "link.md") == "deep/note.md"
    assert [str(p) for p in dest.rglob(".phx-tmp-*")] == []


def test_a_leftover_the_restore_cannot_remove_is_said(sandbox: Sandbox, tmp_path: Path) -> None:
    """A temporary file a killed restore left where this one writes is removed before it writes
    (`FileWriter.clean_leftovers`); one it cannot remove (its folder 0555, `phx` without the
    capability to ignore that) is one warning naming it and why, the restore goes on (exit 0) and
    the file stays. Before, every OSError there was passed over in silence."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) runs phx without the capability to ignore file modes")
    sb = sandbox
    deep = sb.workspace / "tree" / "sub" / "deep"
    deep.mkdir(parents=True)
    (deep / "note.md").write_bytes(NOTE)
    snap = sb.backup()
    dest = tmp_path / "restored"
    sb.phx("restore", "--backup", snap["id"], "--to", dest)
    tree = dest / "workspace" / "tree"
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # a pid no process ever has
    stuck = tree / f".phx-tmp-{dead}-12345-0badc0ffee00"
    freed = tree / "sub" / f".phx-tmp-{dead}-12345-0badc0ffee01"
    stuck.write_bytes(b"half a file\n")
    freed.write_bytes(b"half another\n")
    tree.chmod(0o555)
    try:
        sb.prefix = CAPLESS
        res = sb.phx("restore", "--backup", snap["id"], "--to", dest, check=None, timeout=120)
    finally:
        sb.prefix = ()
        tree.chmod(0o755)
    assert res.code == 0, res
    warnings = [line for line in res.stderr_lines() if str(stuck) in line]
    assert warnings == [
        f"phx: warning: {stuck}, a temporary file a killed restore left, could not be removed (Permission denied); "
        "remove it yourself"
    ], res
    assert "bug in Phoenix" not in res.err, res
    assert stuck.read_bytes() == b"half a file\n"
    assert not freed.exists()
    tree.chmod(0o700)  # the cause gone, and a mode to restore: the restore writes the folder again
    again = sb.phx("restore", "--backup", snap["id"], "--to", dest, timeout=120)
    assert "temporary file" not in again.err, again
    assert not stuck.exists()
    assert (tree / "sub" / "deep" / "note.md").read_bytes() == NOTE


def test_an_export_whose_folder_cannot_be_created_is_one_clear_error(sandbox: Sandbox, tmp_path: Path) -> None:
    """`phx export --output LOCKED/new/out` below an immutable folder: the export's parent folder
    cannot be created (EPERM). Before: "unexpected internal error (PermissionError ...): a bug in
    Phoenix"; now one sentence naming the folder and the attribute, exit 1, nothing left; once the
    attribute is gone the same export completes."""
    sb = sandbox
    sb.backup()
    locked = tmp_path / "locked"
    locked.mkdir()
    out = locked / "new" / "out"
    with _immutable(locked):
        res = sb.phx("export", "--output", out, check=None)
        assert "bug in Phoenix" not in res.err, res
        assert_error(res, 1, "permission denied", str(locked / "new"), "lsattr")
        assert list(locked.iterdir()) == []
    sb.phx("export", "--output", out)
    assert (out / "checksums.json").is_file()


def test_in_place_a_folder_the_workspace_refuses_is_one_clear_error(sandbox: Sandbox) -> None:
    """In place (no --to) the same: a folder of the workspace the restore must create below an
    immutable one is one sentence naming it by its snapshot path and its real path (exit 1, the
    safety snapshot taken, no temporary file left); once the attribute is gone the same restore
    completes."""
    sb = sandbox
    tree = sb.workspace / "tree"
    deep = tree / "sub" / "deep"
    deep.mkdir(parents=True)
    (deep / "note.md").write_bytes(NOTE)
    snap = sb.backup()
    shutil.rmtree(tree / "sub")
    with _immutable(tree):
        res = sb.phx("restore", "--backup", snap["id"], "--yes", check=None, timeout=120)
        assert "bug in Phoenix" not in res.err, res
        line = assert_error(res, 1, "permission denied", "lsattr")
        assert f"the folder workspace/tree/sub in the destination ({tree / 'sub'})" in line, line
        assert [str(p) for p in sb.workspace.rglob(".phx-tmp-*")] == []
    sb.phx("restore", "--backup", snap["id"], "--yes", timeout=120)
    assert (deep / "note.md").read_bytes() == NOTE


def test_a_leftover_the_journals_clean_up_cannot_remove_is_said(sandbox: Sandbox, tmp_path: Path) -> None:
    """Every command first removes the temporary files a killed restore left, found through its
    journal (sinks/leftovers.py `clean`). One it cannot remove (its folder 0555, `phx` without the
    capability to ignore that) is one warning naming it and why, the command goes on and the file
    stays; a file already gone is silent. Before, PermissionError there was passed over in silence."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) runs phx without the capability to ignore file modes")
    sb = sandbox
    folder = tmp_path / "folder"
    folder.mkdir()
    dead = 2**22 + 11  # above pid_max's default: no such process
    stuck = folder / f".phx-tmp-{dead}-77-00aa11bb22cc"
    stuck.write_bytes(b"half a file\n")
    journals = sb.cache / "restore-journal"
    journals.mkdir(parents=True, exist_ok=True)
    head = {"bootId": boot_id(), "pidNamespace": pid_namespace(), "pid": dead, "start": 77}
    gone = tmp_path / "gone"  # a folder removed since: nothing to say
    (journals / f"{dead}-77").write_text("\n".join(json.dumps(x) for x in (head, str(folder), str(gone))) + "\n")
    folder.chmod(0o555)
    try:
        sb.prefix = CAPLESS
        res = sb.phx("list", check=None)
    finally:
        sb.prefix = ()
        folder.chmod(0o755)
    assert res.code == 0, res
    said = [line for line in res.stderr_lines() if "warning" in line]
    assert said == [
        f"phx: warning: {stuck}, a temporary file a killed restore left, could not be removed (Permission denied); "
        "remove it yourself"
    ], res
    assert stuck.read_bytes() == b"half a file\n"
    assert list(journals.iterdir()) == []  # said once
    assert "temporary file" not in sb.phx("list").err
