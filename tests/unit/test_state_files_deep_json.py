"""Phoenix's own state files (in the user's home or cache) nested 50,000 deep or holding a number
of 5,000 digits: each reader treats them as the damaged file it already handles for bad JSON.
Before, json.loads's RecursionError escaped the readers and the command failed as an internal error."""

from __future__ import annotations

from pathlib import Path

import pytest

from phoenix_backup.ops.drill import latest_reports
from phoenix_backup.repo.checker import choose_subset
from phoenix_backup.repo.prune import PruneState
from phoenix_backup.repo.writer import WriterStore
from phoenix_backup.schedule import read_record, record_path
from phoenix_backup.sinks import leftovers
from phoenix_backup.state import read_state

PLANTED = {
    "deep": b'{"ok":' + b"[" * 50_000 + b"]" * 50_000 + b',"started":"x"}',
    "long number": b'{"ok":true,"started":' + b"1" * 5_000 + b"}",
}


@pytest.mark.parametrize("kind", PLANTED)
def test_a_state_file_nested_deep_or_with_a_long_number_reads_as_damaged(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = PLANTED[kind]
    state = tmp_path / "state.json"
    state.write_bytes(planted)
    assert read_state(state) is None
    record = record_path(tmp_path, "backup")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_bytes(planted)
    assert read_record(tmp_path, "backup") is None
    prune = tmp_path / "prune.json"
    prune.write_bytes(planted)
    assert PruneState(prune).data == {}
    drills = tmp_path / "drills"
    drills.mkdir()
    (drills / "2026-01-01T00-00-00Z.json").write_bytes(planted)
    assert latest_reports(drills) == []
    cursor = tmp_path / "cursor.json"
    cursor.write_bytes(planted)
    assert choose_subset(["a", "b"], 50, cursor)[0] in (["a"], ["b"])  # a random start
    monkeypatch.setenv("PHX_CACHE_DIR", str(tmp_path / "cache"))
    leftovers.journal_dir().mkdir(parents=True, mode=0o700)
    # A journal's lines are read up to 64 KiB: 5,000 deep fits in one.
    line = b"[" * 5_000 + b"]" * 5_000 if kind == "deep" else planted
    (leftovers.journal_dir() / "1-2").write_bytes(line + b"\n")
    assert leftovers.clean() == ([], [])  # a journal that names no writer names no file either
    store = WriterStore(tmp_path / "writer", "r" * 32)
    store.folder.mkdir(parents=True, mode=0o700)
    store.record_path.write_bytes(planted)
    store.add_all({})  # a damaged record is written anew
    assert store.snapshots() == {}
