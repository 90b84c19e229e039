"""The pieces of a write-only repository (repo/writeonly.py), attacked one by one: a run key planted
or altered by someone who can write the storage, an index cover forged or spliced, a config whose
recipients were swapped, and a machine that backs up reading what it wrote."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import blake3
import pyrage
import pytest

from phoenix_backup.errors import CorruptObject, IdentityRequired, UnsupportedFormat
from phoenix_backup.repo.keys import MasterSecrets
from phoenix_backup.repo.pack import PackIds
from phoenix_backup.repo.repository import RepoConfig
from phoenix_backup.repo.writeonly import (
    INDEX_COVER_MAC_CONTEXT,
    RUN_KEY_ID_LENGTH,
    KeyedSealer,
    Keyring,
    RunKey,
    WriteKey,
    cover_index,
    uncover_index,
)
from phoenix_backup.storage.local import LocalBackend


def _keys() -> tuple[pyrage.x25519.Identity, str]:
    identity = pyrage.x25519.Identity.generate()
    return identity, str(identity.to_public())


def _write_key() -> WriteKey:
    return WriteKey.of(MasterSecrets.generate())


def test_a_run_key_opens_only_with_a_recipients_identity_and_only_when_authenticated() -> None:
    identity, recipient = _keys()
    other, _ = _keys()
    wk = _write_key()
    run = RunKey.generate()
    data = run.sealed([recipient], wk)
    assert RunKey.opened(run.id, data, wk, [identity]) == run
    assert RunKey.opened(run.id, data, wk, [other]) is None  # not a recipient
    # Someone who can write the storage, and knows the recipient (it is in the config), makes a
    # key of their own: without the write key it does not authenticate.
    planted = RunKey(run.id, b"\x01" * 32).sealed([recipient], _write_key())
    with pytest.raises(CorruptObject, match="not authenticated by the repository's write key"):
        RunKey.opened(run.id, planted, wk, [identity])
    # Moved to another id, or one byte changed: refused too.
    with pytest.raises(CorruptObject, match="not authenticated"):
        RunKey.opened(b"\x00" * RUN_KEY_ID_LENGTH, data, wk, [identity])
    with pytest.raises(CorruptObject, match="not authenticated"):
        RunKey.opened(run.id, data[:40] + bytes([data[40] ^ 1]) + data[41:], wk, [identity])
    with pytest.raises(CorruptObject, match="not a run key object"):
        RunKey.opened(run.id, b"PHXK", wk, [identity])


def test_an_index_cover_is_the_write_keys_and_cannot_be_spliced() -> None:
    wk = _write_key()
    packs = ["aa" * 32, "bb" * 32]
    raw = cover_index(b"sealed index", packs, ["cc" * 32], wk)
    cover = uncover_index(raw, wk, "index/x")
    assert cover is not None and (cover.packs, cover.superseded, cover.sealed) == (packs, ["cc" * 32], b"sealed index")
    assert uncover_index(b"\x00" * 40, wk, "index/x") is None  # an index object from before: no cover
    with pytest.raises(CorruptObject, match="not authenticated"):
        uncover_index(raw, _write_key(), "index/x")
    # Another index's sealed part under this cover (so the writer would count a pack as listed
    # that no readable index lists): the MAC covers the sealed part too.
    spliced = raw[: -32 - len(b"sealed index")] + b"other index!" + raw[-32:]
    with pytest.raises(CorruptObject, match="not authenticated"):
        uncover_index(spliced, wk, "index/x")


def test_only_the_owners_secrets_make_a_cover_that_may_supersede() -> None:
    """The write key authenticates every cover, so the machine that backs up (compromised or
    not) can write one that claims to supersede every index object; only a cover carrying the MAC
    of the master secrets (which only the identity opens) is the owner's."""
    master = MasterSecrets.generate()
    wk = WriteKey.of(master)
    owned = uncover_index(cover_index(b"sealed", ["aa" * 32], ["cc" * 32], wk, master), wk, "index/x")
    assert owned is not None and owned.superseded == ["cc" * 32] and owned.owned_by(master)
    assert not owned.owned_by(MasterSecrets.generate())
    # The writer's cover: version 1, no owner's MAC, whatever it claims.
    forged = uncover_index(cover_index(b"sealed", [], ["cc" * 32], wk), wk, "index/x")
    assert forged is not None and forged.superseded == ["cc" * 32] and not forged.owned_by(master)
    # A version 2 cover that the writer makes up (any 32 bytes for the owner's MAC) is not the owner's.
    body = cover_index(b"sealed", [], ["cc" * 32], wk)[:-32]
    made_up = b"PHXW\x02" + body[5:] + bytes(32)
    made_up += blake3.blake3(made_up, key=wk.derive(INDEX_COVER_MAC_CONTEXT)).digest()
    cover = uncover_index(made_up, wk, "index/x")
    assert cover is not None and cover.superseded == ["cc" * 32] and not cover.owned_by(master)


def _config(recipient: str, master: MasterSecrets) -> RepoConfig:
    return RepoConfig(
        "ab" * 16,
        2,
        "2026-01-01T00:00:00+00:00",
        True,
        {"min": 65536, "avg": 131072, "max": 262144},
        64,
        write_only=(recipient,),
    ).signed(master)


def test_a_write_only_config_is_format_3_and_its_recipients_are_authenticated() -> None:
    _identity, recipient = _keys()
    _other, attacker = _keys()
    master = MasterSecrets.generate()
    config = _config(recipient, master)
    assert config.version == 3 and json.loads(config.to_bytes())["writeOnly"] == {"recipients": [recipient]}
    assert RepoConfig.from_bytes(config.to_bytes(), "repo") == config
    assert config.writer_problem(WriteKey.of(master)) is None
    assert config.problem(master, "age") is None
    # The attacker swaps the recipients (to read what comes next): neither side accepts it.
    doc = json.loads(config.to_bytes())
    doc["writeOnly"]["recipients"] = [attacker]
    swapped = RepoConfig.from_bytes(json.dumps(doc).encode(), "repo")
    assert swapped.writer_problem(WriteKey.of(master)) is not None
    assert swapped.problem(master, "age") is not None
    # Format 3 without its section, or a format 2 config with one, is malformed; format 5 is newer.
    for version, section in ((3, None), (2, {"recipients": [recipient]})):
        doc = json.loads(config.to_bytes())
        doc["version"] = version
        doc.pop("writeOnly")
        if section is not None:
            doc["writeOnly"] = section
        with pytest.raises(CorruptObject):
            RepoConfig.from_bytes(json.dumps(doc).encode(), "repo")
    doc = json.loads(config.to_bytes())
    doc["writeOnly"] = {"recipients": ["age1notakey"]}
    with pytest.raises(CorruptObject, match="no age key"):
        RepoConfig.from_bytes(json.dumps(doc).encode(), "repo")
    doc["version"] = 7
    with pytest.raises(UnsupportedFormat):
        RepoConfig.from_bytes(json.dumps(doc).encode(), "repo")


def test_a_config_that_may_hold_capture_segments_is_format_5_and_says_its_pack_ids() -> None:
    """Format 5 (docs/repository-format.md §2): `packIds` always, `writeOnly` where it was; a
    field missing or unknown is malformed; `signed` never lowers it; format 6 is newer."""
    _identity, recipient = _keys()
    master = MasterSecrets.generate()
    plain = replace(_config(recipient, master), write_only=None).signed(master)
    assert plain.version == 2
    five = replace(plain, captures=True).signed(master)
    doc = json.loads(five.to_bytes())
    assert five.version == 5 and doc["packIds"] == "sha256" and "writeOnly" not in doc
    again = RepoConfig.from_bytes(five.to_bytes(), "repo")
    assert again == five and again.captures and again.pack_ids == PackIds.SHA256 and again.problem(master, "x") is None
    # A write-only one with BLAKE3 names, signed by the write key (the machine that backs up has no other).
    wo = replace(_config(recipient, master), pack_ids=PackIds.BLAKE3, captures=True).signed(WriteKey.of(master))
    doc = json.loads(wo.to_bytes())
    assert wo.version == 5 and doc["packIds"] == "blake3" and doc["writeOnly"] == {"recipients": [recipient]}
    assert RepoConfig.from_bytes(wo.to_bytes(), "repo").writer_problem(WriteKey.of(master)) is None
    # Never lowered: a write-only conversion or a rotation signs it again as format 5.
    assert replace(five, write_only=(recipient,)).signed(master).version == 5
    assert five.signed(MasterSecrets.generate()).version == 5
    for change in ({"packIds": None}, {"packIds": "md5"}, {"extra": 1}, {"version": 4}):
        doc = json.loads(five.to_bytes())
        doc.update(change)
        if doc["packIds"] is None:
            doc.pop("packIds")
        with pytest.raises(CorruptObject):
            RepoConfig.from_bytes(json.dumps(doc).encode(), "repo")
    # Lowered to 4 with BLAKE3 names (a format 4 config's shape): the MAC no longer verifies.
    doc = json.loads(wo.to_bytes())
    doc["version"] = 4
    assert RepoConfig.from_bytes(json.dumps(doc).encode(), "repo").writer_problem(WriteKey.of(master)) is not None
    doc["version"] = 7
    with pytest.raises(UnsupportedFormat, match="newer than this Phoenix reads \\(6\\)"):
        RepoConfig.from_bytes(json.dumps(doc).encode(), "repo")


def test_a_config_with_extent_lists_is_format_6_and_never_lowered() -> None:
    """Format 6 (docs/repository-format.md, "Version 6"): format 5 and more (`packIds` always, it
    may hold capture segments), signed again as 6 by a conversion or rotation; read back as 6; a
    format 6 config made 5 no longer verifies, and 7 is newer."""
    _identity, recipient = _keys()
    master = MasterSecrets.generate()
    six = replace(_config(recipient, master), write_only=None, pack_ids=PackIds.BLAKE3, extent_lists=True).signed(
        master
    )
    doc = json.loads(six.to_bytes())
    assert six.version == 6 and six.captures and doc["packIds"] == "blake3"
    again = RepoConfig.from_bytes(six.to_bytes(), "repo")
    assert again == six and again.extent_lists and again.captures and again.problem(master, "x") is None
    assert replace(six, write_only=(recipient,)).signed(WriteKey.of(master)).version == 6
    assert six.signed(MasterSecrets.generate()).version == 6
    assert not six.same_but_captures(replace(six, extent_lists=False).signed(master))
    doc["version"] = 5
    assert RepoConfig.from_bytes(json.dumps(doc).encode(), "repo").problem(master, "x") is not None


def test_a_write_only_repository_with_blake3_pack_names_is_format_4() -> None:
    _identity, recipient = _keys()
    master = MasterSecrets.generate()
    config = replace(_config(recipient, master), pack_ids=PackIds.BLAKE3).signed(master)
    doc = json.loads(config.to_bytes())
    assert config.version == 4 and doc["packIds"] == "blake3" and doc["writeOnly"] == {"recipients": [recipient]}
    again = RepoConfig.from_bytes(config.to_bytes(), "repo")
    assert again == config and again.write_only == (recipient,) and again.writer_problem(WriteKey.of(master)) is None
    # Dropping the pack names' field (to have packs checked by SHA-256) breaks the MAC or the format.
    doc.pop("packIds")
    with pytest.raises(CorruptObject, match="malformed"):
        RepoConfig.from_bytes(json.dumps(doc).encode(), "repo")
    doc["version"] = 3
    assert RepoConfig.from_bytes(json.dumps(doc).encode(), "repo").writer_problem(WriteKey.of(master)) is not None


def test_the_machine_that_backs_up_cannot_open_even_what_it_sealed_in_an_earlier_run(tmp_path: Path) -> None:
    identity, recipient = _keys()
    backend = LocalBackend(tmp_path / "repo")
    backend.create()
    wk = _write_key()
    first = KeyedSealer(Keyring(backend, wk, [recipient]))
    a, b = first.seal(b"memory one", b"aad"), first.seal(b"memory two", b"aad")
    # One run key per process, written before its first seal; nonces are its id and a counter.
    assert a[:RUN_KEY_ID_LENGTH] == b[:RUN_KEY_ID_LENGTH] and a[:12] != b[:12]
    assert [i.name for i in backend.list("runkeys/")] == [f"runkeys/{a[:RUN_KEY_ID_LENGTH].hex()}"]
    assert first.open(a, b"aad", "a") == b"memory one"  # the running process still has its key
    later = KeyedSealer(Keyring(backend, wk, [recipient]))  # the next run of the same machine
    with pytest.raises(IdentityRequired, match="age identity"):
        later.open(a, b"aad", "a")
    reader = KeyedSealer(Keyring(backend, wk, [recipient], identities=[str(identity)]))
    assert reader.open(b, b"aad", "b") == b"memory two"
    with pytest.raises(CorruptObject, match="fails authentication"):
        reader.open(b[:-1] + bytes([b[-1] ^ 1]), b"aad", "b")
    wrong, _ = _keys()
    with pytest.raises(IdentityRequired, match="not one of its recipients"):
        KeyedSealer(Keyring(backend, wk, [recipient], identities=[str(wrong)])).open(a, b"aad", "a")


def test_a_legacy_object_opens_with_the_master_key(tmp_path: Path) -> None:
    """Objects sealed before the repository became write-only keep the master key."""
    from phoenix_backup.repo.crypto import Sealer

    identity, recipient = _keys()
    backend = LocalBackend(tmp_path / "repo")
    backend.create()
    master = MasterSecrets.generate()
    old = Sealer(master.encryption_key).seal(b"from before", b"aad")
    keyring = Keyring(backend, WriteKey.of(master), [recipient], [str(identity)], master.encryption_key)
    sealer = KeyedSealer(keyring)
    new = sealer.seal(b"from after", b"aad")
    fresh = KeyedSealer(keyring.with_backend(backend))  # another process: only the identity
    assert fresh.open(old, b"aad", "old") == b"from before"
    assert fresh.open(new, b"aad", "new") == b"from after"


def test_write_key_fingerprint_and_replace_are_stable() -> None:
    wk = _write_key()
    assert wk.fingerprint == WriteKey(wk.id_key, wk.chunker_seed).fingerprint
    assert replace(wk, chunker_seed=wk.chunker_seed + 1).fingerprint != wk.fingerprint


def test_the_write_key_folder_and_its_parents_are_private_under_umask_000(tmp_path: Path) -> None:
    """The write key's folder was made 0700 but its missing parents (the data folder, `write-only/`)
    with the umask's mode: 0777 under umask 000, where any user could rename the 0700 folder away
    and put a write key of theirs in its place. Every folder made is 0700."""
    from phoenix_backup.repo.writer import WriterStore

    root = tmp_path / "data" / "write-only"
    old = os.umask(0)
    try:
        WriterStore(root, "0123abcd").save_key(_write_key())
    finally:
        os.umask(old)
    for folder in (tmp_path / "data", root, root / "0123abcd"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE((root / "0123abcd" / "write.key").stat().st_mode) == 0o600
