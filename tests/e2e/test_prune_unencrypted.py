"""Prune on an unencrypted repository never deletes a pack a snapshot needs.

Found by the reliability suite: a small pack whose every blob is in use (a backup's tree pack)
counted its own header as waste and was repacked; unencrypted, the copy has the same bytes and so
the same name, and deleting "the old pack" deleted the only copy. The first backup of a new
repository (which prunes right after it) then left a snapshot that cannot be restored."""

from __future__ import annotations

from pathlib import Path

from e2e_support import Sandbox


def test_empty_snapshot_survives_prune(make_sandbox, tmp_path: Path) -> None:
    """The smallest case: a snapshot of one small file, whose tree pack is a few hundred bytes.
    (A snapshot of nothing at all is refused now: a narrow backup that finds nothing is an error.)"""
    sb: Sandbox = make_sandbox(encryption=False)
    for path in sb.workspace.glob("*.md"):
        path.unlink()
    (sb.workspace / ".argent-alignment-integrity.json").unlink()
    (sb.workspace / "SOUL.md").write_text("s\n")
    doc = sb.backup("--identity-only")  # the first backup prunes right after it
    assert doc["files"] == 1 and doc["retention"]["ok"] is True
    sb.phx("prune")
    check = sb.verify("--read-data")
    assert check["ok"] is True and check["errors"] == [], check
    res = sb.restore_to(doc["id"], tmp_path / "restored")
    assert res["errors"] == []
