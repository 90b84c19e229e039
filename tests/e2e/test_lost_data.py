"""Lost packs (issue 15, failure 4): a backup never refers to data it has not confirmed present and
stores again what a lost pack held; `phx repair index` rebuilds the index from the packs; `phx
repair snapshots` names the snapshots with lost data and, when asked, rewrites or forgets them."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, assert_error, assert_restored, file_manifest, flip_byte

from phoenix_backup.config import load_config
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.repo.crypto import BlobType

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from moto_support import MotoServer
from test_concurrency import s3_target

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process


def data_packs(sb: Sandbox) -> list[Path]:
    """Pack files, largest first (the largest holds the databases' data)."""
    return sorted((p for p in (sb.repo / "data").rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)


def pack_holding(sb: Sandbox, candidates: set[Path], kind: BlobType) -> Path:
    """The one pack among `candidates` that holds blobs of `kind` (read from its header)."""
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=dict(sb.env)))
    try:
        (pack,) = [p for p in candidates if repo.read_pack_header(p.name)[0].type == kind]
    finally:
        repo.close()
    return pack


def test_a_backup_after_a_lost_pack_stores_its_data_again(backed_up: Sandbox, tmp_path: Path) -> None:
    """Before: the next backup deduplicated against the index, exited 0 and wrote a snapshot that
    could not be restored, and no later backup repaired it. Now it stores the lost data again
    (the same blobs), which makes the older snapshot whole too."""
    sb = backed_up
    (old,) = sb.snapshots()
    data_packs(sb)[0].unlink()
    assert not sb.verify(check=1)["ok"]
    expected = sb.state()
    res = sb.phx_here("backup", "--json")
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
    report = sb.phx_here("repair", "snapshots", "--json", code=1).json()
    (damaged,) = report["damaged"]
    assert damaged["id"] == snap["id"] and damaged["lost"] == ["workspace/notes/new.md"], damaged
    assert "workspace/notes/new.md" in sb.phx_here("repair", "snapshots", code=1).out
    assert len(sb.snapshots()) == 3

    # --rewrite --forget: a copy without the lost file replaces the original; all is whole again.
    done = sb.phx_here("repair", "snapshots", "--rewrite", "--forget", "--json").json()
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
    assert sb.phx_here("repair", "snapshots", "--json").json()["damaged"] == []


def test_repair_index_rebuilds_it_from_the_packs(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    (snap,) = sb.snapshots()
    expected = tmp_path / "before"
    sb.restore_to(snap["id"], expected)
    for index in (sb.repo / "index").iterdir():
        index.unlink()  # every index object lost; the packs are intact
    assert not sb.verify(check=1)["ok"]
    doc = sb.phx_here("repair", "index", "--json").json()
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
    doc = sb.phx_here("repair", "index", "--json").json()
    assert doc["blobsDropped"] > 0, doc
    expected = sb.state()
    new = sb.backup()
    sb.restore_to(new["id"], tmp_path / "out")
    assert_restored(expected, tmp_path / "out", "a backup after repair index")


def test_repair_snapshots_rewrite_keeps_the_original_until_forget(backed_up: Sandbox) -> None:
    """--rewrite alone keeps the damaged original: copying the lost pack back makes it whole (the
    rewrite rebuilt the index without the lost pack, so `repair index` lists it again)."""
    sb = backed_up
    _before, snap, pack = lose_a_new_file(sb)
    done = sb.phx_here("repair", "snapshots", "--rewrite", "--json").json()
    (fixed,) = done["damaged"]
    assert not fixed["forgotten"] and fixed["repairedAs"]
    listed = {s["id"]: s for s in sb.snapshots()}
    assert {snap["id"], fixed["repairedAs"]} <= set(listed)
    assert listed[snap["id"]]["name"] != listed[fixed["repairedAs"]]["name"], "the copy gets a name of its own"
    assert not sb.verify(check=1)["ok"]
    shutil.copy2(sb.root / "saved-pack", sb.repo / pack)  # the pack came back (say from another target)
    sb.phx_here("repair", "index")
    assert sb.verify("--read-data")["ok"]


def test_repair_index_keeps_the_blobs_of_a_pack_whose_header_is_damaged(backed_up: Sandbox, tmp_path: Path) -> None:
    """A byte flipped in a pack's header leaves its blobs intact, and the index still maps them:
    the snapshot restores. `repair index` used to leave the pack out and delete the old index
    objects, the blobs' only map: the snapshot could not be restored any more."""
    sb = backed_up
    (snap,) = sb.snapshots()
    expected = sb.state()
    pack = data_packs(sb)[0]
    flip_byte(pack, pack.stat().st_size - 10)  # inside the sealed header, before its length
    sb.restore_to(snap["id"], tmp_path / "before")
    doc = sb.phx_here("repair", "index", "--json").json()
    sb.restore_to(snap["id"], tmp_path / "after")
    assert_restored(expected, tmp_path / "after", "the snapshot after repair index")
    name = pack.relative_to(sb.repo).as_posix()
    assert name in doc["unreadablePacks"] and doc["keptFromOldIndex"][name] > 0, doc
    assert f"{name}: " in (out := sb.phx_here("repair", "index").out) and "kept the" in out, out


def test_repair_snapshots_does_not_take_unindexed_data_for_lost(backed_up: Sandbox) -> None:
    """Every index object lost, every pack intact: the data is there. `repair snapshots --forget`
    used to forget every snapshot (its blobs were in no index)."""
    sb = backed_up
    (snap,) = sb.snapshots()
    for index in (sb.repo / "index").iterdir():
        index.unlink()
    doc = sb.phx_here("repair", "snapshots", "--forget", "--json").json()
    assert [s["id"] for s in sb.snapshots()] == [snap["id"]]
    assert doc["damaged"] == [] and doc["unindexedPacks"] == len(data_packs(sb)), doc
    named = sb.phx_here("repair", "snapshots")
    assert "phx repair index" in named.out and "none refers to lost data" in named.out, named
    sb.phx_here("repair", "index")
    assert sb.verify("--read-data")["ok"]


def test_a_repaired_copy_never_reuses_a_tree_of_a_lost_pack(backed_up: Sandbox, tmp_path: Path) -> None:
    """The copy of a snapshot without its lost file has a folder tree that an earlier backup
    stored too, in a tree pack that is lost as well. The copy used to refer to that lost tree
    (deduplicated against the index), and `--forget` then dropped the original: exit 0, and
    the only copy could not be restored."""
    sb = backed_up
    (sb.workspace / "notes").mkdir()
    (sb.workspace / "notes" / "a.md").write_text("kept\n")
    before = sb.state()
    packs = set(data_packs(sb))
    sb.backup()  # stores the tree notes/ = {a.md}
    lost_trees = pack_holding(sb, set(data_packs(sb)) - packs, BlobType.TREE)
    packs = set(data_packs(sb))
    (sb.workspace / "notes" / "new.md").write_text(os.urandom(150_000).hex())
    second = sb.backup()  # notes/ = {a.md, new.md}, in new tree and data packs
    lost_data = pack_holding(sb, set(data_packs(sb)) - packs, BlobType.DATA)
    lost_trees.unlink()
    lost_data.unlink()
    done = sb.phx_here("repair", "snapshots", "--rewrite", "--forget", "--json").json()
    copy = next(d["repairedAs"] for d in done["damaged"] if d["id"] == second["id"])
    assert copy, done
    assert sb.verify("--read-data")["ok"]
    sb.restore_to(copy, tmp_path / "copy")
    # notes/a.md is whole; new.md is lost; the folders whose trees were lost come back empty.
    assert (tmp_path / "copy" / "workspace" / "notes" / "a.md").read_text() == "kept\n"
    assert not (tmp_path / "copy" / "workspace" / "notes" / "new.md").exists()
    assert (tmp_path / "copy" / "workspace" / "MEMORY.md").read_bytes() == (sb.workspace / "MEMORY.md").read_bytes()
    assert before["workspace"]["notes/a.md"] == file_manifest(tmp_path / "copy" / "workspace")["notes/a.md"]
    assert done["indexRebuilt"], done


def test_a_snapshot_of_which_nothing_can_be_read_is_not_rewritten_quietly(backed_up: Sandbox) -> None:
    """Its root tree lost: no copy can be written. `--rewrite` used to exit 0 leaving it as it was."""
    sb = backed_up
    (snap,) = sb.snapshots()
    for pack in data_packs(sb):
        pack.unlink()
    res = sb.phx_here("repair", "snapshots", "--rewrite", "--json", code=1)
    (damaged,) = res.json()["damaged"]
    assert damaged["id"] == snap["id"] and damaged["lost"] == ["/"] and not damaged["repairedAs"], damaged
    assert "no copy was written" in sb.phx_here("repair", "snapshots", "--rewrite", code=1).out
    forgotten = sb.phx_here("repair", "snapshots", "--rewrite", "--forget", "--json").json()
    assert forgotten["damaged"][0]["forgotten"]
    assert sb.snapshots() == []


def replicated(make_sandbox: Callable[..., Sandbox], moto: MotoServer) -> tuple[Sandbox, str]:
    """A sandbox backing up to its local repository and to an S3 replica (moto); returns it and
    the bucket."""
    sb = make_sandbox()
    bucket = moto.make_bucket("lost")
    sb.env["AWS_EC2_METADATA_DISABLED"] = "true"
    sb.write_config(targets={"local": {"enabled": True}, "s3": s3_target(moto, bucket)})
    sb.config_path.chmod(0o600)
    sb.backup()
    return sb, bucket


def assert_healed_from_s3(sb: Sandbox, snapshot_id: str, dest: Path) -> None:
    """`repair objects --from s3` copies back what was lost here: everything verifies, and the
    snapshot that lost notes/new.md restores it."""
    repaired = sb.phx("repair", "objects", "--from", "s3", "--json", check=None).json()
    assert repaired["unrecoverable"] == 0 and repaired["copied"], repaired
    assert sb.verify("--read-data")["ok"]
    sb.restore_to(snapshot_id, dest)
    assert (dest / "workspace" / "notes" / "new.md").exists()


def test_a_replica_keeps_indexing_the_packs_the_first_target_lost(
    make_sandbox: Callable[..., Sandbox], moto: MotoServer, tmp_path: Path
) -> None:
    """A pack lost on the first target; the next backup writes an index object there without it
    that supersedes the old ones, and replication copies it to S3, where it superseded the
    replica's copies too: the replica, which holds the pack, then had its snapshot's data in no
    index (verify failed there) and `repair objects --from s3` found nothing to copy back."""
    sb, _bucket = replicated(make_sandbox, moto)
    _before, snap, _pack = lose_a_new_file(sb)
    later = sb.backup()  # finds the pack lost, supersedes the index; replicates
    assert later["targets"]["s3"]["ok"], later
    replica = sb.phx("verify", "--target", "s3", "--read-data", "--json", check=None).json()
    assert replica["ok"], replica
    sb.restore_to(snap["id"], tmp_path / "from-s3", "--target", "s3")
    assert_healed_from_s3(sb, snap["id"], tmp_path / "healed")


def test_repair_objects_reads_packs_the_other_target_holds_but_does_not_index(
    make_sandbox: Callable[..., Sandbox], moto: MotoServer, tmp_path: Path
) -> None:
    """The replica's index objects are lost, its packs intact; a pack is lost here. `repair
    objects --from s3` used to call the data intact on neither target."""
    sb, bucket = replicated(make_sandbox, moto)
    _before, snap, _pack = lose_a_new_file(sb)
    client = moto.client()
    for key in moto.keys(bucket, "argent/index/"):
        client.delete_object(Bucket=bucket, Key=key)
    assert_healed_from_s3(sb, snap["id"], tmp_path / "healed")


def test_repair_objects_from_a_target_holding_another_repository_copies_nothing(
    make_sandbox: Callable[..., Sandbox], moto: MotoServer, tmp_path: Path
) -> None:
    """The config here is lost and targets.s3 names a bucket holding another repository. Repair
    used to copy that repository's config here: every command then called the repository
    replaced, and no later repair put the right config back (ours was "readable")."""
    sb, ours = replicated(make_sandbox, moto)
    (snap,) = sb.snapshots()
    _other, theirs = replicated(make_sandbox, moto)
    (sb.repo / "config").unlink()
    s3 = dict(sb.config["targets"]["s3"])
    sb.write_config(targets={"local": {"enabled": True}, "s3": {**s3, "bucket": theirs}})
    assert_error(sb.phx("repair", "objects", "--from", "s3", check=None), 1, "another repository", "nothing was copied")
    assert not (sb.repo / "config").exists()
    # On a machine that never used it (no pin), the other repository's config does not open with
    # the key slots here: it is not kept either.
    new_machine = sb.env_with(XDG_DATA_HOME=str(tmp_path / "new-machine"))
    refused = sb.phx("repair", "objects", "--from", "s3", env=new_machine, check=None)
    assert_error(refused, 1, "does not open the repository", "not kept")
    assert not (sb.repo / "config").exists()
    sb.write_config(targets={"local": {"enabled": True}, "s3": {**s3, "bucket": ours}})
    repaired = sb.phx_here("repair", "objects", "--from", "s3", "--json").json()
    assert repaired["copied"] == ["config"], repaired
    sb.restore_to(snap["id"], tmp_path / "out")
