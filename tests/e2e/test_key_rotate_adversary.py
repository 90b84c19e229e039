"""Attacks on key rotation and replicas (task adv-rotrep): the threat model of a rotation or a
slot removal is a leaked key or credential, with the attacker able to write any target's storage.
"""

from __future__ import annotations

import os
from pathlib import Path

from e2e_support import Sandbox
from test_key_rotate_replica import _objects, _sync

from phoenix_backup.repo.crypto import sha256_hex


def test_junk_on_a_replica_does_not_keep_a_removed_slot_there(make_sandbox, tmp_path: Path) -> None:
    """A passphrase leaks; the owner removes its slot with `phx key remove`. Whoever holds it and can
    write the replica's storage plants bytes no key opens under its snapshots/. Before, every sync
    took them for a retired key's objects and refused ("1 snapshot(s)") after copying the new data,
    never deleting the removed slot: the leaked passphrase went on opening the replica, and every
    new snapshot copied there. Now the removed slot, which wraps the current key (its sealed
    metadata says so), goes whatever else the replica holds."""
    sb: Sandbox = make_sandbox()
    sb.backup()
    replica = tmp_path / "replica"
    sb.phx("key", "add", "--method", "passphrase", env=sb.env_with(PHX_NEW_PASSPHRASE="leaked one"))
    slots = sb.phx("key", "list", "--json").json()
    assert len(slots) == 2
    assert _sync(sb, replica)[0].ok
    assert len(list((replica / "keys").iterdir())) == 2
    sb.phx("key", "remove", next(s["id"] for s in slots if not s.get("current")))
    raw = os.urandom(300)
    (replica / "snapshots" / sha256_hex(raw)).write_bytes(raw)  # planted by the holder of the leaked passphrase
    (sb.workspace / "MEMORY.md").write_text("# Memory\nwritten after the removal\n")
    sb.backup()
    report, _said = _sync(sb, replica)
    assert report.ok, report.error  # before: "holds 1 snapshot(s) and 0 capture segment(s) ..."
    # The leaked passphrase opens the replica no more (before: its slot stayed, for ever).
    assert sorted(p.name for p in (replica / "keys").iterdir()) == sorted(p.name for p in (sb.repo / "keys").iterdir())
    assert report.keys_removed == 1
    assert _objects(sb.repo) <= _objects(replica)
