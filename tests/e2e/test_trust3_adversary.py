"""Attacks on trust3 (passphrase sources read as one, prune's repacked packs, a repository inside
the workspace) that found holes: each test failed before its fix."""

from __future__ import annotations

from pathlib import Path

import pyrage
import pytest
from e2e_support import PASSPHRASE, Sandbox
from test_passphrase_sources import set_passphrase_as_before

from phoenix_backup.config import load_config
from phoenix_backup.ops import context
from phoenix_backup.ops import key as key_ops


def test_a_recovery_passphrase_added_with_a_line_break_opens_an_age_repository_as_before(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repository whose configured method is age (or gpg) opens with a passphrase slot given in
    PHX_PASSPHRASE (a recovery passphrase, when the identity is lost). An earlier Phoenix added
    that slot from PHX_NEW_PASSPHRASE as given, line break included: the same PHX_PASSPHRASE
    opened it. The passphrase is now read without the line break, and that path tried it only
    so: the owner was locked out with the very input that opened it before."""
    sb = backed_up
    recovery = "recovery passphrase\n"
    cfg = load_config(sb.config_path, sb.env)
    with monkeypatch.context() as patch:  # the slot as an earlier Phoenix's `phx key add` made it
        patch.setattr(key_ops, "new_passphrase", lambda _envx: recovery)
        key_ops.key_add(cfg, context.Environment(env=sb.env), method="passphrase")
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    sb.write_config(encryption={"enabled": True, "method": "age", "recipients": [recipient]})
    env = sb.env_with(PHX_PASSPHRASE=recovery)
    res = sb.phx("restore", "--latest", "--to", tmp_path / "out", "--yes", env=env)
    assert "ends with the line break (CR/LF) that ends PHX_PASSPHRASE" in res.err, res.err
    assert (tmp_path / "out" / "workspace" / "SOUL.md").read_bytes() == (sb.workspace / "SOUL.md").read_bytes()
    # Without the line break, it does not open: that slot's passphrase has it.
    res = sb.phx("list", env=sb.env_with(PHX_PASSPHRASE=recovery.rstrip()), check=None)
    assert res.code == 1 and "wrong passphrase" in res.err, res
    assert PASSPHRASE not in res.err


def test_a_user_folder_spelled_like_the_repository_through_a_symlink_and_dotdot_is_saved(
    backed_up: Sandbox, tmp_path: Path
) -> None:
    """backupDir `WS/link/../backups` with `link` a symlink out of the workspace: the repository
    is beside the link's target, not the workspace's own `backups` folder. The walk's skip list
    held the configured path read without links (WS/backups), so the user's folder of that name
    was left out of every backup, with no warning (the repository is not inside the workspace)."""
    sb = backed_up
    elsewhere = sb.root / "elsewhere"
    elsewhere.mkdir()
    (sb.workspace / "link").symlink_to(elsewhere)
    mine = sb.workspace / "backups"
    mine.mkdir()
    (mine / "precious.txt").write_text("the user's own file\n")
    sb.repo.rename(sb.root / "backups")
    sb.write_config(backupDir=str(sb.workspace / "link" / ".." / "backups"))
    res = sb.phx("backup", "--json")
    assert "inside the workspace" not in res.err, res.err
    sb.phx("restore", "--latest", "--to", tmp_path / "out", "--yes")
    assert (tmp_path / "out" / "workspace" / "backups" / "precious.txt").read_text() == "the user's own file\n"


def test_a_workspace_inside_the_repository_or_equal_to_it_is_refused_not_left_out(
    backed_up: Sandbox, tmp_path: Path
) -> None:
    """The walk never saves the repository's folder, and a workspace inside it (or the very same
    folder) is inside it: every backup, its dry run and `phx doctor` said all was well (or only
    that the workspace held no identity file) and saved none of the workspace's files. Now they
    stop with one error naming both folders and the fix."""
    sb = backed_up
    inside = sb.repo / "agent"
    sb.workspace.rename(inside)
    sb.write_config(workspace=str(inside))
    for args in (("backup", "--dry-run"), ("backup",)):
        res = sb.phx(*args, check=None)
        assert res.code == 1, res
        (line,) = res.error_lines()
        assert f"the workspace {inside} is inside the local target's repository {sb.repo}" in line, line
        assert "none of the workspace's files" in line and "targets.local.path" in line, line
    assert len(sb.snapshots()) == 1, "no snapshot without the workspace"
    doc = sb.phx("doctor", "--json", check=None).json()
    assert any(
        c["status"] == "fail" and "is inside the local target's repository" in c["message"] for c in doc["checks"]
    )

    sb.write_config(workspace=str(sb.repo))  # the very folder
    res = sb.phx("backup", "--dry-run", check=None)
    assert res.code == 1 and f"the workspace {sb.repo} is the local target's repository" in res.err, res


def test_key_rotate_runs_with_the_passphrase_as_an_earlier_phoenix_set_it(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repository opens with PHX_PASSPHRASE as given (its line breaks, which an earlier Phoenix
    kept in the slot), but the rotation then read its credentials without them: `phx key rotate`
    failed with "wrong passphrase" for the very input that opened the repository, so the owner
    could not revoke a leaked key. Now it rotates, and the same input opens the new key."""
    sb = backed_up
    as_given = PASSPHRASE + "\r\r\n"
    set_passphrase_as_before(sb, as_given, monkeypatch)
    env = sb.env_with(PHX_PASSPHRASE=as_given)
    before = sb.phx("key", "list", "--json", env=env).json()
    res = sb.phx("key", "rotate", "--json", env=env, check=None)
    assert res.code == 0, res
    assert res.json()["fingerprint"] != res.json()["previous"], res.out
    assert sb.phx("key", "list", "--json", env=env).json() != before
    sb.phx("restore", "--latest", "--to", tmp_path / "out", "--yes", env=env)
    assert (tmp_path / "out" / "workspace" / "SOUL.md").read_bytes() == (sb.workspace / "SOUL.md").read_bytes()
    assert sb.phx("verify", "--read-data", "--json", env=env).json()["ok"]


def test_key_trust_opens_with_the_passphrase_as_an_earlier_phoenix_set_it(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`phx key trust` opens the repository itself (against the fingerprint given, not the pin),
    with the passphrase read without its line break only: the input every other command opened
    the repository with was "wrong passphrase" there."""
    sb = backed_up
    as_given = PASSPHRASE + "\n"
    set_passphrase_as_before(sb, as_given, monkeypatch)
    env = sb.env_with(PHX_PASSPHRASE=as_given)
    fingerprint = sb.phx("key", "list", "--json", env=env).json()[0]["fingerprint"]
    res = sb.phx("key", "trust", fingerprint, env=env, check=None)
    assert res.code == 0, res
    assert "ends with the line break (CR/LF) that ends PHX_PASSPHRASE" in res.err, res.err
