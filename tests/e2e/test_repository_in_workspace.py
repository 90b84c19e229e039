"""A local target whose repository lies inside the workspace (ops/selection.py
`repository_in_workspace`): every backup leaves the repository out (a backup never saves itself),
and `phx backup --dry-run`, `phx backup` and `phx doctor` give one and the same warning naming the
repository, the workspace and the fix. Before, all three were silent. An `exclude` pattern that
leaves the repository out says it is there knowingly: no warning then."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from e2e_support import Sandbox


def _inside(sb: Sandbox, repo: Path, workspace: Path | None = None, **config: Any) -> None:
    sb.repo = repo
    sb.write_config(backupDir=str(repo), **({"workspace": str(workspace)} if workspace else {}), **config)
    sb.init_repository()


def _said(sb: Sandbox) -> tuple[list[str], list[str], list[str]]:
    """The warnings of the dry run and of the backup (JSON), and doctor's `repository` check as the
    same sentence (message; fix)."""
    dry = sb.backup("--dry-run")["warnings"]
    real = sb.backup()["warnings"]
    doc = sb.phx("doctor", "--json", check=None).json()
    told = [f"{c['message']}; {c['fix']}" for c in doc["checks"] if c["name"] == "repository"]
    return dry, real, told


def _saved(sb: Sandbox) -> list[str]:
    """The paths the latest snapshot holds."""
    return [e["path"] for e in sb.phx("ls", "latest", "--json").json()["entries"]]


def test_a_repository_inside_the_workspace_is_left_out_and_said_the_same_by_backup_dry_run_and_doctor(
    sandbox: Sandbox,
) -> None:
    sb = sandbox
    _inside(sb, sb.workspace / "backups")
    warning = (
        f"the local target's repository {sb.repo} is inside the workspace {sb.workspace}, which backups save: "
        "each backup leaves the repository out (a backup never saves itself), but a loss of the workspace's "
        f"folder or disk takes the backups with it; move the repository outside the workspace (targets.local.path "
        f'in {sb.config_path}), or add "backups/" to `exclude` in {sb.config_path} to keep it there knowingly'
    )
    dry, real, told = _said(sb)
    assert warning in dry and warning in real, (dry, real)
    assert told == [warning], told
    # The text output says it as one warning line (stderr of the dry run, the backup's report).
    res = sb.phx("backup", "--dry-run")
    assert f"warning: {warning}" in res.out + res.err, res
    assert not any(p.startswith("workspace/backups") for p in _saved(sb)), "the repository was saved into itself"

    # Excluded by the user: kept there knowingly, nothing said.
    sb.write_config(exclude=["backups/"])
    dry, real, told = _said(sb)
    assert not [w for w in dry + real if "repository" in w] and told == [], (dry, real, told)


def test_a_repository_inside_a_workspace_reached_through_a_symlink_is_left_out_too(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The workspace configured as a symlink (~/argent -> /data/argent), the repository named by
    its real path below it: the walk met it as `<link>/backups` and saved the repository into
    itself."""
    sb = sandbox
    link = tmp_path / "argent-link"
    os.symlink(sb.workspace, link)
    _inside(sb, sb.workspace / "backups", workspace=link)
    dry, real, told = _said(sb)
    assert any(f"the local target's repository {sb.repo} is inside the workspace {link}" in w for w in real), real
    assert len(told) == 1 and any(told[0] == w for w in dry), (dry, told)
    assert not any(p.startswith("workspace/backups") for p in _saved(sb)), "the repository was saved into itself"
