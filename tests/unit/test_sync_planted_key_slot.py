"""`phx sync` (replicate) against a key slot damaged or planted on the first target: the damaged
bytes are not copied, so the replica's good copy stays and no junk slot reaches it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from test_retention_prune import KB, take_snapshot

from phoenix_backup.repo import keys
from phoenix_backup.repo.replicate import replicate
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend

DAMAGE = {
    "truncated": lambda good: good[: len(good) // 2],
    "nested 50,000 deep": lambda good: b"[" * 50_000 + b"]" * 50_000,
    "a 5,000-digit number": lambda good: b'{"version":' + b"1" * 5_000 + b"}",
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_key_slot_on_the_first_target_is_not_copied_over_the_replicas(tmp_path: Path, kind: str) -> None:
    # Before, sync copied the first target's damaged slot over the replica's good copy (a slot
    # that differs is copied), leaving the replica without that way to open it.
    first = Repository.init(LocalBackend(tmp_path / "first"), keys.wrap_none, False)
    first.add_key_slot(keys.wrap_none(first.secrets))
    take_snapshot(first, {"a.bin": os.urandom(4 * KB)}, "2026-03-01T02:00:00+00:00")
    assert replicate(first, "x", LocalBackend(tmp_path / "x"), print).ok
    first.close()
    victim = sorted((tmp_path / "first" / "keys").iterdir())[1]
    good = victim.read_bytes()
    victim.write_bytes(DAMAGE[kind](good))
    planted = tmp_path / "first" / "keys" / secrets.token_hex(8)
    planted.write_bytes(DAMAGE[kind](good))
    first = Repository.open(LocalBackend(tmp_path / "first"), keys.Credentials(passphrase=None))
    try:
        assert replicate(first, "x", LocalBackend(tmp_path / "x"), print).ok
        assert replicate(first, "y", LocalBackend(tmp_path / "y"), print).ok  # a new replica
    finally:
        first.close()
    assert (tmp_path / "x" / "keys" / victim.name).read_bytes() == good
    assert not (tmp_path / "x" / "keys" / planted.name).exists()
    new = tmp_path / "y" / "keys"
    assert not (new / planted.name).exists() and not (new / victim.name).exists(), "a new replica got them"
