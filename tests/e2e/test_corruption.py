"""Acceptance 6: one flipped byte in a data pack, a tree pack, an index object or a snapshot object
is reported by `phx verify --read-data --json` (ok false, exit 1) with the affected snapshot and,
for data/tree/index damage, the affected paths. Each damage goes into a fresh copy of one pristine
repository holding two snapshots."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import DATABASES, Sandbox, assert_error, flip_byte

from phoenix_backup.sample import generate_workspace, layout_for, simulate_day

# The sandboxes' helpers (the backups that set a test up, the checks after) run phx in this process;
# the commands under test stay real `phx` processes (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("pristine")
    sb = Sandbox(root, generate_workspace(root / "sample", size="tiny", seed=11))
    first = sb.backup()
    files1 = {f"workspace/{k}" for k, v in sb.state()["workspace"].items() if v[0] == "file"}
    simulate_day(sb.layout, 0, seed=11)
    (sb.workspace / "MEMORY.md").write_text("rewritten\n")
    second = sb.backup()
    files2 = {f"workspace/{k}" for k, v in sb.state()["workspace"].items() if v[0] == "file"}
    dirs = {f"workspace/{k}" for k, v in sb.state()["workspace"].items() if v[0] == "dir"}
    yield {
        "root": root,
        "ids": [first["id"], second["id"]],
        "files": files1 | files2 | set(DATABASES),
        "dirs": dirs | {"workspace", "home", "home/.argentos", "home/.argentos/data", "/"},
    }


def damaged_copy(pristine: dict[str, Any], tmp_path: Path) -> Sandbox:
    root = tmp_path / "copy"
    shutil.copytree(pristine["root"], root, symlinks=True)
    shutil.rmtree(root / "cache", ignore_errors=True)
    return Sandbox(root, layout_for(root / "sample"))


def objects(sb: Sandbox, prefix: str) -> list[Path]:
    return sorted((p for p in (sb.repo / prefix).rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def verify_damaged(sb: Sandbox) -> dict[str, Any]:
    res = sb.phx("verify", "--read-data", "--json", check=1)
    doc: dict[str, Any] = res.json()
    assert doc["ok"] is False and doc["errors"], doc
    return doc


def test_pristine_copy_verifies(pristine: dict[str, Any], tmp_path: Path) -> None:
    sb = damaged_copy(pristine, tmp_path)
    doc = sb.verify("--read-data")
    assert doc["ok"] is True and doc["errors"] == [] and doc["checked"]["snapshots"] == 2, doc


def test_flipped_byte_in_the_largest_data_pack(pristine: dict[str, Any], tmp_path: Path) -> None:
    sb = damaged_copy(pristine, tmp_path)
    pack = objects(sb, "data")[-1]
    flip_byte(pack)
    name = pack.relative_to(sb.repo).as_posix()
    doc = verify_damaged(sb)
    named = [e for e in doc["errors"] if e["snapshot"] in pristine["ids"] and e["path"] in pristine["files"]]
    assert named, f"no error names a snapshot and a file path: {doc['errors']}"
    assert all(e["object"] == name for e in named), named

    # A restore of an affected snapshot refuses the damaged data with one clear error.
    victim = named[0]
    res = sb.phx("restore", "--backup", victim["snapshot"], "--to", tmp_path / "out", check=None)
    assert_error(res, 1, "damaged")
    # Database copies written at the same time as the damaged one are removed, not left behind.
    out = tmp_path / "out"
    assert not out.exists() or [p.name for p in out.rglob(".phx-tmp-*")] == []


def test_flipped_byte_in_every_other_pack(pristine: dict[str, Any], tmp_path: Path) -> None:
    """The smaller packs hold trees (and small data): damage names a snapshot and a path."""
    probe = damaged_copy(pristine, tmp_path / "probe")
    others = [p.relative_to(probe.repo) for p in objects(probe, "data")[:-1]]
    assert others, "expected a tree pack besides the data pack"
    for i, rel in enumerate(others):
        sb = damaged_copy(pristine, tmp_path / f"pack{i}")
        flip_byte(sb.repo / rel)
        doc = verify_damaged(sb)
        located = [
            e
            for e in doc["errors"]
            if e["snapshot"] in pristine["ids"] and e["path"] in pristine["files"] | pristine["dirs"]
        ]
        assert located, f"damage in {rel}: no error names a snapshot and a path: {doc['errors']}"
        # A restore of each affected snapshot refuses the damaged data: it never reports success
        # with the paths below a damaged tree silently left out.
        for sid in sorted({e["snapshot"] for e in located}):
            out = tmp_path / f"out{i}-{sid[:8]}"
            res = sb.phx("restore", "--backup", sid, "--to", out, check=None)
            assert res.code in (1, 3), f"damage in {rel}: restore of {sid[:8]} exited {res.code}:\n{res}"
            assert "damaged" in res.err.lower(), f"damage in {rel}: restore of {sid[:8]} names no damage:\n{res}"
            assert "Traceback" not in res.out + res.err, res


def test_a_missing_tree_pack_never_calls_the_blobs_below_it_unused(pristine: dict[str, Any], tmp_path: Path) -> None:
    """A copy that lacks a pack of trees (a sync stopped midway): the blobs its trees name could
    not be tied to any path, and verify called them "no snapshot uses this blob", which reads as
    harmless garbage while they are the snapshot's own files. It says now that they may be below the
    trees that could not be read; the trees' own errors name the snapshots as before."""
    probe = damaged_copy(pristine, tmp_path / "probe")
    for i, rel in enumerate(p.relative_to(probe.repo) for p in objects(probe, "data")[:-1]):
        sb = damaged_copy(pristine, tmp_path / f"pack{i}")
        (sb.repo / rel).unlink()
        doc = sb.phx("verify", "--json", check=1).json()
        if not any(e["path"] == "/" for e in doc["errors"]):
            continue  # not the root trees' pack
        assert not [n for n in doc["notices"] if "no snapshot uses this blob" in n], doc["notices"]
        assert any("may be below the trees that could not be read" in n for n in doc["notices"]), doc["notices"]
        return
    pytest.fail("no pack of the pristine repository held its root trees")


@pytest.mark.parametrize("which", [0, 1], ids=["first-index", "second-index"])
def test_flipped_byte_in_an_index_object(pristine: dict[str, Any], tmp_path: Path, which: int) -> None:
    sb = damaged_copy(pristine, tmp_path)
    indexes = sorted((sb.repo / "index").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert len(indexes) == 2, indexes
    target = indexes[which]
    flip_byte(target)
    doc = verify_damaged(sb)
    name = target.relative_to(sb.repo).as_posix()
    assert any(e["object"] == name for e in doc["errors"]), f"the damaged {name} is not named: {doc['errors']}"
    named = [e for e in doc["errors"] if e["snapshot"] in pristine["ids"] and e["path"] in pristine["files"]]
    assert named, f"index damage: no error names an affected snapshot and file path: {doc['errors']}"


def test_flipped_byte_in_a_snapshot_object(pristine: dict[str, Any], tmp_path: Path) -> None:
    sb = damaged_copy(pristine, tmp_path)
    sid = pristine["ids"][1]
    flip_byte(sb.repo / "snapshots" / sid)
    doc = verify_damaged(sb)
    assert any(e["snapshot"] == sid for e in doc["errors"]), doc["errors"]
    assert any(sid in e["object"] for e in doc["errors"]), doc["errors"]
    # The other snapshot is still whole and still restorable.
    assert [s["id"] for s in sb.snapshots()] == [pristine["ids"][0]]
    sb.restore_to(pristine["ids"][0], tmp_path / "out")


def test_restore_still_works_when_an_index_object_is_damaged(pristine: dict[str, Any], tmp_path: Path) -> None:
    """The packs are intact: their own headers stand in for the damaged index, with a notice."""
    sb = damaged_copy(pristine, tmp_path)
    for index in objects(sb, "index"):
        flip_byte(index)
    dest = tmp_path / "restored"
    res = sb.phx("restore", "--backup", pristine["ids"][1], "--to", str(dest), "--json")
    assert "index object(s) are damaged" in res.err, res.err
    assert res.json()["restored"] > 0
    assert (dest / "workspace" / "MEMORY.md").read_text() == "rewritten\n"
