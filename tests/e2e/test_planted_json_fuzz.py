"""Fuzzing the objects a writer of the repository's storage can change without the key: the key
slots and the config (plain JSON), and a lock. Each is mutated (truncated, extended, a byte flipped,
or one value replaced by what `json.loads` handles badly: a number of 5,000 digits, NaN, 1e999, an
array nested 50,000 deep, duplicate keys, bytes that are no UTF-8) and `phx list` runs in this
process. The property: no internal error; a slot planted beside the owner's is skipped (exit 0, the
snapshot listed); damage to the owner's only slot or to the config is one error naming it (exit 1).

A small budget in the default run, a large one with PHX_TEST_HEAVY=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import zstandard
from e2e_support import Sandbox
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phoenix_backup.memory.checksums import write_checksums
from phoenix_backup.repo import captures, retired
from phoenix_backup.repo import keys as keyslots
from phoenix_backup.repo.crypto import Sealer, aead
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend

pytestmark = pytest.mark.phx_in_process

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
FUZZ = settings(
    max_examples=400 if HEAVY else 30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Raw JSON tokens json.loads turns into a plain ValueError, a RecursionError, a float no field
# takes, or something that is not text at all.
TOKENS = [
    b"1" * 5000,
    b"-" + b"9" * 4301,
    b"NaN",
    b"-Infinity",
    b"1e999",
    b"-0",
    b"[" * 50000 + b"]" * 50000,
    b'"\xff\xfe"',
    b'"\\ud800"',
    b'{"a":1,"a":[]}',
    b"true",
    b"null",
    b'"' + b"A" * 100000 + b'"',
]
_HOLE = "\u0000phx-fuzz-hole"


def mutations(original: bytes) -> st.SearchStrategy[bytes]:
    doc = json.loads(original)
    keys = sorted(doc)

    def replace(key: str, token: bytes) -> bytes:
        return json.dumps({**doc, key: _HOLE}).encode().replace(json.dumps(_HOLE).encode(), token)

    def flip(at: int, bit: int) -> bytes:
        data = bytearray(original)
        data[at % len(data)] ^= 1 << bit
        return bytes(data)

    return st.one_of(
        st.builds(replace, st.sampled_from(keys), st.sampled_from(TOKENS)),
        st.builds(
            lambda key, token: original[:-1] + b',"' + key.encode() + b'":' + token + b"}",
            st.sampled_from(keys),
            st.sampled_from(TOKENS),
        ),
        st.builds(lambda n: original[:n], st.integers(0, len(original) - 1)),
        st.builds(lambda tail: original + tail, st.binary(min_size=1, max_size=64)),
        st.builds(flip, st.integers(0, len(original) - 1), st.integers(0, 7)),
        st.sampled_from(TOKENS),
    )


def run_here(sb: Sandbox, *args: str) -> tuple[int, str]:
    """`phx ARGS` in this process: exit status and output, with no internal error."""
    from click.testing import CliRunner

    from phoenix_backup.cli.main import cli

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(sb.env)
    try:
        run = CliRunner().invoke(cli, list(args), prog_name="phx")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    text = run.stdout + run.stderr
    assert run.exception is None or isinstance(run.exception, SystemExit), f"{run.exception!r}\n{text}"
    assert "internal error" not in text and "Traceback" not in text, text
    return run.exit_code, text


def owner_slot(sb: Sandbox) -> Path:
    (slot,) = (sb.repo / "keys").iterdir()
    return slot


def test_a_planted_key_slot_with_a_5000_digit_number_is_skipped(backed_up: Sandbox) -> None:
    # Before: json.loads's plain ValueError ("Exceeds the limit (4300 digits)") escaped the slot
    # reader, and every command that opens the repository failed as an internal error.
    planted = backed_up.repo / "keys" / secrets.token_hex(8)
    planted.write_bytes(b'{"version":' + b"1" * 5000 + b"}")
    code, out = run_here(backed_up, "list")
    assert code == 0 and "full" in out, out
    verify = backed_up.phx_here("verify", code=1)
    assert f"keys/{planted.name}" in verify.out + verify.err


@FUZZ
@given(data=st.data())
def test_a_key_slot_planted_beside_the_owners_is_skipped(backed_up: Sandbox, data: st.DataObject) -> None:
    original = owner_slot(backed_up).read_bytes()
    planted = backed_up.repo / "keys" / secrets.token_hex(8)
    planted.write_bytes(data.draw(mutations(original)))
    try:
        code, out = run_here(backed_up, "list")
        assert code == 0 and "full" in out, out
    finally:
        planted.unlink()


@FUZZ
@given(data=st.data())
def test_the_owners_only_key_slot_changed_is_one_error_naming_it(backed_up: Sandbox, data: st.DataObject) -> None:
    slot = owner_slot(backed_up)
    original = slot.read_bytes()
    mutated = data.draw(mutations(original))
    slot.write_bytes(mutated)
    try:
        code, out = run_here(backed_up, "list")
        if code == 0:  # still the same slot (a key order or white space changed): it opens
            assert "full" in out
        else:
            assert code == 1 and "key slot" in out, out
    finally:
        slot.write_bytes(original)


@FUZZ
@given(data=st.data())
def test_a_changed_config_is_one_error_naming_it(backed_up: Sandbox, data: st.DataObject) -> None:
    config = backed_up.repo / "config"
    original = config.read_bytes()
    config.write_bytes(data.draw(mutations(original)))
    try:
        code, out = run_here(backed_up, "list")
        if code == 0:
            assert "full" in out
        else:
            assert code == 1 and "config" in out, out
    finally:
        config.write_bytes(original)


def test_a_capture_segment_nested_50000_deep_is_one_clean_error(make_sandbox: Any) -> None:
    # An unencrypted repository: its writer can plant objects whose names match their bytes. Before,
    # json.loads's RecursionError escaped the capture segment reader (only ValueError and its like
    # were caught): `phx verify` failed as an internal error.
    sb = make_sandbox(encryption=False)
    sb.backup()
    deep = b"[" * 50000 + b"]" * 50000
    body = struct.pack("<4sBI", captures.MAGIC, captures.VERSION, len(deep)) + deep
    plain = Sealer(None)  # an unencrypted repository's checksum: no key needed
    segment = plain.seal(zstandard.ZstdCompressor().compress(body), captures.CAPTURE_AAD)
    name = f"captures/{hashlib.sha256(segment).hexdigest()}"
    (sb.repo / "captures").mkdir(exist_ok=True)
    (sb.repo / name).write_bytes(segment)
    code, out = run_here(sb, "verify")
    assert code == 1 and name in out, out
    code, out = run_here(sb, "status")
    assert "Traceback" not in out
    code, out = run_here(sb, "list")
    assert code == 0 and "full" in out, out


def test_a_retired_keys_object_nested_50000_deep_is_skipped(tmp_path: Path) -> None:
    # `phx sync` and `phx key rotate` read the retired/ objects; one that does not parse is skipped
    # (before, its RecursionError escaped as an internal error).
    repo = Repository.init(LocalBackend(tmp_path / "repo"), keyslots.wrap_none, False)
    planted = Sealer(None).seal(b"[" * 50000 + b"]" * 50000, retired.RETIRED_AAD)
    repo.backend.write(f"retired/{hashlib.sha256(planted).hexdigest()}", planted)
    assert retired.load(repo) == retired.load(Repository.init(LocalBackend(tmp_path / "b"), keyslots.wrap_none, False))


@pytest.mark.parametrize(
    ("path", "far"),
    [("root", False), ("/tmp/phx-planted-capture.db", False), ("workspace/planted.db", True)],
)
def test_a_capture_segment_naming_an_unsafe_path_or_time_is_damaged(make_sandbox: Any, path: str, far: bool) -> None:
    # A capture segment planted in an unencrypted repository (its name matches its bytes), on the
    # repository's own base snapshot, naming as its database a path no snapshot tree may hold, or
    # covering a time past the year 9999. Before, `root` failed `phx restore --at` in place as an
    # internal error (the copy was to be rebuilt beside `/`), an absolute path stopped every
    # `restore --at` with an unsafe path, and the far time failed `restore --at` and `drill --at`
    # as an internal error (OverflowError showing the covered ranges).
    sb = make_sandbox(encryption=False)
    sb.backup()
    base = next((sb.repo / "snapshots").iterdir()).name
    now = captures.to_us(datetime.now(UTC)) - 5_000_000
    start = (1 << 62) - 2000 if far else now
    part = captures.Part(
        path, 512, start, start + 1000, (captures.Commit(start, 1, (1,)),), captures.Base(base, "b" * 64)
    )
    seg = captures.build(secrets.token_hex(16), 0, None, "host", [(part, [b"\0" * 512])])
    header = seg.header()
    body = struct.pack("<4sBI", captures.MAGIC, captures.VERSION, len(header)) + header + seg.data
    raw = Sealer(None).seal(zstandard.ZstdCompressor().compress(body), captures.CAPTURE_AAD)
    name = f"captures/{hashlib.sha256(raw).hexdigest()}"
    (sb.repo / "captures").mkdir(exist_ok=True)
    (sb.repo / name).write_bytes(raw)
    at = captures.from_us(now + 500).isoformat()
    code, out = run_here(sb, "restore", "--at", at, "--yes", "--no-safety-snapshot")
    assert code == 2 and "no capture covers" in out, out
    code, out = run_here(sb, "drill", "--at", at)
    assert code == 2 and "no capture covers" in out, out
    code, out = run_here(sb, "verify")
    assert code == 1 and name in out and "malformed" in out, out
    assert not Path(path).exists()


@pytest.mark.parametrize("planted", ["checksums nested", "row nested", "row NaN"])
def test_a_hostile_export_is_one_error_and_imports_nothing(make_sandbox: Any, tmp_path: Path, planted: str) -> None:
    # An export is plain files: whoever hands one over can change a table file and write its
    # checksums.json anew. Before, a row or a checksums.json nesting 50,000 deep failed
    # `phx import` as an internal error (RecursionError), and a row holding NaN was imported.
    sb = make_sandbox()
    export = tmp_path / "export"
    assert run_here(sb, "export", "--output", str(export))[0] == 0
    deep = "[" * 50000 + "]" * 50000
    if planted == "checksums nested":
        (export / "checksums.json").write_text(deep)
    else:
        table = export / "databases" / "dashboard" / "tasks.json"  # the last store imported
        lines = table.read_text().splitlines()
        row = json.loads(lines[-2].removesuffix(","))
        lines[-2] = json.dumps(row).replace(": ", ": " + (deep if planted == "row nested" else "NaN") + ', "x": ', 1)
        table.write_text("\n".join(lines) + "\n")
        write_checksums(export)
    db = sb.db_path("home/.argentos/memory.db")
    con = sqlite3.connect(db)
    try:
        con.execute("DELETE FROM memory_items WHERE id IN (SELECT id FROM memory_items LIMIT 3)")
        con.commit()
        before = con.execute("SELECT count(*) FROM memory_items").fetchone()
    finally:
        con.close()
    code, out = run_here(sb, "import", str(export), "--force")
    assert code in (1, 2) and ("checksums.json" in out or "tasks.json" in out), out
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT count(*) FROM memory_items").fetchone() == before
    finally:
        con.close()


def test_a_check_record_nested_5000_deep_is_skipped(make_sandbox: Any) -> None:
    # An unencrypted repository keeps its secrets in the clear, so its storage's writer can seal a
    # checks/ record. Before, one nesting 5,000 deep (64 KiB at most is read) failed `phx drill` as
    # an internal error (json.loads's RecursionError escaped the record reader).
    from phoenix_backup.config import load_config
    from phoenix_backup.ops.context import Environment, open_repository
    from phoenix_backup.repo import checks
    from phoenix_backup.repo.walker import walk_tree

    sb = make_sandbox(encryption=False)
    sb.backup()
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    try:
        repo.load_index()
        snap = repo.load_snapshot(repo.list_snapshots()[0].id)
        key = aead(repo.secrets.derive(checks.KEY_CONTEXT))
        aad = checks.AAD + repo.config.id.encode()
        for logical, node in walk_tree(repo, snap.tree):
            if logical.endswith(".db") and node.sha256:
                nonce = secrets.token_bytes(checks.NONCE_SIZE)
                raw = nonce + key.encrypt(nonce, b"[" * 5000 + b"]" * 5000, aad)
                repo.backend.write(checks.name_of(node.sha256, raw), raw)
    finally:
        repo.close()
    code, out = run_here(sb, "drill")
    assert code == 0 and "drill passed" in out, out


def test_an_alignment_manifest_nested_50000_deep_is_unreadable_not_an_internal_error(make_sandbox: Any) -> None:
    # The workspace's alignment manifest is a file anything writing the workspace can change, and a
    # backup keeps it. Before, one nesting 50,000 deep failed `phx restore` as an internal error
    # (json.loads's RecursionError escaped the manifest reader).
    sb = make_sandbox()
    (sb.workspace / ".argent-alignment-integrity.json").write_text("[" * 50000 + "]" * 50000)
    sb.backup()
    (sb.workspace / ".argent-alignment-integrity.json").unlink()
    code, out = run_here(sb, "restore", "--latest", "--yes", "--no-safety-snapshot")
    assert code in (0, 3), out
    assert (sb.workspace / ".argent-alignment-integrity.json").read_text().startswith("[[[")


@pytest.mark.parametrize("planted", [b"[" * 50000 + b"]" * 50000, b'{"v":' + b"1" * 5000 + b"}"])
def test_a_database_streams_manifest_nested_deep_or_with_a_long_number_is_damaged(
    planted: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest.json a PostgreSQL or Redis entry keeps in the snapshot (written by anyone who
    can write an unencrypted repository's storage): nested 50,000 deep, json's RecursionError
    escaped its reader, an internal error at a restore into the server."""
    from phoenix_backup.errors import CorruptObject
    from phoenix_backup.repo.tree import Node
    from phoenix_backup.sinks import streams

    monkeypatch.setattr(streams, "read_node", lambda repo, path, node: planted)
    with pytest.raises(CorruptObject, match=r"manifest\.json is not valid JSON"):
        streams.read_manifest(cast(Any, None), "databases/postgres/agent", {streams.MANIFEST: cast(Node, object())})
