"""Corruption (issue 15, suite 2): every kind of object (config, key slot, data pack, tree pack,
index, snapshot, lock) with a byte flipped, truncated to half, or deleted, on the first target of a
repository replicated to S3 (the S3 API server on loopback). Each damage is detected and named,
with the snapshots and paths it affects; then `phx repair objects --from s3` (or, for a lock,
`phx unlock --all`, as it is fresh) brings the first target back to whole, checked by
`verify --read-data`.

Runs through the Python API (the same functions the commands call), one damaged copy of one
pristine repository per case. The default run takes one damage per kind (and two for data packs);
PHX_TEST_HEAVY=1 runs all 21.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, flip_byte

from phoenix_backup.config import load_config
from phoenix_backup.errors import PhoenixError, RepositoryError, RepositoryLocked
from phoenix_backup.ops import repair
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.ops.unlock import unlock
from phoenix_backup.ops.verify import verify
from phoenix_backup.repo.checker import VerifyResult
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.pack import pack_name
from phoenix_backup.repo.repair import ObjectsRepair
from phoenix_backup.sample import generate_workspace, layout_for, simulate_day

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from moto_support import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
KINDS = ("config", "key", "data-pack", "tree-pack", "index", "snapshot", "lock")
DAMAGES = ("flip", "truncate", "delete")
SAMPLE = {
    ("config", "truncate"),
    ("key", "flip"),
    ("data-pack", "flip"),
    ("data-pack", "delete"),
    ("tree-pack", "truncate"),
    ("index", "delete"),
    ("snapshot", "flip"),
    ("lock", "truncate"),
}
CASES = [
    pytest.param(kind, damage, id=f"{kind}-{damage}")
    for kind in KINDS
    for damage in DAMAGES
    if HEAVY or (kind, damage) in SAMPLE
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, moto: MotoServer) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("matrix")
    sb = Sandbox(root, generate_workspace(root / "sample", size="tiny", seed=23))
    targets = {
        "local": {"enabled": True},
        "s3": {
            "enabled": True,
            "bucket": moto.make_bucket("matrix"),
            "prefix": "argent/",
            "endpoint": moto.endpoint,
            "accessKeyId": ACCESS_KEY_ID,
            "secretAccessKey": SECRET_ACCESS_KEY,
        },
    }
    sb.env["AWS_EC2_METADATA_DISABLED"] = "true"
    sb.write_config(targets=targets)
    sb.config_path.chmod(0o600)
    first = sb.backup()
    simulate_day(sb.layout, 0, seed=23)
    (sb.workspace / "MEMORY.md").write_text("rewritten\n")
    second = sb.backup()
    assert first["targets"]["s3"]["ok"] and second["targets"]["s3"]["ok"]
    shutil.rmtree(sb.cache)
    yield {"root": root, "ids": {first["id"], second["id"]}, "targets": targets, "env": dict(sb.env)}


class Case:
    """One damaged copy: its sandbox, config and environment for the API."""

    def __init__(self, pristine: dict[str, Any], tmp_path: Path) -> None:
        root = tmp_path / "copy"
        shutil.copytree(pristine["root"], root, symlinks=True)
        self.sb = Sandbox(root, layout_for(root / "sample"))
        self.sb.env.update(AWS_EC2_METADATA_DISABLED="true")
        self.sb.write_config(targets=pristine["targets"])
        self.sb.config_path.chmod(0o600)
        self.repo = self.sb.repo
        self.ids: set[str] = pristine["ids"]

    @property
    def envx(self) -> Environment:
        return Environment(env=dict(self.sb.env))

    @property
    def cfg(self) -> Any:
        return load_config(self.sb.config_path, self.sb.env)

    def verify(self) -> VerifyResult:
        return verify(self.cfg, self.envx, read_data=True)

    def objects(self, folder: str) -> list[Path]:
        return sorted((p for p in (self.repo / folder).rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)

    def packs_of(self, kind: BlobType) -> list[Path]:
        repo = open_repository(self.cfg, self.envx)
        repo.load_index()
        names = {pack_name(loc.pack_id) for _b, loc in repo.index.blobs() if loc.type == kind}
        return sorted((self.repo / n for n in names), key=lambda p: p.stat().st_size)


def damage(path: Path, how: str) -> None:
    if how == "flip":
        flip_byte(path)
    elif how == "truncate":
        data = path.read_bytes()
        path.chmod(0o600)
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()


def located(result: VerifyResult, ids: set[str]) -> list[Any]:
    """Errors that name a damaged object, the snapshot and the path affected."""
    return [e for e in result.errors if e.object and e.snapshot in ids and e.path]


def repair_from_s3(case: Case) -> ObjectsRepair:
    report = repair.repair_objects(case.cfg, case.envx, source="s3", read_data=True)
    assert report.unrecoverable == 0, report.to_json()
    return report


def assert_whole(case: Case, snapshots: int = 2) -> None:
    result = case.verify()
    assert result.ok and result.checked["snapshots"] == snapshots, result.to_json()


@pytest.mark.parametrize(("kind", "how"), CASES)
def test_damage_is_detected_named_and_repaired_from_another_target(
    pristine: dict[str, Any], tmp_path: Path, kind: str, how: str
) -> None:
    case = Case(pristine, tmp_path)
    if kind == "config":
        damage(case.repo / "config", how)
        with pytest.raises(PhoenixError, match="config"):
            case.verify()
        assert "config" in repair_from_s3(case).copied
        assert_whole(case)
    elif kind == "key":
        (slot,) = case.objects("keys")
        damage(slot, how)
        with pytest.raises(RepositoryError, match="key slot") as raised:
            case.verify()
        if how != "delete":
            assert slot.name in str(raised.value), "the damaged slot is named"
        assert f"keys/{slot.name}" in repair_from_s3(case).copied
        assert_whole(case)
    elif kind in ("data-pack", "tree-pack"):
        pack = case.packs_of(BlobType.DATA if kind == "data-pack" else BlobType.TREE)[-1]
        name = pack.relative_to(case.repo).as_posix()
        damage(pack, how)
        result = case.verify()
        errors = located(result, case.ids)
        assert errors and all(e.object == name for e in errors), result.to_json()
        if kind == "data-pack":  # a file or a database is named, not only a folder
            assert any(e.path.startswith(("home/", "workspace/")) and e.path.count("/") > 1 for e in errors)
        assert name in repair_from_s3(case).copied
        assert_whole(case)
    elif kind == "index":
        index = case.objects("index")[-1]
        name = index.relative_to(case.repo).as_posix()
        damage(index, how)
        result = case.verify()
        assert located(result, case.ids), result.to_json()
        if how != "delete":
            assert any(e.object == name for e in result.errors), result.to_json()
        report = repair_from_s3(case)
        assert report.index is not None and report.index.dropped == 0
        assert_whole(case)
    elif kind == "snapshot":
        snap = case.objects("snapshots")[-1]
        damage(snap, how)
        if how == "delete":
            # Alone, a deleted snapshot looks forgotten; beside a replica that still holds it, it
            # is named, and readable there.
            assert_whole(case, 1)
            report = repair_from_s3(case)
            assert any(snap.name[:8] in n and "lacks" in n for n in report.notices), report.notices
            assert_whole(case, 1)
            return
        result = case.verify()
        assert any(e.snapshot == snap.name and e.object == f"snapshots/{snap.name}" for e in result.errors), (
            result.to_json()
        )
        assert f"snapshots/{snap.name}" in repair_from_s3(case).copied
        assert_whole(case)
    else:  # a lock held by a running backup (this process)
        repo = open_repository(case.cfg, case.envx)
        held = repo.lock(exclusive=False, command="backup")
        damage(case.repo / held.name, how)
        with pytest.raises(RepositoryError, match="lock is gone"):
            held.confirm()  # the holder commits nothing
        if how != "delete":
            with pytest.raises(RepositoryLocked, match=f"unreadable lock {held.name}"):
                case.verify()
            # Fresh, it may be live (a key rotation elsewhere): kept until stale, or removed by --all.
            assert unlock(case.cfg, case.envx) == []
            removed = unlock(case.cfg, case.envx, remove_all=True)
            assert [i.name for i in removed] == [held.name] and not removed[0].readable
        held.release()
        assert_whole(case)


def test_a_damaged_key_slot_beside_a_good_one_is_named_and_can_be_removed(
    pristine: dict[str, Any], tmp_path: Path
) -> None:
    """The repository still opens with the other slot; verify names the damaged one, and
    `phx key remove` takes it away (never the last readable one)."""
    from phoenix_backup.ops.key import key_add, key_list, key_remove

    case = Case(pristine, tmp_path)
    added = key_add(case.cfg, Environment(env={**case.sb.env, "PHX_NEW_PASSPHRASE": "another"}), method="passphrase")
    flip_byte(case.repo / "keys" / added.id)
    result = case.verify()
    (error,) = result.errors
    assert error.object == f"keys/{added.id}" and "key slot cannot be read" in error.message, result.to_json()
    key_remove(case.cfg, case.envx, added.id)
    assert [s.id for s in key_list(case.cfg, case.envx).slots] == [p.name for p in case.objects("keys")]
    assert_whole(case)
    (last,) = case.objects("keys")
    with pytest.raises(RepositoryError, match="last key slot"):
        key_remove(case.cfg, case.envx, last.name)
