"""Lost packs (issue 15, failure 4): a backup never refers to data it has not confirmed present and
stores again what a lost pack held; `phx repair index` rebuilds the index from the packs; `phx
repair snapshots` names the snapshots with lost data and, when asked, rewrites or forgets them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, assert_restored


def data_packs(sb: Sandbox) -> list[Path]:
    """Pack files, largest first (the largest holds the databases' data)."""
    return sorted((p for p in (sb.repo / "data").rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)


def test_a_backup_after_a_lost_pack_stores_its_data_again(backed_up: Sandbox, tmp_path: Path) -> None:
    """Before: the next backup deduplicated against the index, exited 0 and wrote a snapshot that
    could not be restored, and no later backup repaired it. Now it stores the lost data again
    (the same blobs), which makes the older snapshot whole too."""
    sb = backed_up
    (old,) = sb.snapshots()
    data_packs(sb)[0].unlink()
    assert not sb.verify(check=1)["ok"]
    expected = sb.state()
    res = sb.phx("backup", "--json")
    new = res.json()
    sb.restore_to(new["id"], tmp_path / "out")
    assert_restored(expected, tmp_path / "out", "the backup taken after a pack was lost")
    assert "pack(s) the index lists are missing" in res.err and "stores their data again" in res.err, res.err
    assert any("pack(s) the index lists are missing" in w for w in new["warnings"]), new["warnings"]
    # The older snapshot is whole again, but for the sandbox's own config file: its paths changed
    # when the template was copied here, so no backup can store its old bytes again.
    moved = {(old["id"], "home/.argentos/backup.json")}
    healed = sb.verify("--read-data", check=None)
    assert {(e["snapshot"], e["path"]) for e in healed["errors"]} <= moved, healed
    sb.restore_to(old["id"], tmp_path / "old", check=1 if healed["errors"] else 0)
    assert_restored(expected, tmp_path / "old", "the older snapshot, healed")


def lose_a_new_file(sb: Sandbox) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """A backup whose only new data (notes/new.md) sits in a pack of its own, which is then
    lost (a copy is kept as ROOT/saved-pack); returns the state before that file, the snapshot,
    and the lost pack's path in the repository."""
    before = sb.state()
    packs = set(data_packs(sb))
    (sb.workspace / "notes").mkdir()
    (sb.workspace / "notes" / "new.md").write_text(os.urandom(150_000).hex())
    snap = sb.backup()
    pack = max(set(data_packs(sb)) - packs, key=lambda p: p.stat().st_size)
    shutil.copy2(pack, sb.root / "saved-pack")
    pack.unlink()
    (sb.workspace / "notes" / "new.md").unlink()
    (sb.workspace / "notes").rmdir()
    return before, snap, pack.relative_to(sb.repo)


def test_repair_snapshots_names_rewrites_and_forgets(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    # A first backup here stores the sandbox's config (its paths changed when the template was
    # copied), so that the lost pack holds nothing but notes/new.md.
    sb.backup()
    first, second = sb.snapshots()
    before, snap, _pack = lose_a_new_file(sb)

    # verify names the snapshot with the path it lost, and only those.
    doc = sb.verify(check=1)
    assert {(e["snapshot"], e["path"]) for e in doc["errors"]} == {(snap["id"], "workspace/notes/new.md")}, doc

    # repair snapshots: names it, changes nothing without a flag (exit 1).
    report = sb.phx("repair", "snapshots", "--json", check=1).json()
    (damaged,) = report["damaged"]
    assert damaged["id"] == snap["id"] and damaged["lost"] == ["workspace/notes/new.md"], damaged
    assert "workspace/notes/new.md" in sb.phx("repair", "snapshots", check=1).out
    assert len(sb.snapshots()) == 3

    # --rewrite --forget: a copy without the lost file replaces the original; all is whole again.
    done = sb.phx("repair", "snapshots", "--rewrite", "--forget", "--json").json()
    (fixed,) = done["damaged"]
    assert fixed["forgotten"] and fixed["repairedAs"], fixed
    listed = {s["id"]: s for s in sb.snapshots()}
    assert set(listed) == {first["id"], second["id"], fixed["repairedAs"]}
    copy = listed[fixed["repairedAs"]]
    assert "repaired" in copy["tags"] and copy["name"] == snap["name"] and copy["time"] == snap["time"]
    assert copy["incomplete"] == 1
    assert sb.verify("--read-data")["ok"]
    sb.restore_to(copy["id"], tmp_path / "repaired")
    # Everything but the lost file; its folder stays, empty.
    assert_restored(before, tmp_path / "repaired", "the repaired copy", ignore=["notes"])
    assert list((tmp_path / "repaired" / "workspace" / "notes").iterdir()) == []
    assert sb.phx("repair", "snapshots", "--json").json()["damaged"] == []


def test_repair_index_rebuilds_it_from_the_packs(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    (snap,) = sb.snapshots()
    expected = tmp_path / "before"
    sb.restore_to(snap["id"], expected)
    for index in (sb.repo / "index").iterdir():
        index.unlink()  # every index object lost; the packs are intact
    assert not sb.verify(check=1)["ok"]
    doc = sb.phx("repair", "index", "--json").json()
    assert doc["packs"] == len(data_packs(sb)) and doc["blobsDropped"] == 0 and doc["unreadablePacks"] == {}
    assert len(list((sb.repo / "index").iterdir())) == 1
    verified = sb.verify("--read-data")
    assert verified["ok"] and not verified["notices"], verified
    sb.restore_to(snap["id"], tmp_path / "after")
    assert sorted(p.relative_to(tmp_path / "after") for p in (tmp_path / "after").rglob("*")) == sorted(
        p.relative_to(expected) for p in expected.rglob("*")
    )


@pytest.mark.skipif(os.environ.get("PHX_TEST_HEAVY") != "1", reason="PHX_TEST_HEAVY=1 runs it (CI time budget)")
def test_repair_index_after_a_lost_pack_lets_backups_heal(backed_up: Sandbox, tmp_path: Path) -> None:
    """The index lists a pack that is gone: `repair index` drops it (saying how many blobs), and
    the next backup stores that data again."""
    sb = backed_up
    data_packs(sb)[0].unlink()
    doc = sb.phx("repair", "index", "--json").json()
    assert doc["blobsDropped"] > 0, doc
    expected = sb.state()
    new = sb.backup()
    sb.restore_to(new["id"], tmp_path / "out")
    assert_restored(expected, tmp_path / "out", "a backup after repair index")


def test_repair_snapshots_rewrite_keeps_the_original_until_forget(backed_up: Sandbox) -> None:
    """--rewrite alone keeps the damaged original: copying the lost pack back makes it whole."""
    sb = backed_up
    _before, snap, pack = lose_a_new_file(sb)
    done = sb.phx("repair", "snapshots", "--rewrite", "--json").json()
    (fixed,) = done["damaged"]
    assert not fixed["forgotten"] and fixed["repairedAs"]
    listed = {s["id"]: s for s in sb.snapshots()}
    assert {snap["id"], fixed["repairedAs"]} <= set(listed)
    assert listed[snap["id"]]["name"] != listed[fixed["repairedAs"]]["name"], "the copy gets a name of its own"
    assert not sb.verify(check=1)["ok"]
    shutil.copy2(sb.root / "saved-pack", sb.repo / pack)  # the pack came back (say from another target)
    assert sb.verify("--read-data")["ok"]
