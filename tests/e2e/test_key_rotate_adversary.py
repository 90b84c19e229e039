"""Attacks on key rotation and replicas (task adv-rotrep): the threat model of a rotation or a
slot removal is a leaked key or credential, with the attacker able to write any target's storage.
"""

from __future__ import annotations

import os
from pathlib import Path

from attack_support import age_sandbox
from e2e_support import Sandbox
from test_key_attacks import _forged_slot
from test_key_rotate_history import _repo
from test_key_rotate_replica import _objects, _setup, _sync

from phoenix_backup.repo.crypto import Sealer, sha256_hex
from phoenix_backup.repo.repository import SNAPSHOT_AAD


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
    slots = sb.phx_here("key", "list", "--json").json()
    assert len(slots) == 2
    assert _sync(sb, replica)[0].ok
    assert len(list((replica / "keys").iterdir())) == 2
    sb.phx_here("key", "remove", next(s["id"] for s in slots if not s.get("current")))
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


def test_junk_under_keys_and_snapshots_does_not_fail_every_sync_after_a_rotation(make_sandbox, tmp_path: Path) -> None:
    """A replica brought over to the new key (its old slots gone). Whoever can write its storage
    plants bytes under keys/ and snapshots/, no key needed. Before, the slot-like junk (a stale
    slot) made each sync look for the retired key's objects, none was found, so the junk snapshot
    was taken for one of them: every sync failed ("this target keeps its old key and every object",
    untrue: its config is the new key's). Now junk under keys/ is no slot (it wraps no key) and
    goes; the junk snapshot is no retired key's object and keeps nothing."""
    sb, replica, _names, _old = _setup(make_sandbox, tmp_path)
    sb.phx_here("key", "rotate")
    assert _sync(sb, replica)[0].ok
    for prefix in ("keys", "snapshots"):
        raw = os.urandom(300)
        (replica / prefix / sha256_hex(raw)).write_bytes(raw)
    for _ in range(2):
        report, _said = _sync(sb, replica)
        assert report.ok, report.error  # before: "holds 1 snapshot(s) and 0 capture segment(s) ..."
    assert sorted(p.name for p in (replica / "keys").iterdir()) == sorted(p.name for p in (sb.repo / "keys").iterdir())
    assert (replica / "config").read_bytes() == (sb.repo / "config").read_bytes()


def test_a_retired_key_slot_planted_on_a_replica_brought_over_fails_no_sync(make_sandbox, tmp_path: Path) -> None:
    """The old key leaked. The replica was brought over to the new key (its old slots gone); the
    attacker plants there a slot wrapping the OLD key to the owner's public age recipient (the
    owner's identity opens it, and a rotation record names its key as retired) and a snapshot
    sealed under the old key. Before, every sync took that snapshot for the only copy of one the
    owner lost and failed ("this target keeps its old key", though its config is the new key's),
    and the planted slot stayed. Such a snapshot cannot be the owner's: the sync that switched the
    replica checked every old one there first. Now the sync goes on, says so, and deletes the slot."""
    sb, recipient = age_sandbox(make_sandbox, tmp_path)
    replica = tmp_path / "replica"
    with _repo(sb) as repo:
        leaked = repo.secrets
    assert _sync(sb, replica)[0].ok
    sb.phx_here("key", "rotate")
    assert _sync(sb, replica)[0].ok
    slot_id = "0123456789abcdef"
    (replica / "keys" / slot_id).write_bytes(_forged_slot(leaked, recipient, slot_id))
    raw = Sealer(leaked.encryption_key).seal(b'{"planted": true}', SNAPSHOT_AAD)
    (replica / "snapshots" / sha256_hex(raw)).write_bytes(raw)
    report, said = _sync(sb, replica)
    assert report.ok, report.error  # before: "holds 1 snapshot(s) ... this target keeps its old key"
    assert report.junk == [f"snapshots/{sha256_hex(raw)}"], report
    assert [n for n in said if "after this target was brought over to the new key" in n], said
    assert not (replica / "keys" / slot_id).exists() and (replica / report.junk[0]).exists()
    assert _sync(sb, replica)[0].ok
    assert (replica / "config").read_bytes() == (sb.repo / "config").read_bytes()
