"""Every folder a restore creates survives a power cut once the restore says it is done.

A new folder's name lives in its parent folder: unless the parent is fsynced, a power cut can lose
the folder (and every file renamed into it) although each file was fsynced and its rename synced
in the new folder itself. No test here cuts the power; the system calls are traced instead: every
successful mkdir is followed by an fsync of that folder's parent before the restore prints its
report, and each parent is fsynced only a few times (the syncs are batched)."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from e2e_support import Sandbox, run_phx

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(STRACE is None, reason="strace is not installed")

# `PID call(args) = result`, as `strace -f -y -o FILE` writes it; -y prints a descriptor as fd<path>.
_LINE = re.compile(r"^\d+\s+(?P<call>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+)")
_FD = re.compile(r"^-?\d+<(?P<path>[^>]*)>")
_STR = re.compile(r'"(?P<s>[^"]*)"')
# With threads, strace splits a call another thread interrupts: `PID call(args <unfinished ...>`,
# later `PID <... call resumed>rest) = result`; the two halves are joined again.
_RESUMED = re.compile(r"^<\.\.\. \w+ resumed>(?P<rest>.*)$")


def traced_phx(
    sb: Sandbox, trace: Path, *args: str, calls: str = "mkdir,mkdirat,fsync,fdatasync,write,openat"
) -> list[tuple[str, str, int]]:
    """Run phx under strace; return (call, args, result) of each traced call (`calls`), in order."""
    prefix = [str(STRACE), "-f", "-qq", "-y", "-s", "4096", "-o", str(trace)]
    prefix += ["-e", f"trace={calls}"]
    run_phx(args, sb.env, prefix=prefix)
    traced = []
    pending: dict[str, str] = {}  # pid -> the first half of a call another thread's interrupted
    for line in trace.read_text(errors="replace").splitlines():
        pid, _, rest = line.partition(" ")
        if line.endswith(" <unfinished ...>"):
            pending[pid] = line.removesuffix(" <unfinished ...>")
            continue
        resumed = _RESUMED.match(rest.lstrip())
        if resumed is not None and pid in pending:
            line = pending.pop(pid) + resumed["rest"]
        m = _LINE.match(line)
        if m:
            traced.append((m["call"], m["args"], int(m["ret"])))
    return traced


def unsynced_new_folders(calls: list[tuple[str, str, int]], below: Path) -> list[str]:
    """Folders created below `below` (mkdir = 0) whose parent was not fsynced between the mkdir
    and the first write to stdout (the report)."""
    report = next(
        (i for i, (c, a, _r) in enumerate(calls) if c == "write" and a.startswith("1<") and "{" in a), len(calls)
    )
    missing = []
    for i, (call, args, ret) in enumerate(calls[:report]):
        if ret != 0 or call not in ("mkdir", "mkdirat"):
            continue
        if call == "mkdir":
            s = _STR.search(args)
            assert s is not None, args
            created = Path(s["s"])
        else:
            d, s = _FD.match(args), _STR.search(args)
            assert d is not None and s is not None, args
            created = Path(d["path"], s["s"])
        if not created.is_relative_to(below):
            continue  # Python's own __pycache__, say
        parent = str(created.parent)
        synced = any(
            c in ("fsync", "fdatasync") and (m := _FD.match(a)) is not None and m["path"] == parent
            for c, a, _r in calls[i + 1 : report]
        )
        if not synced:
            missing.append(str(created))
    return missing


def folder_fsyncs(calls: list[tuple[str, str, int]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for c, a, _r in calls:
        m = _FD.match(a)
        if c == "fsync" and m is not None and Path(m["path"]).is_dir():
            counts[m["path"]] += 1
    return counts


def test_folders_a_restore_below_to_creates_are_durable(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    ref = sb.snapshots()[-1]["id"]
    dest = tmp_path / "new" / "deeper" / "dest"  # its parents are created too
    calls = traced_phx(sb, tmp_path / "trace", "restore", "--backup", ref, "--to", str(dest), "--json")
    made = [a for c, a, r in calls if c in ("mkdir", "mkdirat") and r == 0]
    assert len(made) >= 5, f"the restore created too few folders for this test to mean anything: {made}"
    assert unsynced_new_folders(calls, tmp_path) == []  # the cache's journal folder included
    assert (dest / "workspace" / "MEMORY.md").is_file()
    # Batched: no folder is fsynced more than a few times (once per sync point of the restore).
    assert max(folder_fsyncs(calls).values()) <= 3, folder_fsyncs(calls)


def test_folders_an_in_place_restore_creates_are_durable(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    ref = sb.snapshots()[-1]["id"]
    gone = sorted(p for p in sb.workspace.iterdir() if p.is_dir())
    assert gone, "the sample has no folder in its workspace"
    for folder in gone:
        shutil.rmtree(folder)  # the restore must create each again, in place
    calls = traced_phx(sb, tmp_path / "trace", "restore", "--backup", ref, "--yes", "--json")
    assert all(folder.is_dir() for folder in gone)
    # The sample's folder holds the workspace and the home folder (the cache's scratch is elsewhere).
    assert unsynced_new_folders(calls, sb.workspace.parent) == []


def test_the_journal_is_on_disk_before_the_first_temporary_file(backed_up: Sandbox, tmp_path: Path) -> None:
    """The journal names the folders a restore puts temporary files in, so that they are removed
    after a kill or a power cut. Its data was fsynced, but not its name in the journal folder: a
    power cut could keep a temporary file and lose the journal that announced it."""
    sb = backed_up
    ref = sb.snapshots()[-1]["id"]
    calls = traced_phx(sb, tmp_path / "trace", "restore", "--backup", ref, "--to", str(tmp_path / "out"), "--json")
    journal_dir = str(sb.cache / "restore-journal")
    opened = [(i, a) for i, (c, a, r) in enumerate(calls) if c == "openat" and r >= 0]
    in_journals = re.compile(rf"\d+<{re.escape(journal_dir)}>")
    created = next(i for i, a in opened if "O_CREAT" in a and in_journals.match(a))
    first_temporary = next(i for i, a in opened if ".phx-tmp-" in a)
    synced = [
        i for i, (c, a, _r) in enumerate(calls) if c == "fsync" and (m := _FD.match(a)) and m["path"] == journal_dir
    ]
    assert any(created < i < first_temporary for i in synced), "the journal folder is not fsynced in time"


def test_a_file_in_the_way_of_a_new_folder_is_named(backed_up: Sandbox, tmp_path: Path) -> None:
    """`--to` below a file: the one error names the file that is in the way (it said `File exists`
    of the destination, a folder that does not exist), and the restore writes nothing."""
    sb = backed_up
    (tmp_path / "notes").write_text("a file, not a folder\n")
    res = sb.phx("restore", "--backup", "latest", "--to", tmp_path / "notes" / "out" / "dest", check=1)
    assert res.err.count("\n") == 1 and res.err.startswith("phx: error: "), res
    assert f"{tmp_path / 'notes'} is a file, not a folder" in res.err and "File exists" not in res.err, res
    assert (tmp_path / "notes").read_text() == "a file, not a folder\n"


def test_a_dangling_link_in_the_way_of_a_new_folder_is_named(backed_up: Sandbox, tmp_path: Path) -> None:
    """`--to` below a symlink whose target is gone: the one error names the link and its target."""
    sb = backed_up
    (tmp_path / "drive").symlink_to(tmp_path / "unplugged")
    res = sb.phx("restore", "--backup", "latest", "--to", tmp_path / "drive" / "dest", check=1)
    assert res.err.count("\n") == 1 and f"{tmp_path / 'drive'} is a symbolic link to" in res.err, res
    assert str(tmp_path / "unplugged") in res.err and not (tmp_path / "unplugged").exists(), res
