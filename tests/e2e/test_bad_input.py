"""Acceptance 5 (part): bad input gives one clear `phx: error:` line on stderr, the documented exit
code (2 bad usage or config, 1 failure), no traceback, and leaves the repository verifying.

Covered here: wrong passphrase, missing config, invalid config, bad usage, a repository written
by a newer format. (Unreadable files: test_unreadable_file.py; full disk: test_full_disk.py.)"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from e2e_support import PHX, Sandbox, assert_error, remove_chain

# The sandboxes' helpers (backup, restore_to, verify, snapshots) run phx in this process
pytestmark = pytest.mark.phx_in_process


def repository_files(sb: Sandbox) -> dict[str, bytes]:
    return {p.relative_to(sb.repo).as_posix(): p.read_bytes() for p in sb.repo.rglob("*") if p.is_file()}


def assert_still_verifies(sb: Sandbox, snapshots: int = 1) -> None:
    doc = sb.verify("--read-data")
    assert doc["ok"] is True and doc["errors"] == [], doc
    assert doc["checked"]["snapshots"] == snapshots
    assert list((sb.repo / "locks").iterdir()) == [], "a lock was left behind"


# -- wrong passphrase -----------------------------------------------------------------------


def test_wrong_passphrase(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    before = repository_files(sb)
    env = sb.env_with(PHX_PASSPHRASE="not the passphrase")
    for args in (("list",), ("backup",), ("verify",), ("restore", "--latest", "--to", str(tmp_path / "out"))):
        res = sb.phx(*args, env=env, check=None)
        assert_error(res, 1, "passphrase")
    assert repository_files(sb) == before, "a failed open changed the repository"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.md"))
    assert_still_verifies(sb)


def test_no_passphrase_without_a_terminal(backed_up: Sandbox) -> None:
    sb = backed_up
    res = sb.phx("list", env=sb.env_with(PHX_PASSPHRASE=None), check=None)
    assert res.code in (1, 2), res
    assert_error(res, res.code, "PHX_PASSPHRASE")
    assert_still_verifies(sb)


# -- missing config -------------------------------------------------------------------------


def test_config_path_points_nowhere(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    missing = tmp_path / "no-such-dir" / "phx.json"
    for command in ("backup", "list", "verify"):
        res = sb.phx(command, env=sb.env_with(PHX_CONFIG=str(missing)), check=None)
        assert_error(res, 2, str(missing), "phx init")
    res = sb.phx("backup", "--config", missing, check=None)
    assert_error(res, 2, str(missing))
    assert_still_verifies(sb)


def test_no_config_anywhere(sandbox: Sandbox, tmp_path: Path) -> None:
    empty_home = tmp_path / "empty-home"
    empty_home.mkdir()
    env = sandbox.env_with(PHX_CONFIG=None, HOME=str(empty_home))
    before = repository_files(sandbox)
    for command in ("backup", "list"):
        res = sandbox.phx(command, env=env, check=None)
        line = assert_error(res, 2, "config", "phx init")
        assert "~/.argentos/backup.json" in line or str(empty_home) in line, line
    assert list(empty_home.iterdir()) == [], "a failed command wrote into HOME"
    assert repository_files(sandbox) == before


# -- invalid config -------------------------------------------------------------------------

BAD_CONFIGS = {
    "bad-json": ('{"workspace": "/w", "include": [,]}', ("not valid JSON", "line 1")),
    "unknown-key": ({"retension": {"daily": 7}}, ("retension",)),
    "wrong-type": ({"retention": {"daily": "seven"}}, ("retention.daily",)),
    "bad-choice": ({"encryption": {"enabled": True, "method": "rot13"}}, ("encryption.method",)),
    "not-an-object": ("[1, 2, 3]", ("object",)),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_invalid_config(backed_up: Sandbox, case: str) -> None:
    sb = backed_up
    good = sb.config_path.read_text()
    bad, needles = BAD_CONFIGS[case]
    if isinstance(bad, dict):
        sb.config_path.write_text(json.dumps({**json.loads(good), **bad}))
    else:
        sb.config_path.write_text(bad)
    before = repository_files(sb)
    for command in ("backup", "list"):
        res = sb.phx(command, check=None)
        line = assert_error(res, 2, *needles)
        assert str(sb.config_path) in line, f"the error does not name the config file: {line}"
        assert res.err.count("\n") == 1, f"more than one line on stderr:\n{res}"
    assert repository_files(sb) == before
    sb.config_path.write_text(good)
    assert_still_verifies(sb)


# -- bad usage ------------------------------------------------------------------------------


def test_restore_without_a_snapshot_is_bad_usage(backed_up: Sandbox, tmp_path: Path) -> None:
    res = backed_up.phx("restore", "--to", tmp_path / "x", check=None)
    assert_error(res, 2, "--latest", "--backup")
    res = backed_up.phx("restore", "--latest", "--backup", "abcd", "--to", tmp_path / "x", check=None)
    assert_error(res, 2, "--latest", "--backup")
    assert not (tmp_path / "x").exists()


def test_bad_time_is_bad_usage(backed_up: Sandbox) -> None:
    res = backed_up.phx("backup", "--time", "yesterday", check=None)
    assert_error(res, 2, "--time", "RFC 3339")
    assert len(backed_up.snapshots()) == 1


def test_unknown_option_is_bad_usage(backed_up: Sandbox) -> None:
    """DESIGN §2: bad usage exits 2 with one clear `phx: error:` sentence, like every other error."""
    res = backed_up.phx("backup", "--no-such-option", check=None)
    assert_error(res, 2, "--no-such-option")


# -- newer repository format ----------------------------------------------------------------


def test_repository_of_a_newer_format(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    config_file = sb.repo / "config"
    original = config_file.read_bytes()
    doc = json.loads(original)
    assert doc["version"] == 6  # a new repository: format 6 (packs named by BLAKE3, extent lists)
    config_file.chmod(0o600)
    config_file.write_text(json.dumps({**doc, "version": 99}, indent=2))
    before = repository_files(sb)
    for args in (("list",), ("backup",), ("verify",), ("restore", "--latest", "--to", str(tmp_path / "out"))):
        res = sb.phx(*args, check=None)
        assert_error(res, 1, "newer", "upgrade", "99")
    assert repository_files(sb) == before, "a command changed a repository it cannot read"
    config_file.write_bytes(original)
    assert_still_verifies(sb)


# -- hostile paths and output streams -------------------------------------------------------


def test_repository_path_in_a_loop_of_symbolic_links(backed_up: Sandbox, tmp_path: Path) -> None:
    """A repository (or restore destination) whose path is a loop of links is one error naming it,
    not "unexpected internal error (RuntimeError: Symlink loop ...)": Path.resolve raises that."""
    sb = backed_up
    loop_a, loop_b = tmp_path / "loop-a", tmp_path / "loop-b"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    res = sb.phx("restore", "--latest", "--to", loop_a, check=None)
    assert_error(res, 1, str(loop_a), "loop of symbolic links", "choose another path")
    res = sb.phx("list", "--repo", loop_a, check=None)
    assert_error(res, 1, str(loop_a), "loop of symbolic links", "choose another path")
    good = sb.config_path.read_text()
    sb.write_config(backupDir=str(loop_a))
    for args in (("list",), ("backup",), ("init",)):
        res = sb.phx(*args, check=None)
        assert_error(res, 1, str(loop_a), "loop of symbolic links", "choose another path")
    sb.config_path.write_text(good)
    assert_still_verifies(sb)


def test_empty_passphrase_file_is_named(backed_up: Sandbox, tmp_path: Path) -> None:
    """An empty PHX_PASSPHRASE_FILE (no key slot has an empty passphrase) is said as what it is,
    naming the file, not as "wrong passphrase ... check PHX_PASSPHRASE"; init writes nothing."""
    sb = backed_up
    empty = tmp_path / "passphrase"
    empty.write_text("\n")
    env = sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(empty))
    res = sb.phx("list", env=env, check=None)
    assert_error(res, 2, str(empty), "is empty", "PHX_PASSPHRASE_FILE")
    config = tmp_path / "new.json"
    res = sb.phx("init", "--config", config, "--repo", tmp_path / "new-repo", env=env, check=None)
    assert_error(res, 2, str(empty), "is empty")
    assert not config.exists() and not (tmp_path / "new-repo").exists()
    assert_still_verifies(sb)


def _phx_with_stdout(sb: Sandbox, args: list[str], stdout: str) -> subprocess.CompletedProcess[str]:
    """`phx ARGS` with stdout "closed" (no descriptor 1), "full" (/dev/full) or "gone" (a pipe whose
    reader closed it before the first write)."""
    cmd = [PHX, *args]
    if stdout == "closed":
        return subprocess.run(
            ["sh", "-c", 'exec "$@" >&-', "sh", *cmd],
            env=sb.env,
            capture_output=False,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=120,
        )
    if stdout == "full":
        with open("/dev/full", "wb") as full:
            return subprocess.run(
                cmd, env=sb.env, stdout=full, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=120
            )
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            cmd, env=sb.env, stdout=write, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=120
        )
    finally:
        os.close(write)


@pytest.mark.parametrize("stdout", ["closed", "full"])
def test_output_that_cannot_be_written_is_an_error(backed_up: Sandbox, stdout: str) -> None:
    """A listing or a dump whose stdout is closed or full fails (exit 1) with one line naming stdout
    and the cause, instead of exit 0 with the output lost or "unexpected internal error"."""
    sb = backed_up
    cause = "stdout is closed" if stdout == "closed" else "No space left on device"
    for args in (["list"], ["--json", "list"], ["ls", "latest"], ["dump", "latest", "SOUL.md"]):
        res = _phx_with_stdout(sb, args, stdout)
        assert res.returncode == 1, (args, res.returncode, res.stderr)
        lines = res.stderr.splitlines()
        assert len(lines) == 1, (args, res.stderr)
        line = json.loads(lines[0])["message"] if args[0] == "--json" else lines[0]
        assert "could not write the output to stdout" in line and cause in line, (args, line)
        assert "internal error" not in line and "Traceback" not in res.stderr
    assert_still_verifies(sb)


def test_reader_that_went_away_ends_quietly(backed_up: Sandbox) -> None:
    """`phx ls | head -1`: the reader closing the pipe ends phx as SIGPIPE ends a Unix tool (141,
    nothing on stderr), not with "unexpected internal error (BrokenPipeError)"."""
    sb = backed_up
    for args in (["list"], ["ls", "latest"], ["dump", "latest", "SOUL.md"]):
        res = _phx_with_stdout(sb, args, "gone")
        assert (res.returncode, res.stderr) == (141, ""), (args, res.returncode, res.stderr)


def test_restore_path_that_matches_nothing(backed_up: Sandbox, tmp_path: Path) -> None:
    """A --path that matches no path of the snapshot (a typo) is bad usage naming the pattern and
    `phx ls`, not exit 0 with "nothing to restore: every selected path already matches"."""
    sb = backed_up
    dest = tmp_path / "out"
    res = sb.phx("restore", "--latest", "--to", dest, "--path", "SOUL.mdd", check=None)
    assert_error(res, 2, "--path SOUL.mdd", "phx ls")
    res = sb.phx("restore", "--latest", "--to", dest, "--memory-only", "--path", "SOUL.md", check=None)
    assert_error(res, 2, "--path SOUL.md", "scope")
    assert not dest.exists()
    doc = sb.restore_to("latest", dest, "--path", "SOUL.md")
    assert (dest / "workspace" / "SOUL.md").read_bytes() == (sb.workspace / "SOUL.md").read_bytes(), doc


def test_folder_deeper_than_the_recursion_limit(backed_up: Sandbox, tmp_path: Path) -> None:
    """A workspace folder 1,100 levels deep (deeper than Python's recursion limit, within PATH_MAX)
    is backed up and restored byte-equal, instead of "unexpected internal error (RecursionError)"
    and no snapshot at all."""
    sb = backed_up
    folder = sb.workspace / "deep"
    folder.mkdir()
    dest = tmp_path / "out"
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        for _ in range(1100):  # by descriptor: the full path passes what one call may name
            os.mkdir("d", dir_fd=fd)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        leaf = os.open("leaf.md", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"at the bottom\n")
        os.close(leaf)
        os.close(fd)
        doc = sb.backup()
        assert doc["incomplete"] == [], doc
        sb.restore_to(doc["id"], dest, "--path", "deep/**")
        restored = dest / "workspace" / "deep" / "/".join(["d"] * 1100) / "leaf.md"
        assert restored.read_bytes() == b"at the bottom\n"
    finally:
        remove_chain(folder)
        remove_chain(dest / "workspace" / "deep")
