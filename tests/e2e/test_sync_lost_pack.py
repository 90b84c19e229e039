"""`phx sync --target NAME` to a new replica after the first target lost a pack that another
replica (a Git remote, a bare repository on disk) holds: the pack is taken from there, so the new
replica (S3 on the moto server) restores every file; the sync still exits 3 naming the pack and the
target holding it (exit 1: the one target synced failed). In the test's process (`phx_here`),
except the backup."""

from __future__ import annotations

from pathlib import Path

from e2e_support import assert_restored
from test_targets import Targets, targets  # noqa: F401 - the fixture


def test_a_pack_the_first_target_lost_comes_from_the_replica_holding_it(targets: Targets, tmp_path: Path) -> None:  # noqa: F811
    sb = targets.sb
    targets.targets["s3"]["enabled"] = targets.targets["r2"]["enabled"] = False
    targets.write()
    state = sb.state()
    snap = sb.backup()
    assert all(t["ok"] for t in snap["targets"].values()), snap
    packs = sorted(p for p in (sb.repo / "data").rglob("*") if p.is_file())
    lost = max(packs, key=lambda p: p.stat().st_size)  # the file data's pack
    lost.unlink()

    targets.targets["s3"]["enabled"] = True
    targets.write()
    doc = sb.phx_here("sync", "--target", "s3", "--json", code=1).json()
    name = lost.relative_to(sb.repo).as_posix()
    assert doc["targets"]["s3"]["recovered"] == {name: "git"}, doc
    assert name in doc["targets"]["s3"]["error"] and "phx repair objects --from git" in doc["targets"]["s3"]["error"]
    assert name in targets.objects("s3")
    out = tmp_path / "restored"
    sb.phx_here("restore", "--backup", snap["id"], "--target", "s3", "--to", out)
    assert_restored(state, out, "restore from s3")
