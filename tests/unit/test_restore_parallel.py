"""Large files are restored by several threads writing byte ranges: the result must be the same
file, byte for byte, and damage must still be caught by the SHA-256 check."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from phoenix_backup import Environment, backup, parse_config, restore
from phoenix_backup.errors import CorruptObject
from phoenix_backup.ops import restore as restore_op
from phoenix_backup.repo.tree import Node
from phoenix_backup.sample import generate_workspace, simulate_day


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Environment, object, Path]:
    layout = generate_workspace(tmp_path / "sample", size=3_000_000, seed=3)
    env = {"HOME": str(layout.home), "PHX_PASSPHRASE": "pw", "PHX_CACHE_DIR": str(tmp_path / "cache")}
    monkeypatch.setenv("HOME", str(layout.home))
    cfg = parse_config(
        {
            "workspace": str(layout.workspace),
            "backupDir": str(tmp_path / "repo"),
            "include": [],
            "encryption": {"enabled": True, "method": "passphrase"},
            "retention": {"last": -1},
        },
        tmp_path / "phx.json",
        env,
    )
    envx = Environment(env=env)
    backup(cfg, envx)
    simulate_day(layout, 0, seed=3)  # later extents point into earlier blobs
    backup(cfg, envx)
    return envx, cfg, layout.home


def test_parallel_writers_restore_databases_byte_for_byte(
    world: tuple[Environment, object, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    envx, cfg, _home = world
    monkeypatch.setattr(restore_op, "_PARALLEL_WRITE_BYTES", 1)
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    restore(cfg, envx, ref="latest", to=parallel)  # type: ignore[arg-type]
    monkeypatch.setattr(restore_op, "_PARALLEL_WRITE_BYTES", 1 << 62)
    restore(cfg, envx, ref="latest", to=serial)  # type: ignore[arg-type]
    dbs = sorted(p.relative_to(serial) for p in serial.rglob("*.db"))
    assert len(dbs) == 3
    for rel in dbs:
        assert _sha(parallel / rel) == _sha(serial / rel)


def test_parallel_writer_catches_a_wrong_extent(tmp_path: Path) -> None:
    """Bytes that do not match the recorded SHA-256 are refused, whichever thread wrote them."""
    from phoenix_backup.repo import keys
    from phoenix_backup.repo.crypto import BlobType
    from phoenix_backup.repo.repository import Repository
    from phoenix_backup.repo.tree import Extent
    from phoenix_backup.storage.local import LocalBackend

    repo = Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False)
    blobs = [os.urandom(32_000) for _ in range(6)]
    content = [Extent(repo.save_blob(BlobType.DATA, b)[0], 0, len(b)) for b in blobs]
    repo.flush()
    good = b"".join(blobs)
    node = Node(name="x.db", type="sqlite", size=len(good), content=content, sha256=hashlib.sha256(good).hexdigest())
    out = os.open(tmp_path / "ok", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        restore_op._write_content_parallel(repo, out, "x.db", node)
    finally:
        os.close(out)
    assert (tmp_path / "ok").read_bytes() == good
    node.sha256 = hashlib.sha256(b"something else").hexdigest()
    out = os.open(tmp_path / "bad", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(CorruptObject, match="SHA-256"):
            restore_op._write_content_parallel(repo, out, "x.db", node)
    finally:
        os.close(out)
