"""Prune on an unencrypted repository never deletes a pack a snapshot needs.

Found by the reliability suite: a small pack whose every blob is in use (a backup's tree pack)
counted its own header as waste and was repacked; unencrypted, the copy has the same bytes and so
the same name, and deleting "the old pack" deleted the only copy. The first backup of a new
repository (which prunes right after it) then left a snapshot that cannot be restored."""

from __future__ import annotations

from pathlib import Path

from e2e_support import Sandbox


def test_empty_snapshot_survives_prune(make_sandbox, tmp_path: Path) -> None:
    """The smallest case: a snapshot of nothing (the databases alone, and none is configured) is
    one tree."""
    sb: Sandbox = make_sandbox(encryption=False)
    sb.write_config(databases={"sqlite": []})
    doc = sb.backup("--databases-only")  # the first backup prunes right after it
    assert doc["files"] == 0 and doc["retention"]["ok"] is True
    sb.phx("prune")
    check = sb.verify("--read-data")
    assert check["ok"] is True and check["errors"] == [], check
    res = sb.restore_to(doc["id"], tmp_path / "restored")
    assert res["errors"] == []
