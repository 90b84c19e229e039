"""Workspaces at the limits a walk of a snapshot allows (repo/walker.py) or a tree blob may have
(repo/crypto.py MAX_BLOB_SIZE): a backup refuses, naming the folder and the fix, what every later
command would refuse, instead of storing a snapshot that cannot be restored. The limits are made
small here (monkeypatched, in this process) so that a few hundred files reach them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from e2e_support import Sandbox, remove_chain

from phoenix_backup.repo import tree, walker

pytestmark = pytest.mark.phx_in_process


def _hard_linked_copies(top: Path, files: int, copies: int) -> None:
    """`cp -al template copyN` made `copies` times: folders whose files are hard links to one set
    of files and whose times are the template's."""
    template = top / "template" / "d"
    template.mkdir(parents=True)
    for i in range(files):
        (template / f"f{i:03d}.txt").write_text(f"file {i}\n")
    for n in range(copies):
        shutil.copytree(top / "template", top / f"copy{n:03d}", copy_function=os.link)
        shutil.copystat(template, top / f"copy{n:03d}" / "d")
        shutil.copystat(top / "template", top / f"copy{n:03d}")


def test_seventy_hard_linked_copies_back_up_restore_and_verify(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """70 `cp -al` copies of a folder (pnpm's `node_modules` has this shape) are one stored folder
    named 70 times: the walk counted its entries once, and beyond its free budget (65,536 paths;
    70 copies of 1,000 files) restore, ls and verify refused the snapshot, and red38's backup
    refused it instead, leaving the user no backup. A tree's entries now count once per copy
    naming it: the backup is stored, verifies, and restores the bytes and the hard links. (The
    budget is made small here so that 30 files a copy pass it; `tests/unit/test_hostile_repository.py`
    walks the full-size farm.)"""
    sb = sandbox
    monkeypatch.setattr(walker, "FREE_PATHS", 200)
    _hard_linked_copies(sb.workspace / "lib", files=30, copies=70)
    doc = sb.backup()
    assert doc["incomplete"] == [], doc
    assert sb.verify()["errors"] == []
    out = tmp_path / "out"
    sb.restore_to(doc["id"], out)
    lib = out / "workspace" / "lib"
    first = lib / "template" / "d" / "f029.txt"
    assert first.read_text() == "file 29\n"
    for n in (0, 69):
        copy = lib / f"copy{n:03d}" / "d"
        assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in first.parent.iterdir())
        assert (copy / "f029.txt").stat().st_ino == first.stat().st_ino
    assert first.stat().st_nlink == 71


def test_copies_of_copies_beyond_the_walk_budget_are_refused_by_backup(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hard-linked copies of a folder that itself holds hard-linked copies name the files' entries
    copies x copies times: beyond the walk's budget restore, ls and verify refuse such a snapshot
    as "damaged or hostile". The backup stored it and exited 0; it now refuses it, naming a copy
    and the fix, and stores no snapshot."""
    sb = sandbox
    monkeypatch.setattr(walker, "FREE_PATHS", 200)
    _hard_linked_copies(sb.workspace / "lib" / "inner", files=40, copies=24)
    for n in range(24):
        subprocess.run(["cp", "-al", sb.workspace / "lib" / "inner", sb.workspace / f"outer{n:03d}"], check=True)
    res = sb.phx_here("backup", code=1)
    assert "workspace/" in res.err and "cp -al" in res.err and "`exclude`" in res.err, res.err
    assert "nothing was saved" in res.err, res.err
    assert sb.snapshots() == []
    # With the copies left out, the backup is stored and restores.
    sb.write_config(exclude=["outer*"])
    doc = sb.backup()
    assert doc["incomplete"] == [], doc
    out = tmp_path / "out"
    sb.restore_to(doc["id"], out)
    assert (out / "workspace" / "lib" / "inner" / "template" / "d" / "f039.txt").read_text() == "file 39\n"


def test_folder_whose_list_is_larger_than_a_blob_is_refused_by_backup(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder of so many entries that its tree is larger than MAX_BLOB_SIZE (about 265,000 files
    with 255-byte names in Chinese characters, each escaped in the tree's JSON) was written, and
    every reader refuses a blob that large: the backup exited 0 with a snapshot nothing could
    read. It now says which folder and the fix, and stores no snapshot."""
    sb = sandbox
    monkeypatch.setattr(tree, "MAX_BLOB_SIZE", 64 * 1024)
    wide = sb.workspace / "wide"
    wide.mkdir()
    for i in range(200):
        (wide / ("字" * 80 + f"{i:03d}")).touch()
    res = sb.phx_here("backup", code=1)
    assert "the folder workspace/wide holds 200 entries" in res.err, res.err
    assert "split it into subfolders" in res.err and "nothing was saved" in res.err, res.err
    assert sb.snapshots() == []


def test_folder_past_path_max_is_named_with_the_fix(sandbox: Sandbox) -> None:
    """A workspace folder whose path passes PATH_MAX (4,096 bytes, about 2,000 one-letter folders
    deep) cannot be listed: the backup is partial (exit 3) and names it, with why and the fix,
    not the system's "File name too long" (which reads as if one name were too long). What lies
    above it is saved."""
    sb = sandbox
    top = sb.workspace / "deep"
    top.mkdir()
    levels = (4200 - len(str(top))) // 2  # past PATH_MAX
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(levels):
            os.mkdir("d", dir_fd=fd)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
            if i == 1900:
                leaf = os.open("leaf.md", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                os.write(leaf, b"deep\n")
                os.close(leaf)
    finally:
        os.close(fd)
    try:
        doc = sb.backup(check=3)
    finally:
        remove_chain(top)  # pytest's clean-up of old temporary folders recurses
    (problem,) = doc["incomplete"]
    assert problem["path"].startswith("workspace/deep/d/d/"), problem
    assert "PATH_MAX" in problem["error"] and "`exclude`" in problem["error"], problem
    assert sb.phx_here("ls", doc["id"][:8], "workspace/deep/" + "d/" * 1901 + "leaf.md").out.strip()


def test_file_dated_past_2262_is_saved_and_the_snapshot_reads(sandbox: Sandbox, tmp_path: Path) -> None:
    """ext4 keeps a file dated 2300 (`touch -d 2300-01-01`), past the 64-bit nanoseconds a node
    records: the backup wrote the time as is and exited 0, and ls, verify and restore refused the
    snapshot ("mtimeNs is not an integer between ..."). It is saved with the nearest date a node
    holds, said in a warning, and the snapshot restores."""
    sb = sandbox
    future = sb.workspace / "future.md"
    future.write_text("from the future\n")
    when = 2**63 + 10**18  # the year 2300
    os.utime(future, ns=(when, when))
    if os.stat(future).st_mtime_ns != when:
        pytest.skip("this file system does not keep a file dated 2300")
    doc = sb.backup()
    assert any("workspace/future.md is dated outside" in w for w in doc["warnings"]), doc["warnings"]
    assert "workspace/future.md" in sb.phx_here("ls", doc["id"][:8]).out
    out = tmp_path / "out"
    sb.restore_to(doc["id"], out)
    restored = out / "workspace" / "future.md"
    assert restored.read_text() == "from the future\n"
    assert restored.stat().st_mtime_ns == 2**63 - 1
