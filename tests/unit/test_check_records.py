"""Integrity check records (repo/checks.py): what a reader accepts, and the verdict of several."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from phoenix_backup.errors import CorruptObject
from phoenix_backup.repo import checks, keys
from phoenix_backup.repo.crypto import NONCE_SIZE
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
        dataclasses.replace(rec(), by="backup-tool"),
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


class CountingBackend(LocalBackend):
    """A local repository that counts the objects read from it."""

    reads = 0

    def read(self, name: str) -> bytes:
        CountingBackend.reads += 1
        return super().read(name)


def test_a_flood_of_objects_under_one_name_prefix_costs_a_restore_its_check_not_thousands_of_reads(
    tmp_path: Path,
) -> None:
    """Whoever can write to the storage plants objects under the record names of a database's SHA-256
    (any bytes fit a name of their choosing): a restore must not read each of them (one request
    each on S3). Beyond a bound the records of those bytes are not read and the check runs."""
    repo = make_repo(tmp_path / "r")
    checks.write(repo, [rec()])
    for i in range(checks.MAX_RECORDS_READ + 50):
        junk = i.to_bytes(4, "big") * 50
        repo.backend.write(checks.name_of(SHA, junk), junk)
    counted = Repository.open(CountingBackend(tmp_path / "r"), keys.Credentials(passphrase="pw"))
    CountingBackend.reads = 0
    book = checks.CheckBook(counted)
    assert book.passed(SHA, 4096) is None  # not read: the restore checks the copy itself
    assert CountingBackend.reads <= checks.MAX_RECORDS_READ, CountingBackend.reads
    assert book.passed("ef" * 32, 4096) is None  # other bytes: nothing to read


def test_a_verdict_already_recorded_for_the_same_snapshot_is_not_written_again(tmp_path: Path) -> None:
    """A scheduled drill of an unchanged snapshot checks it every time; the repository keeps one record
    of each verdict on those bytes per snapshot, not one per drill (every restore reads them all)."""
    repo = make_repo(tmp_path / "r")
    for _ in range(3):
        checks.CheckBook(repo).add([rec(at=f"2026-12-0{_ + 1}T10:00:00+00:00")])
    assert len(list(repo.backend.list(checks.PREFIX))) == 1
    checks.CheckBook(repo).add([dataclasses.replace(rec(), snapshot="ef" * 32)])  # another snapshot of them
    checks.CheckBook(repo).add([rec("row 7 missing from index t_v")])  # a verdict that disagrees
    assert len(list(repo.backend.list(checks.PREFIX))) == 3
    assert checks.CheckBook(repo).passed(SHA, 4096) is None


def test_replication_does_not_read_or_copy_an_object_too_large_for_a_record(tmp_path: Path) -> None:
    """A planted object of any size under a name that fits it (its own SHA-256): no reader takes it,
    and a sync must neither load it into memory nor copy it to every replica."""
    repo = make_repo(tmp_path / "r")
    [name] = checks.write(repo, [rec()])
    big = b"\0" * (checks.MAX_RECORD_SIZE + 1)
    planted = checks.name_of(SHA, big)
    repo.backend.write(planted, big)
    replica = LocalBackend(tmp_path / "replica")
    report = replicate(repo, "replica", replica, lambda _m: None)
    assert report.ok, report.error
    assert [i.name for i in replica.list(checks.PREFIX)] == [name]


def test_replication_is_not_failed_by_something_under_checks_that_cannot_be_read(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    [name] = checks.write(repo, [rec()])
    (tmp_path / "r" / checks.name_of(SHA, b"x")).mkdir()  # planted: a folder where a record would be
    replica = LocalBackend(tmp_path / "replica")
    report = replicate(repo, "replica", replica, lambda _m: None)
    assert report.ok, report.error
    assert [i.name for i in replica.list(checks.PREFIX)] == [name]


def test_an_object_grown_after_the_listing_is_not_read_whole(tmp_path: Path) -> None:
    """Listed at a record's size, then replaced by a large object before the reader gets to it: the
    reader takes no more than the listing said (and drops what it got)."""
    repo = make_repo(tmp_path / "r")
    [name] = checks.write(repo, [rec()])
    [info] = repo.backend.list(checks.PREFIX)
    (tmp_path / "r" / name).write_bytes(b"\0" * (64 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptObject):
            checks.read_record(repo, info)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak} bytes held to read one listed record"


def test_a_record_names_the_checks_it_is_about_and_a_restore_skips_only_what_they_cover(tmp_path: Path) -> None:
    """A drill's pass covers `integrity_check` and the FTS5 checks, a restore's `integrity_check`
    alone: each record says which. A restore (which runs `integrity_check`) skips its check only on a
    pass that names it; a caller that wants the FTS5 checks too finds only the drill's."""
    repo = make_repo(tmp_path / "r")
    both = (checks.INTEGRITY_CHECK, checks.FTS5_CHECK)
    restore = dataclasses.replace(rec(at="2026-12-05T12:00:00+00:00"), by="restore")
    drill = dataclasses.replace(rec(at="2026-12-05T10:00:00+00:00"), checks=both)
    fts_only = dataclasses.replace(rec(at="2026-12-05T13:00:00+00:00"), sha256="ef" * 32, checks=(checks.FTS5_CHECK,))
    names = checks.write(repo, [restore, drill, fts_only])
    assert [checks.open_record(repo, n, repo.backend.read(n)).checks for n in names] == [
        (checks.INTEGRITY_CHECK,),
        both,
        (checks.FTS5_CHECK,),
    ]
    book = checks.CheckBook(repo)
    assert book.passed(SHA, 4096) == restore  # the newest that covers integrity_check
    assert book.passed(SHA, 4096, both) == drill
    assert book.passed("ef" * 32, 4096) is None  # a pass of other checks is no pass of this one


def test_a_record_written_before_records_named_their_checks_means_integrity_check(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    old = {**rec().to_json(), "repository": repo.config.id}
    del old["checks"]
    plain = json.dumps(old, sort_keys=True, separators=(",", ":")).encode()
    nonce = os.urandom(NONCE_SIZE)
    raw = nonce + checks._key(repo).encrypt(nonce, plain, checks._aad(repo))
    opened = checks.open_record(repo, checks.name_of(SHA, raw), raw)
    assert opened.checks == (checks.INTEGRITY_CHECK,) and opened.passed
    for bad in ([], "integrity_check", [1], [""]):
        doc = {**old, "checks": bad}
        plain = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        raw = nonce + checks._key(repo).encrypt(nonce, plain, checks._aad(repo))
        with pytest.raises(CorruptObject):
            checks.open_record(repo, checks.name_of(SHA, raw), raw)


class HeldBackend(LocalBackend):
    """The real local backend, whose reads of one record wait until released (a slow S3)."""

    hold = ""
    entered = threading.Event()
    release = threading.Event()

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        if HeldBackend.hold and name.startswith(HeldBackend.hold):
            HeldBackend.entered.set()
            assert HeldBackend.release.wait(60)
        return super().read_range(name, offset, length)


def test_a_slow_read_of_one_record_holds_up_no_thread_asking_about_other_bytes(tmp_path: Path) -> None:
    """The book held its lock while it read records from the store: one slow read (a slow S3) made
    every thread of a restore that asked about any other database wait for it. The requests run
    outside the lock now: a thread asking about other bytes gets its answer meanwhile, and one
    asking about the same bytes waits for the read under way instead of reading them again."""
    other = "ef" * 32
    repo = make_repo(tmp_path / "r")
    checks.write(repo, [rec(), dataclasses.replace(rec(), sha256=other)])
    HeldBackend.hold = checks.PREFIX + SHA[: checks.NAME_SHA_HEX]
    slow = Repository.open(HeldBackend(tmp_path / "r"), keys.Credentials(passphrase="pw"))
    book = checks.CheckBook(slow)
    got: dict[str, object] = {}
    first = threading.Thread(target=lambda: got.setdefault("first", book.passed(SHA, 4096)))
    same = threading.Thread(target=lambda: got.setdefault("same", book.passed(SHA, 4096)))
    first.start()
    assert HeldBackend.entered.wait(60)
    same.start()
    asker = threading.Thread(target=lambda: got.setdefault("other", book.passed(other, 4096)))
    asker.start()
    asker.join(30)
    held = asker.is_alive()
    HeldBackend.release.set()
    for t in (first, same, asker):
        t.join(60)
    assert not held, "the other bytes' answer waited for the slow read"
    assert got == {"first": rec(), "same": rec(), "other": dataclasses.replace(rec(), sha256=other)}
