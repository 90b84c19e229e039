"""A restore's folders are opened one component at a time with O_NOFOLLOW (sinks/files.py), from
the descriptor of the folder above that the writer keeps (or, going back up, from a kept child
through "..", checked to be the very folder opened before): a chain of N folders costs a number of
opens linear in N, not N²/2 a pass as when each folder was opened from the restore's root down.
A link planted in the destination during the restore is still never written through."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from phoenix_backup.errors import PhoenixError, RestoreError, UnsafePath
from phoenix_backup.repo import keys
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Node
from phoenix_backup.sinks import files as files_mod
from phoenix_backup.sinks.files import FileWriter
from phoenix_backup.sources.layout import Layout
from phoenix_backup.storage.local import LocalBackend

SMALL = 128  # folders deep; the deeper chain is four times as deep (more than the descriptors kept)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    r = Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False)
    yield r
    r.close()


def _dir(name: str) -> Node:
    return Node(name=name, type="dir", mode=0o755, mtime_ns=1_600_000_000_000_000_000)


def _restore_chain(repo: Repository, tmp_path: Path, depth: int, monkeypatch: pytest.MonkeyPatch) -> int:
    """Restore a chain `workspace/d/d/…/leaf.md` `depth` folders deep as `phx restore` drives the
    writer (leftovers cleaned, folders, the file, folders synced, their modes and times); returns
    how many files and folders the writer opened."""
    to = tmp_path / f"to-{depth}"
    writer = FileWriter(repo, Layout(tmp_path / "ws", tmp_path / "home"), to)
    folders = ["workspace/" + "/".join(["d"] * k) for k in range(1, depth + 1)]
    opened = 0
    real_open = os.open

    def counting_open(*args: object, **kwargs: object) -> int:
        nonlocal opened
        opened += 1
        return real_open(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", counting_open)
    try:
        writer.clean_leftovers(folders)
        writer.directory("workspace", _dir("workspace"))
        for logical in folders:
            writer.directory(logical, _dir("d"))
        writer.write_bytes(folders[-1] + "/leaf.md", b"at the bottom\n", 0o644)
        writer.finish_dirs()
        writer.check_folders()  # as `phx restore` does before it reports
    finally:
        monkeypatch.undo()
        writer.close()
    leaf = to / folders[-1] / "leaf.md"
    assert leaf.read_bytes() == b"at the bottom\n"
    assert (to / folders[-1]).stat().st_mtime_ns == 1_600_000_000_000_000_000
    return opened


def test_the_opens_of_a_deep_chain_grow_linearly_with_its_depth(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four times as deep costs about four times the opens (before: about sixteen times, each
    folder opened from the root down in each pass; 2,000 deep made 6 million openat calls)."""
    small = _restore_chain(repo, tmp_path, SMALL, monkeypatch)
    big = _restore_chain(repo, tmp_path, 4 * SMALL, monkeypatch)
    assert big <= 5 * small, f"{small} opens for {SMALL} folders, {big} for {4 * SMALL}"
    assert big <= 8 * 4 * SMALL, big


def test_a_folder_swapped_for_a_link_during_the_restore_is_never_written_through(
    repo: Repository, tmp_path: Path
) -> None:
    """Once the writer opened `workspace/a/b`, another user moves `a` away and puts a link to a
    folder outside in its place: what the restore writes next never lands in the link's target
    (it lands in the folder the writer opened, wherever it was moved, or is refused). A link in
    place before a folder is first opened is refused, as always."""
    to, outside = tmp_path / "to", tmp_path / "outside"
    outside.mkdir()
    writer = FileWriter(repo, Layout(tmp_path / "ws", tmp_path / "home"), to)
    try:
        for logical in ("workspace", "workspace/a", "workspace/a/b"):
            writer.directory(logical, _dir(logical.rsplit("/", 1)[-1]))
        writer.write_bytes("workspace/a/b/first.md", b"first\n", 0o644)
        os.rename(to / "workspace" / "a", tmp_path / "moved")
        os.symlink(outside, to / "workspace" / "a")
        for logical, data in (("workspace/a/b/second.md", b"second\n"), ("workspace/a/third.md", b"third\n")):
            with contextlib.suppress(UnsafePath):  # refused: also never through the link
                writer.write_bytes(logical, data, 0o644)
        os.symlink(outside, to / "workspace" / "e")  # a folder not opened yet: met as the link
        with pytest.raises(UnsafePath, match="symlink or not a folder"):
            writer.directory("workspace/e/f", _dir("f"))
        with contextlib.suppress(PhoenixError):
            writer.finish_dirs()  # may refuse the link it meets: an error, never a write through it
    finally:
        writer.close()
    assert list(outside.iterdir()) == [], "the restore wrote through a link"
    assert (tmp_path / "moved" / "b" / "first.md").read_bytes() == b"first\n"
    digest = hashlib.sha256(b"second\n").hexdigest()
    landed = [p for p in (tmp_path / "moved").rglob("*.md") if hashlib.sha256(p.read_bytes()).hexdigest() == digest]
    assert all(p.parent == tmp_path / "moved" / "b" for p in landed), landed


def test_a_folder_replaced_by_one_with_its_inode_number_fails_the_restore(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Going back up through ".." is checked by device and inode, but an inode number is reused
    once its folder is gone (ext4 gives it to the next folder made): another user moves the kept
    `c` out of `workspace/a/b`, removes `b`, makes folders of their own until one gets `b`'s number
    and moves `c` into it. The next file of `workspace/a/b` reaches that folder through `..` of
    `c` and lands there, not at its path: `check_folders` (run before the restore reports) fails
    naming `workspace/a/b`. Where no number is reused, the writer reaches `b` from above: gone."""
    monkeypatch.setattr(files_mod, "kept_folders", lambda: 1)  # only `c` kept
    to, theirs = tmp_path / "to", tmp_path / "theirs"
    theirs.mkdir()
    writer = FileWriter(repo, Layout(tmp_path / "ws", tmp_path / "home"), to)
    try:
        for logical in ("workspace", "workspace/a", "workspace/a/b", "workspace/a/b/c"):
            writer.directory(logical, _dir(logical.rsplit("/", 1)[-1]))
        writer.write_bytes("workspace/a/b/c/first.md", b"first\n", 0o644)
        b = os.stat(to / "workspace" / "a" / "b")
        os.rename(to / "workspace" / "a" / "b" / "c", theirs / "c")
        os.rmdir(to / "workspace" / "a" / "b")
        for k in range(64):
            made = theirs / f"b{k}"
            made.mkdir()
            if (made.stat().st_dev, made.stat().st_ino) == (b.st_dev, b.st_ino):
                os.rename(theirs / "c", made / "c")
                break
        with contextlib.suppress(FileNotFoundError):
            writer.write_bytes("workspace/a/b/second.md", b"second\n", 0o644)
        with pytest.raises(RestoreError, match=r"workspace/a/b was moved away or removed"):
            writer.check_folders()
    finally:
        writer.close()
