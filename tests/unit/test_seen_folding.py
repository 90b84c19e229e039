"""The dry run's look-up of whether a destination folds case (sinks/files.py `seen_folding`),
which writes nothing: names already there are looked up in the other case and compared by inode."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hostile import folding_lookups
from phoenix_backup.sinks import files


def test_two_hard_links_differing_in_case_are_not_taken_for_a_folding_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder of more entries than are listed (`SEEN_ENTRIES`) holding `notes` and `NOTES`, two
    hard links of one file: the one listed was looked up in the other case, found with the same
    inode, and this case-sensitive file system said to fold case (the dry run then refused a
    restore the real one makes). A file of more than one link tells nothing."""
    folder = tmp_path / "dest"
    folder.mkdir()
    (folder / "notes").write_bytes(b"x")
    os.link(folder / "notes", folder / "NOTES")
    monkeypatch.setattr(files, "SEEN_ENTRIES", 1)
    assert files.seen_folding(folder, "case") is not True


def test_a_destination_that_is_a_link_is_judged_where_it_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--to ~/usb` a link to an empty folder on a file system that ignores case (simulated:
    `os.lstat` below `vfat` finds a name in another case): the link's own name was looked up in
    its parent, on another file system that tells case apart, and the dry run said it does;
    the restore's probe file, written where the link points, then said otherwise."""
    vfat = tmp_path / "vfat"
    (vfat / "Backup").mkdir(parents=True)
    home = tmp_path / "home"
    home.mkdir()
    (home / "usb").symlink_to(vfat / "Backup")
    with folding_lookups(monkeypatch, vfat):
        assert files.seen_folding(home / "usb", "case") is True
