"""Two restores in one process (the Python API) keep one journal each.

Both used to write `restore-journal/<pid>-<start>`: the first to finish deleted the other's record,
and when the process was then killed the other restore's temporary files stayed in the user's
folders for good. The journals of a process that is killed are found and obeyed by the next
command (tests/e2e/test_leftovers.py covers the rest of the journal)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from phoenix_backup.repo.locks import ProcessTag, boot_id, pid_namespace
from phoenix_backup.sinks import leftovers

# A process that runs two restores' journals, as two FileWriters would: each notes its folder and
# puts a temporary file there; the first finishes (closes its journal), then the process is killed
# while the second is still writing.
_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from phoenix_backup.repo.locks import own_start_time
    from phoenix_backup.sinks.leftovers import Journal

    first, second = Path(sys.argv[1]), Path(sys.argv[2])
    tmp = f".phx-tmp-{os.getpid()}-{own_start_time()}-"
    a, b = Journal(), Journal()
    a.record(first)
    (first / (tmp + "aaaaaaaaaaaa")).write_bytes(b"a copy the first restore renames")
    b.record(second)
    (second / (tmp + "bbbbbbbbbbbb")).write_bytes(b"half of the second restore's copy")
    os.rename(first / (tmp + "aaaaaaaaaaaa"), first / "done.db")
    a.close()  # the first restore ends
    os.kill(os.getpid(), signal.SIGKILL)  # the second is killed mid-write
    """
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("PHX_CACHE_DIR", str(root))
    return root


def test_two_restores_in_one_process_keep_their_own_journals(tmp_path: Path, cache: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    a, b = leftovers.Journal(), leftovers.Journal()
    a.record(first)
    b.record(second)
    a.close()
    journals = list((cache / "restore-journal").iterdir())
    assert len(journals) == 1, f"the first restore's end removed the second's journal: {journals}"
    assert str(second) in journals[0].read_text()
    b.close()
    assert list((cache / "restore-journal").iterdir()) == []


def test_a_killed_process_leaves_nothing_of_its_second_restore(tmp_path: Path, cache: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    env = {**os.environ, "PHX_CACHE_DIR": str(cache)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(first), str(second)], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert [p.name for p in second.iterdir()] != [], "the child wrote no temporary file"

    removed, problems = leftovers.clean()  # what the next command does

    assert [p.name for p in second.iterdir()] == [], f"the killed restore's temporary file stayed: {removed}"
    assert problems == []
    assert [p.name for p in first.iterdir()] == ["done.db"]
    assert list((cache / "restore-journal").iterdir()) == []


# --- who may be declared dead: host, boot, PID and time namespaces (the adversary's findings) ---

_DEAD = 2**22 + 11  # above pid_max's default: no such process


def _plant(cache: Path, folder: Path, name: str, head: dict[str, object]) -> Path:
    """A journal `name` with first line `head` naming `folder`, and its writer's temporary file
    there; the file's path."""
    journals = cache / "restore-journal"
    journals.mkdir(parents=True, exist_ok=True, mode=0o700)
    pid, start = head["pid"], head["start"]
    leftover = folder / f".phx-tmp-{pid}-{start}-{uuid.uuid4().hex[:12]}"
    leftover.write_bytes(b"a restore's half-written copy")
    (journals / name).write_text(json.dumps(head) + "\n" + json.dumps(str(folder)) + "\n")
    return leftover


@pytest.mark.skipif(not boot_id() or not pid_namespace(), reason="no /proc boot id or PID namespace")
def test_only_a_provably_dead_restore_loses_its_temporary_files(tmp_path: Path, cache: Path) -> None:
    """A cache folder shared over NFS holds other machines' journals: their boot id differs from
    ours while they run. Before, another boot id alone was taken for a reboot and a live restore's
    files on another host were removed; and a pid reused in another time namespace (whose start
    times are shifted) was taken for a new process, its restore for dead."""
    folder = tmp_path / "folder"
    folder.mkdir()
    me = ProcessTag.current()
    other_boot = str(uuid.uuid4())
    this_host = {"host": me.host, "pidNamespace": me.pid_ns, "timeNamespace": me.time_ns}
    kept = [
        # another machine's restore, running: another host, another boot id
        _plant(
            cache, folder, "otherhost", {**this_host, "host": "elsewhere", "bootId": other_boot, "pid": 7, "start": 5}
        ),
        # an older Phoenix's journal (no host): another boot cannot be told from another machine
        _plant(cache, folder, "oldother", {"bootId": other_boot, "pidNamespace": me.pid_ns, "pid": 8, "start": 5}),
        # this process's pid and another start time, seen in another time namespace: unprovable
        _plant(
            cache,
            folder,
            "othertimens",
            {**this_host, "bootId": me.boot_id, "timeNamespace": me.time_ns + 1, "pid": me.pid, "start": me.start + 9},
        ),
        # an older journal (no time namespace) naming this process's pid with another start time
        _plant(
            cache, folder, "oldreused", {"bootId": me.boot_id, "pidNamespace": me.pid_ns, "pid": me.pid, "start": 1}
        ),
        # a restore in another PID namespace (a container on this host): its pid means nothing here
        _plant(
            cache,
            folder,
            "otherpidns",
            {**this_host, "bootId": me.boot_id, "pidNamespace": me.pid_ns + 1, "pid": _DEAD + 2, "start": 5},
        ),
    ]
    removed = [
        # this host rebooted since
        _plant(cache, folder, "rebooted", {**this_host, "bootId": other_boot, "pid": 9, "start": 5}),
        # this boot, the pid gone
        _plant(cache, folder, "gone", {**this_host, "bootId": me.boot_id, "pid": _DEAD, "start": 5}),
        # this boot and time namespace, the pid reused by a process started at another time
        _plant(cache, folder, "reused", {**this_host, "bootId": me.boot_id, "pid": me.pid, "start": me.start + 1}),
        # an older journal of this boot whose pid is gone
        _plant(
            cache, folder, "oldgone", {"bootId": me.boot_id, "pidNamespace": me.pid_ns, "pid": _DEAD + 1, "start": 5}
        ),
    ]
    leftovers.clean()
    assert [p.name for p in kept if not p.exists()] == []
    assert [p.name for p in removed if p.exists()] == []
    assert sorted(p.name for p in (cache / "restore-journal").iterdir()) == sorted(
        ["otherhost", "oldother", "othertimens", "oldreused", "otherpidns"]
    )


def test_a_journal_names_its_host_and_time_namespace(tmp_path: Path, cache: Path) -> None:
    journal = leftovers.Journal()
    journal.record(tmp_path)
    head = json.loads((cache / "restore-journal" / journal.name).read_text().splitlines()[0])
    journal.close()
    me = ProcessTag.current()
    assert head == {
        "host": me.host,
        "bootId": me.boot_id,
        "pidNamespace": me.pid_ns,
        "timeNamespace": me.time_ns,
        "pid": me.pid,
        "start": me.start,
    }


# --- hostile or damaged headers (the second adversary's findings) ---


@pytest.mark.skipif(not boot_id() or not pid_namespace(), reason="no /proc boot id or PID namespace")
def test_a_pid_too_large_for_any_process_ends_no_command(tmp_path: Path, cache: Path) -> None:
    """A journal's pid is any JSON integer, a watch folder's any run of digits: one beyond a C
    long made `os.kill` raise OverflowError, and every command (which reads the journals first),
    or the watch (which looks at TMPDIR's folders), ended in a traceback. No process has such a
    pid: it is gone, its temporary files go."""
    from phoenix_backup.ops.watch import remove_stale_cache_folders, temp_cache_prefix

    folder = tmp_path / "folder"
    folder.mkdir()
    me = ProcessTag.current()
    head = {"host": me.host, "bootId": me.boot_id, "pidNamespace": me.pid_ns, "timeNamespace": me.time_ns}
    leftover = _plant(cache, folder, "huge", {**head, "pid": 2**64, "start": 5})
    assert leftovers.clean() == ([str(leftover)], [])
    assert list((cache / "restore-journal").iterdir()) == []

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    prefix = temp_cache_prefix().replace(f"-{me.pid}-", f"-{2**64}-")
    (tmp / (prefix + "deadbeef")).mkdir()
    assert [p.name for p in remove_stale_cache_folders(tmp)] == [prefix + "deadbeef"]


def test_a_folder_is_resolved_once_however_many_files_go_there(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore notes each file's folder: the same spelling is resolved (realpath: a system call
    per component) once, not once per file (issue 20), and the journal names it once."""
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    resolved: list[str] = []
    realpath = os.path.realpath

    def counted(path: os.PathLike[str] | str) -> str:
        resolved.append(str(path))
        return realpath(path)

    monkeypatch.setattr(leftovers.os.path, "realpath", counted)
    journal = leftovers.Journal()
    try:
        for _ in range(50):
            journal.record(folder)
        journal.record(tmp_path / "a")
        assert resolved == [str(folder), str(tmp_path / "a")]
        assert journal.path.read_text().count(json.dumps(str(folder)) + "\n") == 1
    finally:
        journal.close()


def test_the_process_start_time_is_read_once_and_again_in_a_forked_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every temporary name carries the process's start time: /proc/self/stat is read once per
    process, not once per file (issue 20); a forked child, another process, reads its own."""
    from phoenix_backup.repo import locks

    start = locks.own_start_time()
    reads: list[Path] = []
    read_text = Path.read_text

    def counted(self: Path, *args: object, **kwargs: object) -> str:
        reads.append(self)
        return read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", counted)
    assert [locks.own_start_time() for _ in range(100)] == [start] * 100
    assert reads == []
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own start time, read from its own /proc/self/stat
        os.close(r)
        os.write(w, f"{locks.own_start_time()} {len(reads)}".encode())
        os._exit(0)
    os.close(w)
    got = os.read(r, 100).decode().split()
    os.close(r)
    os.waitpid(pid, 0)
    assert int(got[1]) == 1  # the child read /proc/self/stat itself
    assert int(got[0]) >= start


def test_a_folder_recorded_again_after_close_is_in_a_journal_again(tmp_path: Path, cache: Path) -> None:
    """`close` deletes the journal; a folder recorded after it (a writer used again) must be in a
    journal again before a temporary file goes there. The spellings remembered from before the
    close said it was noted already, and no journal named it."""
    folder = tmp_path / "a"
    folder.mkdir()
    journal = leftovers.Journal()
    journal.record(folder)
    journal.close()
    assert not journal.path.exists()
    try:
        journal.record(folder)
        assert journal.path.read_text().splitlines()[1:] == [json.dumps(str(folder))]
    finally:
        journal.close()


def _stale_drill_copy_removed() -> bool:
    """In the current folder: a killed drill's scratch folder holding a 0500 folder with a file;
    whether the clean-up removed it whole."""
    from phoenix_backup.ops.watch import remove_stale_cache_folders, temp_cache_prefix  # imported by the caller

    me = ProcessTag.current()
    name = temp_cache_prefix("drill").replace(f"-{me.pid}-", f"-{2**64}-") + "deadbeef"
    locked = Path(name) / "workspace" / "keep"
    locked.mkdir(parents=True)
    (locked / "notes.md").write_text("a plain copy of the snapshot's file")
    locked.chmod(0o500)
    return [p.name for p in remove_stale_cache_folders(Path("."))] == [name] and os.listdir(".") == []


@pytest.mark.skipif(not boot_id() or not pid_namespace(), reason="no /proc boot id or PID namespace")
def test_a_killed_drills_copy_of_a_read_only_folder_is_removed(tmp_path: Path) -> None:
    """A drill restores a snapshot's folders with their modes: killed, its scratch folder can hold
    a 0500 folder, whose files a plain rmtree cannot remove. The drill's own removal makes them
    writable first; the next drill's clean-up of a killed one's did not, and left it for good.
    (Run as an ordinary user: root removes such files all the same.)"""
    import phoenix_backup.ops.watch  # noqa: F401 - before the child becomes a user who may not read the modules

    if os.geteuid() != 0:
        os.chdir(tmp_path)
        assert _stale_drill_copy_removed()
        return
    os.chown(tmp_path, 65534, 65534)
    pid = os.fork()
    if pid == 0:  # the child, as `nobody`, in the folder (its parents are root's 0700)
        code = 1
        try:
            os.chdir(tmp_path)
            os.setgid(65534)
            os.setuid(65534)
            code = 0 if _stale_drill_copy_removed() else 2
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the killed drill's copy of a 0500 folder stayed"
