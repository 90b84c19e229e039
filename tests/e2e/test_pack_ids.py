"""Pack names: a new repository (format 4) names each pack by the BLAKE3 of its bytes, a format 2
repository keeps SHA-256 names and its format; `verify --read-data` proves every pack against its
name either way, and finds a pack whose bytes changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import blake3
import pytest
from e2e_support import PASSPHRASE, TEST_KDF, Sandbox, assert_restored

from phoenix_backup.dirs import data_dir
from phoenix_backup.repo import keys
from phoenix_backup.repo.pack import PackIds
from phoenix_backup.repo.pins import Pins
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process


def _packs(sb: Sandbox) -> list[Path]:
    return sorted(p for p in (sb.repo / "data").glob("*/*") if p.is_file())


def _damage_one(sb: Sandbox) -> Path:
    """Flip a byte in the middle of the largest pack (a data pack): its name no longer fits."""
    victim = max(_packs(sb), key=lambda p: p.stat().st_size)
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    return victim


def _verify_finds(sb: Sandbox, victim: Path) -> None:
    doc = sb.verify("--read-data", check=1)
    assert doc["ok"] is False
    assert any(victim.name in (e.get("object") or "") for e in doc["errors"]), doc["errors"]


def remake_as_format_2(sb: Sandbox) -> None:
    """The sandbox's repository made again as an older Phoenix made it: format 2, packs named by SHA-256."""
    for path in sorted(sb.repo.rglob("*"), reverse=True):
        path.unlink() if not path.is_dir() else path.rmdir()
    sb.repo.rmdir()
    Repository.init(
        LocalBackend(sb.repo),
        lambda m: keys.wrap_passphrase(m, PASSPHRASE, kdf_params=TEST_KDF),
        True,
        pins=Pins(data_dir(sb.env) / "pins.json"),
        pack_ids=PackIds.SHA256,
    ).close()


def test_a_new_repository_names_its_packs_by_blake3(make_sandbox, tmp_path: Path) -> None:
    sb: Sandbox = make_sandbox()
    state = sb.state()
    doc = sb.backup()
    config = json.loads((sb.repo / "config").read_text())
    assert config["version"] == 6 and config["packIds"] == "blake3"
    packs = _packs(sb)
    assert len(packs) >= 2  # data and trees
    for pack in packs:
        raw = pack.read_bytes()
        assert pack.name == blake3.blake3(raw).hexdigest() != hashlib.sha256(raw).hexdigest()
    # Index objects and snapshots keep their SHA-256 names.
    for obj in [*(sb.repo / "index").iterdir(), *(sb.repo / "snapshots").iterdir()]:
        assert obj.name == hashlib.sha256(obj.read_bytes()).hexdigest()
    assert sb.verify("--read-data")["ok"] is True
    sb.restore_to(doc["id"], tmp_path / "restored")
    assert_restored(state, tmp_path / "restored", "format 4")
    _verify_finds(sb, _damage_one(sb))


def test_a_format_2_repository_keeps_sha256_names_and_its_format(make_sandbox, tmp_path: Path) -> None:
    sb: Sandbox = make_sandbox()
    remake_as_format_2(sb)
    before = (sb.repo / "config").read_bytes()
    assert json.loads(before)["version"] == 2 and "packIds" not in json.loads(before)
    sb.backup()
    (sb.workspace / "MEMORY.md").write_text("a new line\n")
    state = sb.state()
    doc = sb.backup()
    assert (sb.repo / "config").read_bytes() == before, "a backup never changes an old repository's format"
    for pack in _packs(sb):
        assert pack.name == hashlib.sha256(pack.read_bytes()).hexdigest()
    assert sb.verify("--read-data")["ok"] is True
    sb.restore_to(doc["id"], tmp_path / "restored")
    assert_restored(state, tmp_path / "restored", "format 2")
    _verify_finds(sb, _damage_one(sb))
