"""`dirs.write_private`: the atomic, owner-only, durable replace every small state file uses."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from phoenix_backup import dirs


def test_a_replaced_file_is_owner_only_and_whole(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    target.chmod(0o644)
    dirs.write_private(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.json"
    target.write_bytes(b"the previous report")
    real_write = os.write
    calls = 0

    def short_then_full(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data[:3]))  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OSError) as caught:
        dirs.write_private(target, b"a new report that does not fit")
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"the previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_symlink_planted_at_the_temp_name_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "keys.json"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"untouched")
    (tmp_path / f".keys.json.{os.getpid()}.tmp").symlink_to(elsewhere)
    with pytest.raises(OSError) as caught:
        dirs.write_private(target, b"secret")
    assert caught.value.errno == errno.ELOOP
    assert elsewhere.read_bytes() == b"untouched"
    assert not target.exists()
