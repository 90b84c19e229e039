"""Attacks on the destination-folder errors and the leftovers' warnings (tests/e2e/
test_restore_destination_errors.py): many temporary files that cannot be removed are a bounded
number of warnings, and a hostile folder name in an error is shown escaped, never raw."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import PHX, Sandbox
from test_restore_destination_errors import CAPLESS

from hostile import folding_lookups
from phoenix_backup.ops import restore as restore_op
from phoenix_backup.repo.locks import boot_id, pid_namespace
from phoenix_backup.sinks import files

MANY = 40  # unremovable leftovers: the bound is what is asserted, not the count (10,000 said the same)


@contextlib.contextmanager
def _locked_for_phx(sb: Sandbox, folder: Path) -> Iterator[None]:
    """`folder` mode 0555 and each `phx` of `sb` run without the capability to ignore that."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) runs phx without the capability to ignore file modes")
    folder.chmod(0o555)
    sb.prefix = CAPLESS
    try:
        yield
    finally:
        sb.prefix = ()
        folder.chmod(0o755)


def test_many_leftovers_the_journals_clean_up_cannot_remove_are_a_few_lines(sandbox: Sandbox, tmp_path: Path) -> None:
    """A killed restore's journal names a folder holding MANY of its temporary files, none
    removable (the folder 0555, `phx` without the capability to ignore that): a few warnings
    naming the first and one counting the rest, as text and as JSON lines. Before, one warning
    line per file: 10,000 files were 10,000 lines before every command's output."""
    sb = sandbox
    folder = tmp_path / "folder"
    folder.mkdir()
    dead = 2**22 + 13  # above pid_max's default: no such process
    for i in range(MANY):
        (folder / f".phx-tmp-{dead}-77-{i:012x}").write_bytes(b"half a file\n")
    journals = sb.cache / "restore-journal"
    journals.mkdir(parents=True, exist_ok=True)
    head = {"bootId": boot_id(), "pidNamespace": pid_namespace(), "pid": dead, "start": 77}
    runs = []
    with _locked_for_phx(sb, folder):
        for args in (["list"], ["--json", "list"]):
            (journals / f"{dead}-77").write_text("\n".join(json.dumps(x) for x in (head, str(folder))) + "\n")
            runs.append(sb.phx(*args, check=None))
    text, as_json = runs
    assert text.code == 0 and as_json.code == 0, runs
    said = [line for line in text.stderr_lines() if "warning" in line]
    assert 2 <= len(said) <= 4, said
    assert said[0].startswith(f"phx: warning: {folder}/.phx-tmp-{dead}-77-"), said
    assert f"{MANY - len(said) + 1} more" in said[-1], said
    lines = [json.loads(line) for line in as_json.err.splitlines()]  # each line JSON
    warned = [d for d in lines if d.get("level") == "warning"]
    assert len(warned) == len(said), lines
    assert all(d["type"] == "notice" and isinstance(d["message"], str) for d in warned), lines
    assert len(list(folder.iterdir())) == MANY  # they stay, said


def test_many_leftovers_the_restore_cannot_remove_are_a_few_lines(sandbox: Sandbox, tmp_path: Path) -> None:
    """The restore's own clean-up of the folders it writes to (`FileWriter.clean_leftovers`): MANY
    temporary files of a killed restore in a folder it cannot remove them from are a few warnings
    and a count, the restore goes on (exit 0). Before, one line per file."""
    sb = sandbox
    (sb.workspace / "tree").mkdir()
    (sb.workspace / "tree" / "note.md").write_bytes(b"a note\n")
    snap = sb.backup()
    dest = tmp_path / "restored"
    sb.phx("restore", "--backup", snap["id"], "--to", dest)
    tree = dest / "workspace" / "tree"
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    for i in range(MANY):
        (tree / f".phx-tmp-{dead}-12345-{i:012x}").write_bytes(b"half a file\n")
    with _locked_for_phx(sb, tree):
        res = sb.phx("restore", "--backup", snap["id"], "--to", dest, check=None, timeout=120)
    assert res.code == 0, res
    said = [line for line in res.stderr_lines() if "temporary file" in line]
    assert 2 <= len(said) <= 4, said
    assert said[0].startswith(f"phx: warning: {tree}/.phx-tmp-{dead}-12345-"), said
    assert f"{MANY - len(said) + 1} more" in said[-1], said
    assert len(list(tree.glob(".phx-tmp-*"))) == MANY


def test_a_hostile_folder_name_in_the_error_is_shown_escaped(sandbox: Sandbox, tmp_path: Path) -> None:
    """A folder whose name holds a newline and an ANSI escape, with a file planted where it goes in
    the destination: the per-path error (exit 3) names it escaped (`\\n`, `\\x1b`), one line, and
    never writes the raw escape to the terminal. Before, the name went to stderr as it is: the
    sentence broke over two lines and the escape cleared the user's screen."""
    sb = sandbox
    hostile = "evil\nname\x1b[2J"
    (sb.workspace / hostile).mkdir()
    (sb.workspace / hostile / "note.md").write_bytes(b"a note\n")
    (sb.workspace / "plain.md").write_bytes(b"plain\n")
    snap = sb.backup()
    dest = tmp_path / "restored"
    (dest / "workspace").mkdir(parents=True)
    (dest / "workspace" / hostile).write_bytes(b"in the way\n")
    res = sb.phx("restore", "--backup", snap["id"], "--to", dest, check=None, timeout=120)
    assert res.code == 3, res
    for stream in (res.out, res.err):
        assert "\x1b" not in stream and "evil\nname" not in stream, res
    said = [line for line in res.out.splitlines() if "not restored:" in line]
    assert len(said) == 2 and all("evil\\nname\\x1b[2J" in line for line in said), res
    assert (dest / "workspace" / "plain.md").read_bytes() == b"plain\n"


def test_a_removed_leftover_with_a_hostile_name_is_said_escaped(sandbox: Sandbox, tmp_path: Path) -> None:
    """A killed restore's journal names a folder whose name holds a newline and an ANSI escape; its
    temporary file there is removed and the notice naming it shows the name escaped, one line.
    Before, `removed 1 temporary file(s) ... (e.g. PATH)` printed the path raw."""
    sb = sandbox
    folder = tmp_path / "evil\nname\x1b[2J"
    folder.mkdir()
    dead = 2**22 + 17
    left = folder / f".phx-tmp-{dead}-77-00aa11bb22cc"
    left.write_bytes(b"half a file\n")
    journals = sb.cache / "restore-journal"
    journals.mkdir(parents=True, exist_ok=True)
    head = {"bootId": boot_id(), "pidNamespace": pid_namespace(), "pid": dead, "start": 77}
    (journals / f"{dead}-77").write_text("\n".join(json.dumps(x) for x in (head, str(folder))) + "\n")
    res = sb.phx("list", check=None)
    assert res.code == 0, res
    assert not left.exists()
    assert "\x1b" not in res.err and "evil\nname" not in res.err, res
    said = [line for line in res.stderr_lines() if "temporary file(s)" in line]
    assert len(said) == 1 and "evil\\nname\\x1b[2J" in said[0], res


def test_a_destination_removed_while_the_restore_runs_is_one_clear_error(sandbox: Sandbox, tmp_path: Path) -> None:
    """The destination's `workspace` folder removed while a restore writes a 16 MiB file into it:
    exit 1, one sentence saying a folder is gone, naming it, and what to check,
    no temporary file left. Before: "No such file or directory while restoring workspace/MEMORY.md",
    naming neither the folder nor a fix."""
    sb = sandbox
    (sb.workspace / "big").mkdir()
    (sb.workspace / "big" / "a.bin").write_bytes(os.urandom(16 << 20))  # incompressible: written for a while
    snap = sb.backup()
    dest = tmp_path / "restored"
    proc = subprocess.Popen(
        [PHX, "restore", "--backup", snap["id"], "--to", str(dest)],
        env=dict(sb.env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        big, deadline = dest / "workspace" / "big", time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if big.is_dir() and any(big.glob(".phx-tmp-*")):
                for _ in range(100):  # the restore creates entries while they are removed
                    shutil.rmtree(dest / "workspace", ignore_errors=True)
                    if not (dest / "workspace").exists():
                        break
                break
            time.sleep(0.001)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode == 0:
        pytest.skip("the restore finished before its folder could be removed")
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in err and "bug in Phoenix" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("phx: error: ")]
    assert len(lines) == 1, err
    assert "a folder is gone while restoring" in lines[0] and "removed or moved" in lines[0], err
    assert str(dest) in lines[0], err
    assert [str(p) for p in dest.rglob(".phx-tmp-*")] == []


@pytest.mark.phx_in_process
def test_two_paths_one_name_on_a_case_insensitive_destination_restore_nothing(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot made on Linux holds `memory/Note.md` and `memory/note.md`; restored onto a file
    system that ignores case (macOS, a USB stick; simulated: the probe's answer, as no such file
    system mounts here), the second was written over the first and both were said restored
    (exit 0). Now the restore refuses before writing anything and names both paths. On a file
    system that tells them apart (this one, probed for real) both are restored."""
    sb = backed_up
    (sb.workspace / "memory/Note.md").write_bytes(b"upper\n")
    (sb.workspace / "memory/note.md").write_bytes(b"lower\n")
    sb.phx_here("backup")
    monkeypatch.setattr(restore_op, "folds_names", lambda folder: True, raising=False)
    res = sb.phx_here("restore", "--latest", "--to", tmp_path / "folding", "--json", code=1)
    assert "workspace/memory/Note.md and workspace/memory/note.md differ only in case" in res.json()["error"]
    assert not (tmp_path / "folding").exists() or not any((tmp_path / "folding").rglob("*.md"))
    monkeypatch.undo()
    assert not files.folds_names(tmp_path)
    sb.phx_here("restore", "--latest", "--to", tmp_path / "sensitive")
    assert (tmp_path / "sensitive/workspace/memory/Note.md").read_bytes() == b"upper\n"
    assert (tmp_path / "sensitive/workspace/memory/note.md").read_bytes() == b"lower\n"


@pytest.mark.phx_in_process
def test_a_file_renamed_in_case_is_not_deleted_by_restore_delete_on_a_case_insensitive_file_system(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot holds `memory/Note.md`, renamed `note.md` since. On a file system that ignores
    case (macOS, a USB stick; simulated: the probe's answer) `Note.md` is that very file, found
    unchanged or written over, and `restore --delete` then deleted `note.md`, which there is the
    same file: the restore ended with neither name, exit 0 (adv27). Now that delete is not done,
    and a warning says why."""
    sb = backed_up
    memory = sb.workspace / "memory"
    (memory / "Note.md").write_bytes(b"upper\n")
    sb.phx_here("backup")
    (memory / "Note.md").rename(memory / "note.md")
    monkeypatch.setattr(restore_op, "folds_names", lambda folder: True, raising=False)
    doc = sb.phx_here("restore", "--latest", "--yes", "--delete", "--json").json()
    assert (memory / "note.md").read_bytes() == b"upper\n"
    assert "workspace/memory/note.md" not in [i["path"] for i in doc["items"] if i["action"] == "delete"]
    assert any("workspace/memory/note.md is not deleted" in w for w in doc["warnings"]), doc["warnings"]


@pytest.mark.phx_in_process
def test_two_paths_in_nfc_and_nfd_on_a_normalizing_case_sensitive_destination_restore_nothing(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`memory/café.md` in NFC and in NFD, restored onto a file system that tells case apart but
    not Unicode normal form (APFS formatted case-sensitive, ZFS with normalization; simulated: the
    probe's lookup answers as there). The probe looked up case only, so the second was written over
    the first, both said restored (adv27). Now the normal form is probed too."""
    sb = backed_up
    (sb.workspace / "memory/caf\u00e9.md").write_bytes(b"nfc\n")
    (sb.workspace / "memory/cafe\u0301.md").write_bytes(b"nfd\n")
    sb.phx_here("backup")
    real_lstat = os.lstat

    def normalizing(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        p = Path(path)
        if p.name.startswith(".phx-tmp-") and not p.name.isascii():
            path = p.parent / unicodedata.normalize("NFC", p.name)
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", normalizing)
    res = sb.phx_here("restore", "--latest", "--to", tmp_path / "apfs", "--json", code=1)
    assert "differ only in case or Unicode form" in res.json()["error"], res.json()
    assert not any((tmp_path / "apfs").rglob("caf*.md"))
    monkeypatch.undo()
    assert not files.folds_forms(tmp_path) and not list(tmp_path.glob(".phx-tmp-*"))


@pytest.mark.phx_in_process
def test_a_dry_run_refuses_what_the_restore_refuses_on_a_case_insensitive_destination(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`restore --dry-run` wrote no probe file, so it never asked whether the destination ignores
    case: it showed a plan (exit 0) that the restore itself then refused (exit 1). Now it looks up
    names already there in the other case (writing nothing) and gives the restore's verdict; on
    this file system, which tells them apart, both say yes."""
    sb = backed_up
    (sb.workspace / "memory/Note.md").write_bytes(b"upper\n")
    (sb.workspace / "memory/note.md").write_bytes(b"lower\n")
    sb.phx_here("backup")
    dest = tmp_path / "folding"
    with folding_lookups(monkeypatch, tmp_path.parent):
        dry = sb.phx_here("restore", "--latest", "--to", dest, "--dry-run", "--json", code=1).json()["error"]
        real = sb.phx_here("restore", "--latest", "--to", dest, "--json", code=1).json()["error"]
    assert dry == real and "workspace/memory/Note.md and workspace/memory/note.md differ only in case" in dry
    assert not dest.exists() and not list(tmp_path.glob(".phx-tmp-*"))
    dry_doc = sb.phx_here("restore", "--latest", "--to", dest, "--dry-run", "--json").json()
    assert not [w for w in dry_doc["warnings"] if "case" in w], dry_doc["warnings"]
    sb.phx_here("restore", "--latest", "--to", dest)
    assert (dest / "workspace/memory/note.md").read_bytes() == b"lower\n"


@pytest.mark.phx_in_process
def test_a_file_beside_a_folder_of_the_same_name_in_another_case_is_refused_up_front(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot holds a file `memory/Topic` and a folder `memory/topic/` (with `x.md`). On a file
    system that ignores case one cannot be made beside the other, but only two files were ever
    compared: the pair passed (simulated: exit 0, both written on this file system, which tells
    them apart; on one that does not, the second write meets the first). Now it is refused before
    anything is written, naming both (the folder with its slash), by the dry run too."""
    sb = backed_up
    (sb.workspace / "memory/Topic").write_bytes(b"a file\n")
    (sb.workspace / "memory/topic").mkdir()
    (sb.workspace / "memory/topic/x.md").write_bytes(b"in the folder\n")
    sb.phx_here("backup")
    dest = tmp_path / "folding"
    with folding_lookups(monkeypatch, tmp_path.parent):
        for extra in (("--dry-run",), ()):
            res = sb.phx_here("restore", "--latest", "--to", dest, *extra, "--json", code=1)
            error = res.json()["error"]
            assert "workspace/memory/Topic and workspace/memory/topic/ differ only in case" in error, error
            assert "a file and a folder cannot both be there; nothing was restored" in error, error
    assert not dest.exists()


@pytest.mark.phx_in_process
def test_a_dry_run_that_cannot_tell_says_so(backed_up: Sandbox, tmp_path: Path) -> None:
    """`café.md` in NFC and NFD: whether the destination ignores Unicode form is found, without
    writing, only from a name already there in one form; an empty folder on this file system
    holds none. The dry run says it could not tell (the restore itself probes, and here restores
    both)."""
    sb = backed_up
    (sb.workspace / "memory/caf\u00e9.md").write_bytes(b"nfc\n")
    (sb.workspace / "memory/cafe\u0301.md").write_bytes(b"nfd\n")
    sb.phx_here("backup")
    empty = tmp_path / "empty"
    empty.mkdir()
    doc = sb.phx_here("restore", "--latest", "--to", empty / "out", "--dry-run", "--json").json()
    said = [w for w in doc["warnings"] if "differ only in case or Unicode form" in w]
    assert len(said) == 1 and "a dry run does not do" in said[0], doc["warnings"]
    sb.phx_here("restore", "--latest", "--to", empty / "out")
    assert (empty / "out/workspace/memory/cafe\u0301.md").read_bytes() == b"nfd\n"


@pytest.mark.phx_in_process
def test_hostile_names_in_the_pairs_refusal_are_shown_escaped(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pair whose names hold a newline and an ANSI escape: the refusal is one line, the names
    escaped, never the raw escape."""
    sb = backed_up
    hostile = "evil\nName\x1b[2J"
    (sb.workspace / "memory" / hostile).write_bytes(b"upper\n")
    (sb.workspace / "memory" / hostile.lower()).write_bytes(b"lower\n")
    sb.phx_here("backup")
    monkeypatch.setattr(restore_op, "folds_names", lambda folder: True, raising=False)
    res = sb.phx_here("restore", "--latest", "--to", tmp_path / "folding", code=1)
    assert "\x1b" not in res.out + res.err and "evil\nname" not in res.out + res.err, res
    lines = [line for line in res.err.splitlines() if "differ only in case" in line]
    assert len(lines) == 1 and "evil\\nName\\x1b[2J" in lines[0], res
