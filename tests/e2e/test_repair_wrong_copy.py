"""`phx repair index --read-data` and a wrong copy of a blob in a correctly named pack: one that
opens under the blob's id (its tag is valid, sealed with the repository's key) but holds other
bytes, listed first in the index. `phx verify --read-data` names it (exit 1); the repair leaves it
out of the index while another copy proves and replaces its pack by one holding its other blobs,
so that verify is clean afterwards; its dry run says so and changes nothing. When no copy proves, every copy is
kept and the blob is named as damaged (docs/reliability.md). Before, no repair removed such a
copy: verify reported it for ever and the index listed it first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from e2e_support import Sandbox
from moto_support import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer
from test_restore_proven_copy import snapshot_node

from phoenix_backup.config import load_config
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.repo.crypto import BlobType, Compression
from phoenix_backup.repo.pack import PackBuilder, PackEntry, blob_aad, pack_name

NAME = "planted.bin"


def _plant_wrong_pack(sb: Sandbox, sid: str, *, beside_wrong: bool = False) -> tuple[bytes, str]:
    """A new, correctly named pack holding a wrong copy of the first blob of `NAME` (other bytes of
    its length, sealed under its id) and a genuine copy of `beside.txt`'s (with `beside_wrong`, a
    wrong one too), listed first: one index object lists it before every pack the old ones listed,
    and supersedes them. Returns the blob's id and the new pack's name."""
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    repo.load_index()
    try:
        blob = next(snapshot_node(repo, sid, NAME).blobs())
        first = repo.index.get(blob)
        assert first is not None
        packer = PackBuilder(BlobType.DATA)
        other = os.urandom(first.raw)
        packer.add(blob, Compression.NONE, repo.sealer.seal(other, blob_aad(BlobType.DATA, blob)), len(other))
        # Beside it a genuine copy of another blob, which the repair must keep.
        beside = next(snapshot_node(repo, sid, "beside.txt").blobs())
        data = repo.load_blob(BlobType.DATA, beside)
        if beside_wrong:
            data = bytes(b ^ 0x20 for b in data)
        packer.add(beside, Compression.NONE, repo.sealer.seal(data, blob_aad(BlobType.DATA, beside)), len(data))
        pack_id, raw, entries = packer.finish(repo.sealer)
        repo.backend.write(pack_name(pack_id), raw)
        objects = repo.read_index_objects()
        listing: dict[str, list[PackEntry]] = {pack_id: entries}
        for _name, (packs, _sup) in sorted(objects.items()):
            for p, es in packs.items():
                listing.setdefault(p, []).extend(es)
        repo.write_index(listing, [name.split("/")[-1] for name in objects])
        for name in objects:
            repo.backend.delete(name)
    finally:
        repo.close()
    return blob, pack_name(pack_id)


def _spoil(sb: Sandbox, blob: bytes, pack: str) -> None:
    """The copy of `blob` in `pack` replaced by other bytes of its length, sealed under its id."""
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    repo.load_index()
    try:
        (loc,) = [loc for loc in repo.index.locations(blob) if pack_name(loc.pack_id) == pack]
        sealed = repo.sealer.seal(os.urandom(loc.raw), blob_aad(BlobType.DATA, blob))
        assert len(sealed) == loc.stored
        with open(sb.repo / pack, "r+b") as f:
            f.seek(loc.offset)
            f.write(sealed)
    finally:
        repo.close()


def _locations(sb: Sandbox, blob: bytes) -> list[str]:
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    repo.load_index()
    try:
        return [pack_name(loc.pack_id) for loc in repo.index.locations(blob)]
    finally:
        repo.close()


def _backed_up(sb: Sandbox) -> tuple[str, bytes]:
    sb.write_config(compression=False)
    content = os.urandom(200_000)
    (sb.workspace / NAME).write_bytes(content)
    (sb.workspace / "beside.txt").write_text("restored all the same\n")
    return sb.backup()["id"], content


def test_repair_index_leaves_a_wrong_copy_out_and_verify_is_clean(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    sid, content = _backed_up(sb)
    blob, wrong = _plant_wrong_pack(sb, sid)
    short = blob.hex()[:16]
    assert _locations(sb, blob)[0] == wrong

    before = sb.phx_here("verify", "--read-data", code=1)
    assert f"{wrong} holds a wrong copy of blob {short}" in before.out + before.err, before
    assert "phx repair index --read-data" in before.out + before.err, before

    dry = sb.phx_here("repair", "index", "--read-data", "--dry-run")
    assert f"would leave out the copy of blob {short} in {wrong}" in dry.out, dry
    assert "nothing was written" in dry.out, dry
    assert f"would remove {wrong}, its other blobs copied into a new pack first" in dry.out, dry
    assert (sb.repo / wrong).exists()
    assert _locations(sb, blob)[0] == wrong, "a dry run changed the index"
    sb.phx_here("verify", "--read-data", code=1)

    res = sb.phx_here("repair", "index", "--read-data", "--json")
    (left,) = res.json()["copiesLeftOut"]
    assert left["pack"] == wrong and left["blob"] == short and left["proving"] != wrong, left
    assert res.json()["packsRemoved"] == [wrong], res
    assert _locations(sb, blob) == [left["proving"]]
    assert not (sb.repo / wrong).exists(), "the wrong copy's bytes are still in the store"

    sb.phx_here("verify", "--read-data")
    out = tmp_path / "out"
    sb.phx_here("restore", "--backup", sid, "--to", str(out))
    (restored,) = out.rglob(NAME)
    assert restored.read_bytes() == content
    (beside,) = out.rglob("beside.txt")
    assert beside.read_text() == "restored all the same\n"


def test_with_no_copy_that_proves_repair_keeps_every_copy_and_names_the_blob(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    sid, _content = _backed_up(sb)
    blob, wrong = _plant_wrong_pack(sb, sid)
    short = blob.hex()[:16]
    (_wrong, original) = _locations(sb, blob)
    _spoil(sb, blob, original)  # the original copy spoiled too: no copy proves
    sb.phx_here("verify", "--read-data", code=1)

    res = sb.phx_here("repair", "index", "--read-data", code=1)
    assert f"blob {short} is damaged: no copy of it proves" in res.out, res
    assert wrong in res.out and original in res.out, res
    assert "left out" not in res.out, res
    assert f"notice: {wrong} stays" not in res.out, res  # nothing of it was left out: it stays whole
    assert sorted(_locations(sb, blob)) == sorted([wrong, original]), "a copy was dropped"
    assert (sb.repo / wrong).exists() and (sb.repo / original).exists()

    sb.phx_here("verify", "--read-data", code=1)
    out = tmp_path / "out"
    res = sb.phx_here("restore", "--backup", sid, "--to", str(out), code=1)
    assert short in res.err, res
    (beside,) = out.rglob("beside.txt")
    assert beside.read_text() == "restored all the same\n"


@pytest.mark.skipif(os.environ.get("PHX_TEST_HEAVY") != "1", reason="an S3 replica round trip: PHX_TEST_HEAVY=1")
def test_a_pack_with_a_copy_left_out_and_the_only_copies_of_another_blob_stays_whole(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """One planted pack holds a wrong copy of a blob another copy of which proves, and a wrong copy
    of a second blob no copy of which proves. The first copy leaves the index; the pack stays
    whole (the second blob's copies are all kept where `repair objects` and verify find them), and
    every other file still restores."""
    sb = sandbox
    sid, content = _backed_up(sb)
    blob, wrong = _plant_wrong_pack(sb, sid, beside_wrong=True)
    beside = _first_blob_of(sb, sid, "beside.txt")
    (_planted, original) = _locations(sb, beside)
    _spoil(sb, beside, original)  # no copy of beside.txt's blob proves now

    res = sb.phx_here("repair", "index", "--read-data", "--json", code=1)
    report = res.json()
    assert [c["blob"] for c in report["copiesLeftOut"]] == [blob.hex()[:16]], report
    assert report["packsKept"] == [wrong] and report["packsRemoved"] == [], report
    assert list(report["damagedBlobs"]) == [beside.hex()[:16]], report
    assert (sb.repo / wrong).exists(), "the pack of the only copies of a blob was deleted"
    assert wrong not in _locations(sb, blob), "the wrong copy is still indexed"
    assert sorted(_locations(sb, beside)) == sorted([wrong, original]), "a copy of the damaged blob was dropped"

    ver = sb.phx_here("verify", "--read-data", code=1)
    assert beside.hex()[:16] in ver.out + ver.err and blob.hex()[:16] not in ver.out + ver.err, ver
    out = tmp_path / "out"
    sb.phx_here("restore", "--backup", sid, "--to", str(out), "--path", NAME)
    (restored,) = out.rglob(NAME)
    assert restored.read_bytes() == content


def _first_blob_of(sb: Sandbox, sid: str, name: str) -> bytes:
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    repo.load_index()
    try:
        return next(snapshot_node(repo, sid, name).blobs())
    finally:
        repo.close()


def test_a_replica_given_the_wrong_copy_by_sync_is_repaired_with_target(sandbox: Sandbox, moto: MotoServer) -> None:
    """`phx sync` gave an S3 replica the wrong copy before the first target was repaired; syncing
    after the repair never deletes a pack the replica holds, so its index goes on listing the copy
    and its verify fails for ever (`phx prune --target s3` does not drop it either). On the code
    before, no command repaired the replica (`repair index` took no --target); now `--target s3`
    does, and verify there is clean after the next sync too. ~11 s (S3 through moto): under
    PHX_TEST_HEAVY=1."""
    sb = sandbox
    sb.env.update(AWS_EC2_METADATA_DISABLED="true")
    s3 = {"enabled": True, "bucket": moto.make_bucket("wrongcp"), "prefix": "argent/", "endpoint": moto.endpoint}
    s3 |= {"accessKeyId": ACCESS_KEY_ID, "secretAccessKey": SECRET_ACCESS_KEY}
    sb.write_config(targets={"local": {"enabled": True}, "s3": s3}, compression=False)
    sb.config_path.chmod(0o600)
    content = os.urandom(200_000)
    (sb.workspace / NAME).write_bytes(content)
    (sb.workspace / "beside.txt").write_text("restored all the same\n")
    sid = sb.phx_here("backup", "--json").json()["id"]
    blob, wrong = _plant_wrong_pack(sb, sid)
    sb.phx_here("sync")
    sb.phx_here("repair", "index", "--read-data")
    sb.phx_here("sync")
    res = sb.phx_here("verify", "--target", "s3", "--read-data", code=1)
    assert blob.hex()[:16] in res.out + res.err, res
    # The fix it names is the one that works (before: "`phx prune` here drops the failing entry").
    assert "`phx repair index --read-data` (with `--target NAME` on a replica)" in res.out + res.err, res
    sb.phx_here("prune", "--target", "s3")
    sb.phx_here("verify", "--target", "s3", "--read-data", code=1)  # prune leaves it

    res = sb.phx_here("repair", "index", "--read-data", "--target", "s3", "--json")
    assert res.json()["packsRemoved"] == [wrong], res
    sb.phx_here("sync")
    sb.phx_here("verify", "--target", "s3", "--read-data")
    sb.phx_here("verify", "--read-data")
    out = sb.root / "out"
    sb.phx_here("restore", "--backup", sid, "--target", "s3", "--to", str(out))
    (restored,) = out.rglob(NAME)
    assert restored.read_bytes() == content


def test_repair_index_with_target_refuses_an_append_only_target(sandbox: Sandbox) -> None:
    """`--target NAME` is the target repaired, so the append-only refusal is that target's (before:
    the option did not exist; the refusal always looked at the first target)."""
    sb = sandbox
    sb.write_config(targets={"local": {"enabled": True, "appendOnly": True}})
    res = sb.phx_here("repair", "index", "--target", "local", code=2)
    assert "target local is append-only" in res.err, res
    sb.phx_here("repair", "index", "--read-data", "--dry-run", "--target", "local")
