"""The restore's kept folder descriptors (sinks/files.py, KEPT_FOLDERS), attacked: a process that
may open few files restoring more folders than the writer keeps."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from e2e_support import Sandbox, tmpfs_at


def _folders_of_notes(sb: Sandbox, folders: int, per_folder: int) -> dict[str, bytes]:
    """`folders` folders of `per_folder` small notes each below the workspace: {relative path: bytes}."""
    files = {}
    for f in range(folders):
        for i in range(per_folder):
            rel = f"tree/f{f:03}/n{i}.md"
            data = hashlib.sha256(rel.encode()).digest() * (10 + i)
            (sb.workspace / rel).parent.mkdir(parents=True, exist_ok=True)
            (sb.workspace / rel).write_bytes(data)
            files[rel] = data
    return files


def test_a_process_that_may_open_few_files_restores_more_folders_than_are_kept(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """`ulimit -n 64`: the writer's kept folder descriptors (up to 64) must not make a restore of
    many folders fail half-way with "too many open files" (trust4's writer kept 64 whatever the
    limit: exit 1, "unexpected internal error (OSError: [Errno 24] Too many open files ...)"; the
    writer before it, opening each folder from the root down, restored them)."""
    sb = sandbox
    files = _folders_of_notes(sb, 150, 2)
    snap = sb.backup()
    dest = tmp_path / "restored"
    sb.prefix = ["sh", "-c", 'ulimit -n 64 && exec "$@"', "sh"]
    res = sb.phx("restore", "--backup", snap["id"], "--to", dest, "--json", check=None, timeout=120)
    assert res.code == 0, res
    for rel, data in files.items():
        assert (dest / "workspace" / rel).read_bytes() == data, rel
    leftovers = list(dest.rglob(".phx-tmp-*"))
    assert leftovers == [], leftovers


def test_a_destination_on_two_file_systems_restores_whole(sandbox: Sandbox, tmp_path: Path) -> None:
    """A tmpfs mounted inside the destination (`DEST/workspace/tree`): the writer's folders below
    it are reached down through the mount and back up through ".." across it, each checked by
    device and inode; more folders than are kept, so each is opened again from a kept one. The
    restore is whole, exit 0 (a mount is no moved folder)."""
    sb = sandbox
    files = _folders_of_notes(sb, 80, 1)
    snap = sb.backup()
    dest = tmp_path / "restored"
    with tmpfs_at(dest / "workspace" / "tree", "16m") as mounted:
        res = sb.phx("restore", "--backup", snap["id"], "--to", dest, "--json", check=None, timeout=120)
        assert res.code == 0, res
        assert os.stat(mounted).st_dev != os.stat(dest).st_dev
        for rel, data in files.items():
            assert (dest / "workspace" / rel).read_bytes() == data, rel
