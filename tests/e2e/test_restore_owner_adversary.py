"""An in-place restore as root never gives a user's own inode to another owner. In a folder the
user (uid 4321) controls, the workspace holds a root-owned file; the user puts their own file with
the same content in its place and keeps it open for writing. Root's restore chowned that very
inode to root: a root-owned file whose bytes the user still writes through the descriptor. It is
now written anew, and the user's inode is left as it was."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox


@pytest.mark.skipif(os.geteuid() != 0, reason="restoring ownership needs root")
def test_a_users_own_inode_is_never_given_to_root(make_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    sb = make_sandbox()
    tools = sb.workspace / "tools"
    tools.mkdir()
    trusted = tools / "trusted.conf"
    content = b"allow = root-only\n"
    trusted.write_bytes(content)
    os.chown(tools, 4321, 4321)
    doc = sb.phx_here("backup", "--json").json()

    planted = tools / "mine"
    planted.write_bytes(content)
    os.chown(planted, 4321, 4321)
    planted.chmod(0o644)
    held = os.open(planted, os.O_WRONLY)  # the user's descriptor, opened while the file is theirs
    try:
        os.replace(planted, trusted)
        sb.phx_here("restore", "--backup", doc["id"], "--yes")
        os.write(held, b"allow = everyone\n")
    finally:
        os.close(held)
    st = trusted.lstat()
    assert st.st_uid == 0
    assert trusted.read_bytes() == content, "a root-owned file holds what the user wrote"


@pytest.mark.skipif(os.geteuid() != 0, reason="restoring ownership needs root")
def test_a_file_anyone_could_open_for_writing_is_written_anew(make_sandbox: Callable[..., Sandbox]) -> None:
    """The snapshot's root-owned 0644 file is found world-writable (same content): a user opened it
    for writing then. Root's restore made that very inode 0644 again, and the user's descriptor
    still wrote into the file root trusts; it is now written anew."""
    sb = make_sandbox()
    trusted = sb.workspace / "trusted.conf"
    content = b"allow = root-only\n"
    trusted.write_bytes(content)
    trusted.chmod(0o644)
    doc = sb.phx_here("backup", "--json").json()
    trusted.chmod(0o666)
    held = os.open(trusted, os.O_WRONLY)  # the user's descriptor, opened while anyone could write it
    try:
        sb.phx_here("restore", "--backup", doc["id"], "--yes")
        os.write(held, b"allow = everyone\n")
    finally:
        os.close(held)
    assert trusted.stat().st_mode & 0o777 == 0o644
    assert trusted.read_bytes() == content, "a root-only file holds what a user wrote"


@pytest.mark.skipif(os.geteuid() != 0, reason="restoring ownership needs root")
def test_a_symlinks_owner_is_restored(backed_up: Sandbox, tmp_path: Path) -> None:
    """A user's symlink, backed up by root, came back owned by root (its target and time were set,
    never its owner, as no restore chowned a link): in a sticky folder the user could no longer
    remove or rename their own link. Now its owner is set, below --to and in place (a link found
    with the right target but another owner)."""
    sb = backed_up
    link = sb.workspace / "memory/latest"
    link.symlink_to("notes/today.md")
    os.lchown(link, 4321, 4322)
    sb.phx_here("backup")
    sb.phx_here("restore", "--latest", "--to", tmp_path / "out")
    copy = tmp_path / "out/workspace/memory/latest"
    assert os.readlink(copy) == "notes/today.md"
    assert (copy.lstat().st_uid, copy.lstat().st_gid) == (4321, 4322)
    os.lchown(link, 0, 0)
    sb.phx_here("restore", "--latest", "--yes", "--no-safety-snapshot")
    assert (link.lstat().st_uid, link.lstat().st_gid) == (4321, 4322)


@pytest.mark.skipif(os.geteuid() != 0, reason="restoring ownership needs root")
def test_a_link_swapped_in_under_the_temporary_name_is_never_made_roots(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root restores a root-owned link into a folder a user can write; the user swaps a link of
    their own (to /etc/shadow) in under the restore's temporary name before its owner is set. A
    chown by name would have made the user's link root's (and `fs.protected_symlinks` trusts a
    root-owned link in a sticky folder), then renamed it into place. The link is now checked to be
    the restore's own before its inode is chowned: the path is refused, nothing of the user's is
    given to root."""
    sb = backed_up
    link = sb.workspace / "memory/latest"
    link.symlink_to("notes/today.md")
    sb.phx_here("backup")
    real_symlink = os.symlink

    def swapped(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        real_symlink(src, dst, *args, **kwargs)
        if str(dst).startswith(".phx-tmp-") and src == "notes/today.md":
            os.unlink(dst, dir_fd=kwargs.get("dir_fd"))
            real_symlink("/etc/shadow", dst, dir_fd=kwargs.get("dir_fd"))
            os.chown(dst, 4321, 4321, dir_fd=kwargs.get("dir_fd"), follow_symlinks=False)

    monkeypatch.setattr(os, "symlink", swapped)
    res = sb.phx_here("restore", "--latest", "--to", tmp_path / "out", code=3)
    monkeypatch.undo()
    assert "workspace/memory/latest in the destination was replaced while this restore made it" in res.out + res.err
    for found in (tmp_path / "out").rglob("*"):
        if found.is_symlink():
            assert os.readlink(found) != "/etc/shadow" or found.lstat().st_uid == 4321, found
