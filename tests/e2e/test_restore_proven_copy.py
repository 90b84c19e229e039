"""A blob copy whose tag is valid but whose plaintext is not the blob (docs/restore.md,
docs/security.md): sealed under the repository's key by a key holder or a bug. A restore opens
blobs without hashing their plaintext against their ids (the file's SHA-256 proves the bytes);
when that fails, the blobs that do not hash to their ids are taken from another copy that does and
the file is written again. With no copy that proves, the file alone fails, naming blob and pack.

The planted copy is re-sealed with the repository's key, as the planted-copy attacks of
tests/e2e/test_write_only.py do."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

from e2e_support import Sandbox
from test_import_merge import MEMORY, damage, rows

from phoenix_backup.config import load_config
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.repo.crypto import BlobType, Compression
from phoenix_backup.repo.pack import PackBuilder, blob_aad, pack_name
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Node
from phoenix_backup.repo.walker import Trees
from phoenix_backup.sinks.files import write_content

NAME = "planted.bin"


def snapshot_node(repo: Repository, sid: str, name: str) -> Node:
    """The one node named `name` in snapshot `sid` of `repo` (its index loaded)."""
    trees = Trees(repo)
    trees.load(repo.find_snapshot(sid).tree)
    (node,) = [n for ns in trees.nodes.values() for n in ns if n.name == name]
    return node


def _plant_copies(sb: Sandbox, sid: str, name: str, *, good_copy: bool, every: bool) -> tuple[Node, list[str]]:
    """A MAC-valid copy with other plaintext in place of the copy a restore reads first, of the
    first blob of the node `name` (of every blob with `every`); with `good_copy`, a genuine copy of
    each in a new pack too. Returns the node and the packs holding the bad copies, in blob order."""
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    repo.load_index()
    try:
        node = snapshot_node(repo, sid, name)
        blobs = list(dict.fromkeys(node.blobs()))[: None if every else 1]
        if good_copy:
            packer = PackBuilder(BlobType.DATA)
            for blob in blobs:
                data = repo.load_blob(BlobType.DATA, blob)
                packer.add(blob, Compression.NONE, repo.sealer.seal(data, blob_aad(BlobType.DATA, blob)), len(data))
            pack_id, raw, entries = packer.finish(repo.sealer)
            repo.backend.write(pack_name(pack_id), raw)
            repo.write_index({pack_id: entries}, [])
    finally:
        repo.close()
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    repo.load_index()
    bad: list[str] = []
    try:
        for blob in blobs:
            first = repo.index.get(blob)  # the copy a restore reads first, whichever pack that is
            assert first is not None and first.compression == Compression.NONE, first
            assert len(repo.index.locations(blob)) == (2 if good_copy else 1)
            # Other plaintext, same length: a valid tag all the same.
            sealed = repo.sealer.seal(os.urandom(first.raw), blob_aad(BlobType.DATA, blob))
            assert len(sealed) == first.stored
            with open(sb.repo / pack_name(first.pack_id), "r+b") as f:
                f.seek(first.offset)
                f.write(sealed)
            bad.append(pack_name(first.pack_id))
    finally:
        repo.close()
    return node, bad


def _plant(sb: Sandbox, sid: str, *, good_copy: bool, name: str = NAME) -> tuple[str, str]:
    """`_plant_copies` of the first blob: its id (hex, as messages show it) and the bad copy's pack."""
    node, (bad_pack,) = _plant_copies(sb, sid, name, good_copy=good_copy, every=False)
    return next(node.blobs()).hex()[:16], bad_pack


def _leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.startswith(".phx-tmp")]


def test_a_copy_with_other_plaintext_falls_back_to_a_good_copy(sandbox: Sandbox, tmp_path: Path) -> None:
    """Before, the file failed its SHA-256 and was not restored (exit 1) although another pack
    held a good copy: the copy that opened was used, never checked against its id."""
    sb = sandbox
    content = os.urandom(6000)
    (sb.workspace / NAME).write_bytes(content)
    sid = sb.backup()["id"]
    blob, bad_pack = _plant(sb, sid, good_copy=True)
    out = tmp_path / "out"
    res = sb.phx("restore", "--backup", sid, "--to", out, check=None)
    assert res.code == 0, res
    (restored,) = out.rglob(NAME)
    assert restored.read_bytes() == content
    assert bad_pack in res.err and blob in res.err, res.err
    assert not _leftovers(out)


def test_with_no_copy_that_proves_the_file_fails_alone_naming_blob_and_pack(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    (sb.workspace / NAME).write_bytes(os.urandom(6000))
    (sb.workspace / "beside.txt").write_text("restored all the same\n")
    sid = sb.backup()["id"]
    blob, bad_pack = _plant(sb, sid, good_copy=False)
    out = tmp_path / "out"
    res = sb.phx("restore", "--backup", sid, "--to", out, check=None)
    assert res.code == 1, res
    assert NAME in res.err and blob in res.err and bad_pack in res.err, res.err
    assert not list(out.rglob(NAME)), "a file that proves nothing was restored"
    (beside,) = out.rglob("beside.txt")
    assert beside.read_text() == "restored all the same\n"
    assert not _leftovers(out)


def test_a_database_falls_back_to_a_good_copy_too(sandbox: Sandbox, tmp_path: Path) -> None:
    """A SQLite database is restored through the same writer (sinks/sqlite.py: `write_content`):
    its page blob with other plaintext is taken from the good copy, the database restored whole."""
    sb = sandbox
    sb.write_config(compression=False)  # the planted copy takes the place of the stored bytes, same length
    db = sb.layout.dashboard_db
    expected = db.read_bytes()
    sid = sb.backup()["id"]
    blob, bad_pack = _plant(sb, sid, good_copy=True, name=db.name)
    out = tmp_path / "out"
    res = sb.phx("restore", "--backup", sid, "--to", out, check=None)
    assert res.code == 0, res
    (restored,) = out.rglob(db.name)
    assert restored.read_bytes() == expected
    assert bad_pack in res.err and blob in res.err, res.err
    assert not _leftovers(out)


def test_the_copies_proven_are_not_held_all_at_once(sandbox: Sandbox, tmp_path: Path) -> None:
    """A 24 MiB file every blob of which reads first from a copy with other plaintext: the file is
    restored from the good copies with a peak of Python memory under the file's size (a blob is at
    most 8 MiB: one read and opened, and the reading ahead, stay under 24 MiB). Before, `prove_node`
    held every proven blob's plaintext at once, and each wrong copy, sealed and opened, stayed in a
    cycle with its error's traceback: 107 MB at the peak for this file (tracemalloc)."""
    sb = sandbox
    content = os.urandom(24 << 20)
    (sb.workspace / NAME).write_bytes(content)
    sid = sb.backup()["id"]
    node, bad = _plant_copies(sb, sid, NAME, good_copy=True, every=True)
    assert len(bad) >= 8, bad
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    repo.load_index()
    out = tmp_path / NAME
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        tracemalloc.start()
        write_content(repo, fd, NAME, node)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        os.close(fd)
        repo.close()
    assert out.read_bytes() == content
    assert peak < len(content), f"{peak:,} bytes held at the peak for a file of {len(content):,}"


def test_restore_merge_falls_back_to_a_good_copy_too(sandbox: Sandbox) -> None:
    """`phx restore --merge` reads the snapshot's copy of a database through `copy_snapshot_database`
    (and `diff`, `export` too): its page blob with other plaintext is taken from the good copy and
    the rows merged. Before, only `write_content` fell back: the merge failed (exit 1, "damaged")."""
    sb = sandbox
    sb.write_config(compression=False)  # the planted copy takes the place of the stored bytes, same length
    db = sb.db_path(MEMORY)
    original = rows(db, "memory_items")
    sid = sb.backup()["id"]
    blob, bad_pack = _plant(sb, sid, good_copy=True, name=db.name)
    deleted, _edited = damage(db)
    res = sb.phx("restore", "--backup", sid, "--merge", "--yes", check=None)
    assert res.code == 0, res
    after = rows(db, "memory_items")
    assert {i: after[i] for i in deleted} == {i: original[i] for i in deleted}
    assert bad_pack in res.err and blob in res.err, res.err
