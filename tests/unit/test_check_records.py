"""Integrity check records (repo/checks.py): what a reader accepts, and the verdict of several."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from phoenix_backup.errors import CorruptObject
from phoenix_backup.repo import checks, keys
from phoenix_backup.repo.replicate import replicate
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend

SHA = "ab" * 32
SNAP = "cd" * 32


def make_repo(path: Path, encrypted: bool = True) -> Repository:
    return Repository.init(
        LocalBackend(path), lambda m: keys.wrap_passphrase(m, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1}), encrypted
    )


def rec(result: str = "ok", at: str = "2026-12-05T10:00:00+00:00", size: int = 4096) -> checks.CheckRecord:
    return checks.CheckRecord(SHA, size, result, "drill", at, SNAP, "home/.argentos/memory.db", "3.40.1")


@pytest.mark.parametrize("encrypted", [True, False])
def test_a_record_round_trips_and_any_changed_byte_is_refused(tmp_path: Path, encrypted: bool) -> None:
    repo = make_repo(tmp_path / "r", encrypted)
    [name] = checks.write(repo, [rec()])
    raw = repo.backend.read(name)
    assert checks.open_record(repo, name, raw) == rec()
    assert b"memory.db" not in raw  # sealed, also in an unencrypted repository
    for at in (0, 12, len(raw) // 2, len(raw) - 1):
        bad = bytearray(raw)
        bad[at] ^= 1
        with pytest.raises(CorruptObject):
            checks.open_record(repo, checks.name_of(SHA, bytes(bad)), bytes(bad))
    # Under another name (of other bytes, or not its own): refused.
    with pytest.raises(CorruptObject):
        checks.open_record(repo, checks.name_of("ef" * 32, raw), raw)


def test_another_repository_with_the_same_id_cannot_make_a_record(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    forger = Repository(repo.backend, repo.config, keys.MasterSecrets.generate())
    raw = checks.seal(forger, rec())
    with pytest.raises(CorruptObject):
        checks.open_record(repo, checks.name_of(SHA, raw), raw)
    other = make_repo(tmp_path / "o")
    other_raw = checks.seal(other, rec())
    with pytest.raises(CorruptObject):
        checks.open_record(repo, checks.name_of(SHA, other_raw), other_raw)


def test_a_failure_outvotes_every_pass_and_the_size_must_match(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    book = checks.CheckBook(repo)
    assert book.passed(SHA, 4096) is None
    checks.write(repo, [rec(at="2026-12-05T10:00:00+00:00"), rec(at="2026-12-05T11:00:00+00:00")])
    book = checks.CheckBook(repo)
    found = book.passed(SHA, 4096)
    assert found is not None and found.checked_at == "2026-12-05T11:00:00+00:00"
    assert book.passed(SHA, 8192) is None  # other bytes with the same hash prefix claim nothing
    checks.write(repo, [rec("*** in database main *** Page 7: btreeInitPage() returns error code 11", at="2026")])
    assert checks.CheckBook(repo).passed(SHA, 4096) is None  # older than both passes, and still wins
    checks.write(repo, [rec(at="2027-01-01T00:00:00+00:00")])
    assert checks.CheckBook(repo).passed(SHA, 4096) is None  # a newer pass does not override it either


def test_a_large_or_damaged_object_is_left_out_and_counted_by_prune(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    checks.write(repo, [rec()])
    big = checks.name_of(SHA, b"x")
    repo.backend.write(big, b"x" * (checks.MAX_RECORD_SIZE + 1))
    book = checks.CheckBook(repo)
    assert book.passed(SHA, 4096) is not None
    assert "too large" in book.unreadable[big]
    gone, unreadable = checks.names_of_forgotten(repo, {SNAP})
    assert gone == [] and list(unreadable) == [big]
    gone, _ = checks.names_of_forgotten(repo, set())
    assert len(gone) == 1


def test_a_record_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    for bad in (
        dataclasses.replace(rec(), by="backup"),
        dataclasses.replace(rec(), size=-1),
        dataclasses.replace(rec(), result=""),
        dataclasses.replace(rec(), snapshot="zz"),
    ):
        raw = checks.seal(repo, bad)
        with pytest.raises(CorruptObject):
            checks.open_record(repo, checks.name_of(SHA, raw), raw)


def test_replication_copies_the_records_and_drops_one_that_does_not_fit_its_name(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    [name] = checks.write(repo, [rec()])
    planted = checks.PREFIX + SHA[: checks.NAME_SHA_HEX] + "0" * (64 - checks.NAME_SHA_HEX)
    repo.backend.write(planted, repo.backend.read(name))  # a genuine record under a name not its own
    replica = LocalBackend(tmp_path / "replica")
    report = replicate(repo, "replica", replica, lambda _m: None)
    assert report.ok, report.error
    assert [i.name for i in replica.list(checks.PREFIX)] == [name]
    copy = Repository.open(replica, keys.Credentials(passphrase="pw"))
    assert checks.CheckBook(copy).passed(SHA, 4096) == rec()
