"""`phx verify --read-data --subset PCT` and `--backup ID` (the "deep verify" half of issue 8).

- Each subset run reads ceil(PCT% of the packs), continuing where the previous run stopped, so
  consecutive runs cover every pack; damage in one data pack is found by exactly the runs that
  read it.
- `--backup ID` reads only the packs that snapshot needs: damage in a pack written by a later
  backup does not fail the check of an earlier snapshot, and does fail the later one's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, assert_error, flip_byte

from phoenix_backup.config import load_config
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.pack import pack_name

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process


def data_packs(sb: Sandbox) -> dict[str, tuple[int, int]]:
    """Data pack name -> (offset, length) of one blob inside it."""
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    repo.load_index()
    out: dict[str, tuple[int, int]] = {}
    for _blob, loc in repo.index.blobs():
        if loc.type == BlobType.DATA:
            out.setdefault(pack_name(loc.pack_id), (loc.offset, loc.stored))
    return out


def all_packs(sb: Sandbox) -> list[str]:
    return sorted(p.relative_to(sb.repo).as_posix() for p in (sb.repo / "data").rglob("*") if p.is_file())


def read_set(doc: dict[str, Any], packs: list[str]) -> set[str]:
    """The packs a subset run read: `packs` consecutive from `first`, in sorted order, wrapping."""
    sub = doc["subset"]
    start = packs.index(sub["first"])
    return {packs[(start + i) % len(packs)] for i in range(sub["packs"])}


def test_subset_runs_cover_every_pack_and_find_the_damage(backed_up: Sandbox) -> None:
    sb = backed_up
    (sb.workspace / "MEMORY.md").write_text("a second snapshot, so there are more packs\n")
    sb.backup()
    packs = all_packs(sb)
    assert len(packs) >= 3, packs
    victim, (offset, length) = sorted(data_packs(sb).items())[0]
    flip_byte(sb.repo / victim, offset + length // 2)

    percent = 34
    per_run = math.ceil(len(packs) * percent / 100)
    runs = math.ceil(100 / percent)
    seen: set[str] = set()
    found = 0
    for _ in range(runs):
        res = sb.phx("verify", "--subset", f"{percent}%", "--json", check=None)
        doc = res.json()
        assert doc["readData"] is True and doc["checked"]["packs"] == per_run, doc
        assert doc["subset"]["of"] == len(packs) and doc["subset"]["packs"] == per_run
        chosen = read_set(doc, packs)
        assert not (chosen & seen) or len(seen) + per_run > len(packs), "a run re-read packs before covering all"
        seen |= chosen
        if victim in chosen:
            found += 1
            assert res.code == 1 and any(e["object"] == victim for e in doc["errors"]), doc["errors"]
        else:
            assert res.code == 0 and doc["ok"] is True, doc["errors"]
    assert seen == set(packs), f"{runs} runs of {percent}% did not read every pack: {sorted(set(packs) - seen)}"
    assert found >= 1

    text = sb.phx_here("verify", "--subset", "100", code=1).out
    assert "error:" in text and victim in text, text
    assert_error(sb.phx("verify", "--subset", "0", check=None), 2, "--subset")
    assert_error(sb.phx("verify", "--subset", "lots", check=None), 2, "--subset")


def test_backup_id_reads_only_that_snapshots_packs(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    first = sb.snapshots()[0]["id"]
    before = set(all_packs(sb))
    (sb.workspace / "MEMORY.md").write_text("only the second snapshot holds this\n" * 50)
    second = sb.backup()["id"]
    new_data = {k: v for k, v in data_packs(sb).items() if k not in before}
    assert new_data, "the second backup wrote a data pack"
    victim, (offset, length) = sorted(new_data.items())[0]
    flip_byte(sb.repo / victim, offset + length // 2)

    doc = sb.verify("--read-data", "--backup", first)
    assert doc["ok"] is True and doc["checked"]["packs"] == len(before), doc
    doc = sb.verify("--read-data", "--backup", second, check=1)
    assert any(e["object"] == victim and e["snapshot"] == second for e in doc["errors"]), doc["errors"]
    # A subset of one snapshot's packs stays within them.
    doc = sb.verify("--subset", "100", "--backup", first)
    assert doc["ok"] is True and doc["subset"]["of"] == len(before), doc
