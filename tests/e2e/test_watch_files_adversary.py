"""The file watcher of `phx watch` against the ways files change outside the workspace.

Issue 19's recovery point for files: a change is in a `watch-files` snapshot within seconds. The
watcher asks the kernel for no per-write events in folders outside the workspace (a live
database's -wal there woke it hundreds of times a second), so each case below must still be
seen by an event it does ask for."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_support import Sandbox
from test_defaults import as_init_writes_it
from watchdog.events import FileModifiedEvent, FileSystemEvent

from phoenix_backup import Environment, load_config
from phoenix_backup.ops.selection import select_sources
from phoenix_backup.ops.watch_files import QUIET_SECONDS, RECHECK_SECONDS, FileWatch, _roots


@dataclass
class Watched:
    watch: FileWatch
    memory: Path  # the folder memory/ points to, outside the workspace
    named: list[str]  # paths named by the events that made a snapshot due

    def seen(self, path: Path, within: float = 3.0) -> bool:
        """Whether an event naming `path` made a snapshot due within `within` seconds (other
        processes' files in the folders watched do not count)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if str(path) in self.named:
                return True
            time.sleep(0.05)
        return False


@pytest.fixture
def memory_elsewhere(sandbox: Sandbox) -> Iterator[Watched]:
    """memory/ -> a synced folder outside the workspace, watched as `phx watch` does."""
    sb = sandbox
    as_init_writes_it(sb)
    elsewhere = sb.root / "synced"
    elsewhere.mkdir()
    (sb.workspace / "memory").rename(elsewhere / "memory")
    (sb.workspace / "memory").symlink_to(elsewhere / "memory")
    watch = FileWatch(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    named: list[str] = []
    handler = watch.events.on_any_event

    def spy(event: FileSystemEvent) -> None:
        before = watch.events.last
        handler(event)
        if watch.events.last != before:
            named.extend([str(event.src_path), str(getattr(event, "dest_path", "") or "")])

    watch.events.on_any_event = spy  # type: ignore[method-assign]
    watch.pending = False  # the first snapshot, taken
    try:
        yield Watched(watch, elsewhere / "memory", named)
    finally:
        watch.close()


def test_a_note_appended_by_a_process_that_keeps_it_open_is_seen(memory_elsewhere: Watched) -> None:
    """An agent that keeps its journal open and appends to it never closes the file: with no write
    events asked outside the workspace, the change waited for a close that never came."""
    note = sorted(memory_elsewhere.memory.glob("*.md"))[0]
    with open(note, "a") as held:
        held.write("\n- appended by a process that keeps the note open\n")
        held.flush()
        assert memory_elsewhere.seen(note), f"an append to {note} through a file kept open was never seen"


def test_a_note_in_a_folder_created_after_the_watch_began_is_seen(memory_elsewhere: Watched) -> None:
    """memory/2026-12/ made after the watch started: its creation is seen, but the folders outside
    the workspace were watched one level deep, as they were when the watch began, so every note
    written in it later was missed."""
    month = memory_elsewhere.memory / "2026-12"
    month.mkdir()
    time.sleep(0.3)
    note = month / "note.md"
    note.write_text("a note of the new month\n")  # created, written and closed
    assert memory_elsewhere.seen(note), (
        f"a note written in {month} (a folder made after the watch began) was never seen"
    )


def test_a_folder_outside_holding_a_database_is_not_asked_for_writes(sandbox: Sandbox) -> None:
    """The reason writes are not asked outside the workspace: a live database's -wal there gets
    several writes per commit. A folder a component points to is asked for them only when it
    holds no database."""
    sb = sandbox
    as_init_writes_it(sb)
    cfg = load_config(sb.config_path, sb.env)
    envx = Environment(env=sb.env)
    _layout, sel = select_sources(cfg, "full", envx)
    databases = {e.path.parent for e in sel.entries.values() if e.kind == "sqlite"}
    outside = [d for d in databases if not d.is_relative_to(cfg.workspace)]
    assert outside, "the sample keeps no database outside the workspace"
    asked = {root: kinds for root, _recursive, kinds in _roots(cfg.workspace, sel)}
    watched = [d for d in outside if d in asked]
    assert watched, "no folder outside the workspace holding a database is watched (for its config files)"
    for folder in watched:
        assert FileModifiedEvent not in asked[folder], f"writes are asked in {folder}, which holds a database"
    assert FileModifiedEvent in asked[cfg.workspace]


def test_a_workspace_reached_through_a_symlink_is_watched_whole(sandbox: Sandbox) -> None:
    """~/argent -> /data/argent: a note appended in a subfolder of the real folder is seen."""
    sb = sandbox
    as_init_writes_it(sb)
    real = sb.root / "data-argent"
    sb.workspace.rename(real)
    sb.workspace.symlink_to(real)
    watch = FileWatch(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    try:
        note = sorted((real / "memory").glob("*.md"))[0]
        time.sleep(0.3)
        watch.events.take(time.monotonic() + 100)
        with open(note, "a") as held:
            held.write("\n- appended\n")
            held.flush()
            deadline = time.monotonic() + 3
            while not watch.events.first and time.monotonic() < deadline:
                time.sleep(0.05)
            assert watch.events.first, f"an append to {note} (the workspace reached through a symlink) was never seen"
    finally:
        watch.close()


def test_a_file_in_a_folder_on_the_way_to_one_read_makes_no_snapshot(sandbox: Sandbox) -> None:
    """HOME holds ~/.argentos, whose files a backup reads: folders on the way (HOME, /home, /)
    were watched too, so every file any program made in HOME (a shell's history) started a
    snapshot of the files, every few seconds on a busy machine."""
    sb = sandbox
    as_init_writes_it(sb)
    watch = FileWatch(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    try:
        time.sleep(0.3)
        watch.events.take(time.monotonic() + 100)
        (sb.home / ".bash_history").write_text("ls\n")
        (sb.home / ".argentos" / "argent.json").write_text("{}\n")  # read by a backup: counts
        deadline = time.monotonic() + 3
        while not watch.events.first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watch.events.first, "a change of ~/.argentos/argent.json was not seen"
        watch.events.take(time.monotonic() + 100)
        (sb.home / ".lesshst").write_text("x\n")
        time.sleep(1.0)
        assert not watch.events.first, "a file made in HOME, which no backup reads, made a snapshot due"
    finally:
        watch.close()


def test_a_memory_folder_renamed_away_and_made_again_is_watched_again(memory_elsewhere: Watched) -> None:
    """A sync tool replaces the folder memory/ points to: renames it away, makes it again. The
    kernel's watch went with the old folder, so no note written in the new one was ever seen."""
    memory = memory_elsewhere.memory
    memory.rename(memory.with_name("memory.old"))
    memory.mkdir()
    (memory / "first.md").write_text("the first note of the new folder\n")
    deadline = time.monotonic() + QUIET_SECONDS + RECHECK_SECONDS + 3
    while not memory_elsewhere.watch.due() and time.monotonic() < deadline:
        time.sleep(0.1)  # `phx watch` asks every tenth of a second or so
    memory_elsewhere.watch.pending = False
    note = memory / "second.md"
    note.write_text("a note written once the folder was replaced\n")
    assert memory_elsewhere.seen(note), f"a note written in the new {memory} was never seen"
