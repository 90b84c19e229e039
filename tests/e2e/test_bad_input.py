"""Acceptance 5 (part): bad input gives one clear `phx: error:` line on stderr, the documented exit
code (2 bad usage or config, 1 failure), no traceback, and leaves the repository verifying.

Covered here: wrong passphrase, missing config, invalid config, bad usage, a repository written
by a newer format. (Unreadable files: test_unreadable_file.py; full disk: test_full_disk.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_support import Sandbox, assert_error


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
    assert doc["version"] == 4  # a new repository: format 4 (packs named by BLAKE3)
    config_file.chmod(0o600)
    config_file.write_text(json.dumps({**doc, "version": 99}, indent=2))
    before = repository_files(sb)
    for args in (("list",), ("backup",), ("verify",), ("restore", "--latest", "--to", str(tmp_path / "out"))):
        res = sb.phx(*args, check=None)
        assert_error(res, 1, "newer", "upgrade", "99")
    assert repository_files(sb) == before, "a command changed a repository it cannot read"
    config_file.write_bytes(original)
    assert_still_verifies(sb)
