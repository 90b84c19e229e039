"""The readers that stream a node's bytes out before its whole SHA-256 can be checked (`phx dump`,
`phx archive`, `phx export`'s files, the PostgreSQL and Redis restores) against a blob copy whose
tag is valid but whose plaintext is another blob's (docs/security.md, docs/restore.md): each blob
is proven by its id before any of its bytes go out (`repo/reader.py` `stream_blocks`), a copy that
does not prove is replaced by one that does; with none, one error naming the blob and the packs,
exit 1, nothing emitted and nothing applied. Before, each failed on such a copy (exit 1) although
another pack held a good one.

The copies are planted as tests/e2e/test_restore_proven_copy.py plants them (re-sealed with the
repository's key)."""

from __future__ import annotations

import contextlib
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, assert_error
from test_restore_proven_copy import _plant, snapshot_node

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import services
from phoenix_backup.config import load_config
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.repo.crypto import BlobType, Compression
from phoenix_backup.repo.pack import PackBuilder, PackEntry, blob_aad, pack_name
from phoenix_backup.repo.repository import Repository
from services import PgServer, postgres_entry

# The sandboxes' helpers (backup, restore_to, verify, snapshots) run phx in this process
pytestmark = pytest.mark.phx_in_process

pg_server = services.pg_server  # the session's PostgreSQL server (a fixture)
redis_server = services.redis_server  # the session's Redis server (a fixture)

NAME = "planted.txt"


def _text(size: int) -> str:
    """Text that `phx dump` can hand to a test's str stdout, stored as it is (compression off)."""
    return os.urandom(size // 2).hex()


def _backed_up(sb: Sandbox, name: str = NAME, size: int = 1 << 20) -> tuple[str, str]:
    """A file in the workspace, backed up uncompressed (a planted copy takes the
    place of the stored bytes, same length): the snapshot's id and the file's content."""
    sb.write_config(compression=False)
    content = _text(size)
    (sb.workspace / name).write_text(content)
    return sb.backup()["id"], content


def test_dump_takes_a_copy_that_proves_and_with_none_emits_nothing_naming_blob_and_pack(sandbox: Sandbox) -> None:
    sb = sandbox
    sid, content = _backed_up(sb)
    blob, bad_pack = _plant(sb, sid, good_copy=True, name=NAME)
    res = sb.phx("dump", sid, f"workspace/{NAME}", check=None)
    assert res.code == 0, res
    assert res.out == content
    assert bad_pack in res.err and blob in res.err, res.err

    _spoil_the_good_copy(sb, sid, NAME, bad_pack)
    res = sb.phx("dump", sid, f"workspace/{NAME}", check=None)
    assert_error(res, 1, NAME, blob, bad_pack)
    assert res.out == ""


def test_archive_takes_a_copy_that_proves_and_with_none_writes_no_archive(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    sid, content = _backed_up(sb)
    blob, bad_pack = _plant(sb, sid, good_copy=True, name=NAME)
    out = tmp_path / "agent.tar.gz"
    res = sb.phx("archive", sid, "--output", out, check=None)
    assert res.code == 0, res
    with tarfile.open(out) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.endswith(f"workspace/{NAME}")]
        got = tar.extractfile(member)
        assert got is not None and got.read().decode() == content
    assert bad_pack in res.err and blob in res.err, res.err

    _spoil_the_good_copy(sb, sid, NAME, bad_pack)
    folder = tmp_path / "out"
    folder.mkdir()
    assert_error(sb.phx("archive", sid, "--output", folder / "agent.zip", check=None), 1, NAME, blob, bad_pack)
    assert not list(folder.iterdir()), "nothing of the archive is left"


def test_export_files_take_a_copy_that_proves_and_with_none_write_no_export(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    sid, content = _backed_up(sb, "SOUL.md", 64 << 10)
    blob, bad_pack = _plant(sb, sid, good_copy=True, name="SOUL.md")
    out = tmp_path / "export"
    res = sb.phx("export", "--backup", sid, "--output", out, check=None)
    assert res.code == 0, res
    (soul,) = (out / "files").rglob("SOUL.md")
    assert soul.read_text() == content
    assert bad_pack in res.err and blob in res.err, res.err

    _spoil_the_good_copy(sb, sid, "SOUL.md", bad_pack)
    out = tmp_path / "export2"
    assert_error(sb.phx("export", "--backup", sid, "--output", out, check=None), 1, "SOUL.md", blob, bad_pack)
    assert not out.exists() or not list(out.iterdir()), "nothing of the export is left"


def _pg_backed_up(sb: Sandbox, pg: PgServer) -> tuple[str, str, dict[str, str]]:
    """A database of 2,000 rows, backed up uncompressed: the database,
    the snapshot's id and the environment with its password."""
    db = pg.create_database("stream")
    pg.sql(
        db,
        "CREATE TABLE notes (id int PRIMARY KEY, body text); "
        "INSERT INTO notes SELECT i, md5(i::text) || md5((i * 7)::text) FROM generate_series(1, 2000) i;",
    )
    sb.write_config(compression=False, databases={"postgres": [postgres_entry(pg, db)]})
    env = sb.env_with(PHX_TEST_PGPASSWORD=pg.password)
    sid = sb.phx("backup", "--json", env=env).json()["id"]
    return db, sid, env


def _pg_rows(pg: PgServer, db: str) -> list[tuple[Any, ...]]:
    return pg.query(db, "SELECT id, body FROM notes ORDER BY id")


def _spoil_the_good_copy(sb: Sandbox, sid: str, name: str, bad_pack: str) -> None:
    """After `_plant` with a good copy: that copy replaced by one that opens but holds other bytes
    too, so no copy of the blob proves (the other blobs of its pack stay whole; which of the two
    packs is the original depends on the order of the index objects). One backup serves both cases."""
    with _first_blob(sb, sid, name) as (repo, blob):
        (good,) = [loc for loc in repo.index.locations(blob) if pack_name(loc.pack_id) != bad_pack]
        sealed = repo.sealer.seal(os.urandom(good.raw), blob_aad(BlobType.DATA, blob))
        assert len(sealed) == good.stored and good.compression == Compression.NONE
        with open(sb.repo / pack_name(good.pack_id), "r+b") as f:
            f.seek(good.offset)
            f.write(sealed)


def test_postgres_restore_takes_a_copy_that_proves_and_with_none_leaves_the_database_untouched(
    sandbox: Sandbox, pg_server: PgServer
) -> None:
    sb, pg = sandbox, pg_server
    db, sid, env = _pg_backed_up(sb, pg)
    before = _pg_rows(pg, db)
    blob, bad_pack = _plant(sb, sid, good_copy=True, name="database.dump")
    pg.sql(db, "DELETE FROM notes WHERE id % 2 = 0")
    res = sb.phx("restore", "--backup", sid, "--databases-only", "--yes", "--json", check=None, env=env)
    assert res.code == 0, res
    assert _pg_rows(pg, db) == before
    assert bad_pack in res.err and blob in res.err, res.err

    _spoil_the_good_copy(sb, sid, "database.dump", bad_pack)
    pg.sql(db, "DELETE FROM notes WHERE id % 2 = 0; INSERT INTO notes VALUES (0, 'since the backup')")
    live = _pg_rows(pg, db)
    res = sb.phx("restore", "--backup", sid, "--databases-only", "--yes", "--json", check=None, env=env)
    assert res.code == 1, res
    (out,) = [d for d in res.json()["databases"] if d["path"] == "postgres/main"]
    assert not out["ok"] and blob in out["error"] and bad_pack in out["error"], out
    assert _pg_rows(pg, db) == live, "the database was changed"


def _redis_backed_up(sb: Sandbox, redis: Any) -> tuple[Any, str, dict[bytes, bytes]]:
    r = redis.client(11)
    r.flushdb()
    r.mset({f"agent:{i}": os.urandom(64).hex() for i in range(500)})
    sb.write_config(compression=False, databases={"redis": [{"name": "hot", "url": redis.url(11), "match": "agent:*"}]})
    saved = {k: r.get(k) for k in r.keys("agent:*")}
    return r, sb.backup()["id"], saved


def test_redis_restore_takes_a_copy_that_proves_and_with_none_writes_no_key(
    sandbox: Sandbox, redis_server: Any
) -> None:
    sb = sandbox
    r, sid, saved = _redis_backed_up(sb, redis_server)
    blob, bad_pack = _plant(sb, sid, good_copy=True, name="keys.phxr")
    r.flushdb()
    res = sb.phx("restore", "--backup", sid, "--databases-only", "--yes", "--json", check=None)
    assert res.code == 0, res
    assert {k: r.get(k) for k in r.keys("agent:*")} == saved
    assert bad_pack in res.err and blob in res.err, res.err

    _spoil_the_good_copy(sb, sid, "keys.phxr", bad_pack)
    r.flushdb()
    r.set("agent:live", "since the backup")
    res = sb.phx("restore", "--backup", sid, "--databases-only", "--yes", "--json", check=None)
    assert res.code == 1, res
    (out,) = [d for d in res.json()["databases"] if d["path"] == "redis/hot"]
    assert not out["ok"] and blob in out["error"] and bad_pack in out["error"], out
    assert r.keys("*") == [b"agent:live"], "a key was written"


def test_verify_names_a_wrong_copy_as_what_it_is(sandbox: Sandbox) -> None:
    """A copy that opens but holds other bytes, in a pack whose bytes no longer match its name: not
    "damaged (fails authentication or its hash)" (before), but a wrong copy of that blob, with the
    pack of a copy that proves; with none, said so."""
    sb = sandbox
    sid, _content = _backed_up(sb, size=6000)
    blob, bad_pack = _plant(sb, sid, good_copy=True, name=NAME)
    errors = sb.verify("--read-data", check=1)["errors"]
    (error,) = [e for e in errors if e["path"] == f"workspace/{NAME}"]
    assert error["object"] == bad_pack, errors
    message = error["message"]
    assert f"{bad_pack} holds a wrong copy of blob {blob}" in message and "holds a copy that proves" in message
    assert "fails authentication" not in message and "wrong extents" not in message, message


def test_verify_says_when_no_copy_of_a_wrong_copy_proves(sandbox: Sandbox) -> None:
    sb = sandbox
    sid, _content = _backed_up(sb, size=6000)
    blob, bad_pack = _plant(sb, sid, good_copy=False, name=NAME)
    errors = sb.verify("--read-data", check=1)["errors"]
    (error,) = [e for e in errors if e["path"] == f"workspace/{NAME}"]
    assert f"{bad_pack} holds a wrong copy of blob {blob}" in error["message"], errors
    assert "no copy of the blob proves" in error["message"], errors


def test_repair_snapshots_counts_a_blob_whose_other_copy_proves_as_held(sandbox: Sandbox) -> None:
    """Every reader takes the copy that proves: `phx repair snapshots --read-data` no longer names
    the file lost (before: "data lost for 1 path(s)", exit 1, and `--rewrite` would drop it)."""
    sb = sandbox
    sid, _content = _backed_up(sb, size=6000)
    _plant(sb, sid, good_copy=True, name=NAME)
    res = sb.phx("repair", "snapshots", "--read-data", check=None)
    assert res.code == 0 and NAME not in res.out, res


@contextlib.contextmanager
def _first_blob(sb: Sandbox, sid: str, name: str) -> Iterator[tuple[Repository, bytes]]:
    """The sandbox's repository, open with its index, and the first blob of the node `name` of
    snapshot `sid`; closed after the block."""
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    repo.load_index()
    try:
        yield repo, next(snapshot_node(repo, sid, name).blobs())
    finally:
        repo.close()


def _new_pack(repo: Repository, blob: bytes) -> tuple[str, bytes, list[PackEntry]]:
    """A pack of one genuine copy of `blob` (not written): its id, bytes and entries."""
    data = repo.load_blob(BlobType.DATA, blob)
    packer = PackBuilder(BlobType.DATA)
    packer.add(blob, Compression.NONE, repo.sealer.seal(data, blob_aad(BlobType.DATA, blob)), len(data))
    return packer.finish(repo.sealer)


def _plant_good_copy_after(sb: Sandbox, sid: str, name: str) -> tuple[str, str, str]:
    """A genuine copy of the first blob of `name` in a new pack whose name sorts after the pack of
    the copy a reader takes first, which is then replaced by a copy that opens but holds other bytes
    (as `_plant` does): prune goes through a blob's packs in name order. Returns the blob (hex, as
    messages show it), the wrong copy's pack and the good copy's."""
    with _first_blob(sb, sid, name) as (repo, blob):
        first = repo.index.get(blob)
        assert first is not None and first.compression == Compression.NONE, first
        # Each sealing has its own nonce, so its own pack name, after the first pack's with the odds
        # 1 - x where x is that name's place in [0, 1): tries until one sorts after, as many as
        # leave 1 run in 65,537 failing (the chance a first name leaves no room; about 10 tries on
        # average, a second at worst).
        for _ in range(1 << 16):
            pack_id, raw, entries = _new_pack(repo, blob)
            if pack_id > first.pack_id:
                break
        assert pack_id > first.pack_id
        repo.backend.write(pack_name(pack_id), raw)
        repo.write_index({pack_id: entries}, [])
        sealed = repo.sealer.seal(os.urandom(first.raw), blob_aad(BlobType.DATA, blob))  # a valid tag all the same
        assert len(sealed) == first.stored
        with open(sb.repo / pack_name(first.pack_id), "r+b") as f:
            f.seek(first.offset)
            f.write(sealed)
    return blob.hex()[:16], pack_name(first.pack_id), pack_name(pack_id)


def test_prune_keeps_the_copy_that_proves(sandbox: Sandbox) -> None:
    """A blob held twice, its first copy wrong (it opens, other bytes): `phx verify` says the data is
    whole while the good copy's pack stays, and every reader takes that copy. Prune keeps one copy
    of a blob: it must be the one that proves. Before, it kept the first pack in name order whose
    copy opened, deleted the good copy's pack as unused (exit 0), and the file was lost."""
    sb = sandbox
    sid, content = _backed_up(sb, size=6000)
    _blob, _bad_pack, good_pack = _plant_good_copy_after(sb, sid, NAME)
    for pack in (sb.repo / "data").rglob("*"):  # written long enough ago to be deleted
        if pack.is_file():
            os.utime(pack, (pack.stat().st_mtime - 7200,) * 2)
    assert sb.phx("prune", check=None).code == 0
    assert (sb.repo / good_pack).exists(), "the only copy that proves was deleted"
    res = sb.phx("dump", sid, f"workspace/{NAME}", check=None)
    assert res.code == 0 and res.out == content, res


def _first_pack_of_two(sb: Sandbox, sid: str, name: str) -> tuple[str, str]:
    """A second genuine copy of the first blob of `name`, in a pack of its own: the pack of the copy
    the index lists first (whichever of the two that is) and the other's."""
    with _first_blob(sb, sid, name) as (repo, blob):
        pack_id, raw, entries = _new_pack(repo, blob)
        repo.backend.write(pack_name(pack_id), raw)
        repo.write_index({pack_id: entries}, [])
    with _first_blob(sb, sid, name) as (repo, blob):  # read again: the order of the two index objects
        first, other = repo.index.locations(blob)
    return pack_name(first.pack_id), pack_name(other.pack_id)


def test_repair_snapshots_counts_a_blob_whose_first_pack_is_gone_as_held(sandbox: Sandbox) -> None:
    """A blob held twice whose first-listed pack is no longer in the store: every reader takes the
    other copy (as `phx dump` shows), prune keeps it as the blob's home, so `phx repair snapshots`
    must count it as held too, with `--read-data` or without. Before, it looked at the first-listed
    location only: the file was named lost, and `--rewrite` would drop it from the snapshot."""
    sb = sandbox
    sid, content = _backed_up(sb, size=6000)
    gone, kept = _first_pack_of_two(sb, sid, NAME)
    (sb.repo / gone).unlink()
    assert (sb.repo / kept).exists()
    res = sb.phx("dump", sid, f"workspace/{NAME}", check=None)
    assert res.code == 0 and res.out == content, res
    for args in ((), ("--read-data",)):
        res = sb.phx("repair", "snapshots", "--json", *args, check=None)
        assert NAME not in res.out + res.err, (args, res)


def test_a_streaming_reader_names_why_each_copy_failed(sandbox: Sandbox) -> None:
    """Ordinary damage through a streaming reader: a byte flipped in the blob's only copy, then its
    pack gone. The error names the pack and why its copy failed (authentication, missing). Before,
    both said the pack had "no copy whose bytes match its id", the words for a wrong copy."""
    sb = sandbox
    sid, _content = _backed_up(sb, size=6000)
    with _first_blob(sb, sid, NAME) as (repo, blob):
        loc = repo.index.get(blob)
        assert loc is not None
    pack = sb.repo / pack_name(loc.pack_id)
    with open(pack, "r+b") as f:
        f.seek(loc.offset + 100)
        byte = f.read(1)[0]
        f.seek(loc.offset + 100)
        f.write(bytes([byte ^ 1]))
    res = sb.phx("dump", sid, f"workspace/{NAME}", check=None)
    assert_error(res, 1, NAME, f"{pack_name(loc.pack_id)}: ", "fails authentication")
    pack.unlink()
    res = sb.phx("dump", sid, f"workspace/{NAME}", check=None)
    assert_error(res, 1, NAME, f"{pack_name(loc.pack_id)}: ", "is missing")
    assert res.out == ""
