"""Attacks on the passphrase-source change (ops/context.py `given_passphrase`, the checks said
before the key's scrypt): what a user's setup relied on before must still work."""

from __future__ import annotations

import json
from pathlib import Path

from e2e_support import Sandbox
from test_key_derivation_memory import run_watched


def test_a_workspace_that_the_pre_backup_hook_mounts_is_backed_up(backed_up: Sandbox, tmp_path: Path) -> None:
    # The workspace lives on a disk that hooks.preBackup mounts (here: moves back into place);
    # it is missing only until the hook ran, as it always was.
    sb = backed_up
    away = tmp_path / "unmounted"
    sb.workspace.rename(away)
    sb.write_config(hooks={"preBackup": f"mv {away} {sb.workspace}"})
    res = sb.phx("backup", "--json", check=None)
    assert res.code == 0, res.err
    assert (sb.workspace / "SOUL.md").is_file()
    assert len(sb.snapshots()) == 2


def test_a_missing_workspace_is_recorded_as_a_failed_backup_and_costs_no_key(
    backed_up: Sandbox, tmp_path: Path
) -> None:
    # An unattended backup whose workspace disk is not mounted: the failure is said, costs no
    # scrypt, and lands in the state file that monitoring (`phx status`, notifications) reads.
    sb = backed_up
    sb.workspace.rename(tmp_path / "moved")
    code, err, derived = run_watched(sb, tmp_path, "backup")
    assert code != 0 and "the workspace" in err and "does not exist" in err, err
    assert derived == []
    state = json.loads((Path(sb.env["HOME"]) / ".argentos" / "backup" / ".last-backup").read_text())
    assert state["success"] is False, state
    assert "does not exist" in json.dumps(state), state
