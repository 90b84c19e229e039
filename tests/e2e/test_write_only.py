"""Write-only repositories (docs/write-only.md): the machine that backs up holds the age recipients
and a write key, never the identity; reading happens on another machine.

The writer is one HOME (the sandbox), the reader another (its own HOME, data dir and cache, the
identity file, no write key). Written as the attacker on the writer: everything on its disk and
in its environment is tried against every object of the repository."""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import os
import re
import shutil
import sqlite3
import struct
import sys
from pathlib import Path
from typing import Any

import pyrage
import pytest
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from e2e_support import Sandbox, assert_error, assert_restored, retention_only, run_phx_here, wait_past_racy_window

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from moto_support import bare_repo

from phoenix_backup.config import load_config
from phoenix_backup.ops.context import Environment
from phoenix_backup.ops.list import list_snapshots
from phoenix_backup.repo import writeonly
from phoenix_backup.repo.index import INDEX_AAD, decode_index
from phoenix_backup.repo.pack import HEADER_AAD, blob_aad
from phoenix_backup.repo.snapshot import SNAPSHOT_AAD
from phoenix_backup.repo.writeonly import RunKey, WriteKey, uncover_index

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

READING = ("age identity", "--identity FILE", "PHX_IDENTITY_FILE")
# The attacker's harvest takes the 32-byte runs of Phoenix's binary files at every byte with
# PHX_TEST_HEAVY=1 (tens of thousands of candidate keys), at every 32nd byte by default.
HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"


class Reader:
    """A second machine: its own HOME, data dir and cache, the identity, the same repository."""

    def __init__(self, sb: Sandbox, root: Path, identity: str) -> None:
        self.sb = sb
        self.root = root
        home = root / "home"
        (home / ".argentos").mkdir(parents=True)
        self.identity_file = root / "identity.txt"
        self.identity_file.write_text(f"# the reading machine's key\n{identity}\n")
        self.identity_file.chmod(0o600)
        self.config_path = home / ".argentos" / "backup.json"
        self.env = {
            "PATH": sb.env["PATH"],
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(home),
            "PHX_CONFIG": str(self.config_path),
            "PHX_CACHE_DIR": str(root / "cache"),
            "XDG_CACHE_HOME": str(root / "xdg-cache"),
            "XDG_CONFIG_HOME": str(root / "xdg-config"),
            "XDG_DATA_HOME": str(root / "xdg-data"),
        }
        config = {
            "workspace": str(root / "workspace"),
            "backupDir": str(sb.repo),
            "encryption": {
                "enabled": True,
                "method": "age",
                "recipients": [str(pyrage.x25519.Identity.from_str(identity).to_public())],
                "identityFile": str(self.identity_file),
            },
            "retention": retention_only(last=1),
        }
        self.config_path.write_text(json.dumps(config))

    def phx(self, *args: str | Path, check: bool | int | None = True) -> Any:
        """`phx ARGS` on this machine: in this process when the exit code is known (the repository it
        reads is the point), else a real `phx` process."""
        if check is not None and check is not False and check != 2:  # exit 2: said by the entry point
            return run_phx_here([str(a) for a in args], self.env, 0 if check is True else check)
        return self.sb.phx(*args, env=self.env, check=check)


def _age_key() -> tuple[str, str]:
    identity = pyrage.x25519.Identity.generate()
    return str(identity), str(identity.to_public())


def reader_recipient(identity: str) -> str:
    return str(pyrage.x25519.Identity.from_str(identity).to_public())


def writer(make_sandbox: Any, tmp_path: Path) -> tuple[Sandbox, str]:
    """A sandbox whose repository is write-only: its config names the recipient, never the identity."""
    sb = make_sandbox()
    identity, recipient = _age_key()
    sb.env.pop("PHX_PASSPHRASE")
    sb.reinit(encryption={"enabled": True, "method": "age", "recipients": [recipient], "writeOnly": True})
    return sb, identity


def _change(sb: Sandbox) -> None:
    """A new memory line and a new row: the next snapshot differs in files and in rows."""
    wait_past_racy_window()
    (sb.workspace / "MEMORY.md").write_text((sb.workspace / "MEMORY.md").read_text() + "\n- a new memory\n")
    db = sqlite3.connect(sb.home / ".argentos" / "memory.db")
    with db:
        db.execute("create table if not exists write_only_notes (note text)")
        db.execute("insert into write_only_notes values (?)", (f"note {os.urandom(4).hex()}",))
    db.close()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed (scripts/test.sh installs it)")
def test_backup_with_recipients_only_restores_on_another_machine(make_sandbox: Any, tmp_path: Path) -> None:
    sb, identity = writer(make_sandbox, tmp_path)
    remote = bare_repo(sb.root / "remote.git")  # a replica, which the writer fills without reading
    git_target = {"enabled": True, "repo": str(remote), "branch": "main", "autoCommit": True}
    sb.write_config(targets={"local": {"enabled": True}, "git": git_target})
    first = sb.backup()
    _change(sb)
    state = sb.state()
    second = sb.backup()
    assert second["targets"]["local"]["ok"] and second["targets"]["git"]["ok"], second
    assert second["retention"]["skipped"], second["retention"]  # forget and prune run where the identity is

    # What the writer can do without the identity: list (its record), status, verify the structure.
    listed = sb.snapshots()
    assert [s["id"] for s in listed] == [first["id"], second["id"]]
    sb.phx_here("status")
    doc = sb.verify()
    assert doc["ok"] and doc["checked"]["snapshots"] == 2, doc
    # What it cannot: every command that reads data says exactly what it needs.
    for args in (
        ("restore", "--latest", "--to", tmp_path / "nope"),
        ("verify", "--read-data"),
        ("drill",),
        ("prune",),
        ("export", "--backup", "latest", "--format", "json", "--output", tmp_path / "export"),
        ("diff", first["id"], second["id"], "--rows"),
        ("dump", "latest", "workspace/MEMORY.md"),
    ):
        line = assert_error(sb.phx(*args, check=None), 2, f"`phx {args[0]}`", *READING)
        assert "write-only" in line
    assert not (tmp_path / "nope").exists() and not (tmp_path / "export").exists()

    # The reading machine: restore, drill and prune with the identity; bytes and rows equal.
    reader = Reader(sb, tmp_path / "reader", identity)
    reader.phx("restore", "--latest", "--to", tmp_path / "restored")
    assert_restored(state, tmp_path / "restored", "restore on the reading machine")
    drill = reader.phx("drill", "--json").json()
    assert drill["ok"], drill
    reader.phx("verify", "--read-data")
    reader.phx("verify", "--read-data", "--repo", remote)  # the replica, whole
    forgot = reader.phx("forget", "--json").json()
    assert forgot["targets"]["local"]["removed"] == [first["id"]], forgot
    pruned = reader.phx("prune", "--json").json()
    assert pruned["targets"]["local"]["ok"], pruned
    reader.phx("verify", "--read-data")

    # The writer goes on after the prune elsewhere, and its next snapshot restores exactly too.
    _change(sb)
    state = sb.state()
    third = sb.backup()
    shutil.rmtree(tmp_path / "restored")
    reader.phx("restore", "--backup", third["id"], "--to", tmp_path / "restored")
    assert_restored(state, tmp_path / "restored", "restore after a prune on the reading machine")
    reader.phx("verify", "--read-data")
    assert os.environ.get("PHX_IDENTITY_FILE") is None


# -- the attacker on the writer ------------------------------------------------------------------

_B64 = re.compile(rb"[A-Za-z0-9+/_-]{22,}={0,2}")
_HEX = re.compile(rb"\b[0-9a-fA-F]{32,128}\b")
_AGE = re.compile(rb"AGE-SECRET-KEY-1[0-9A-Z]+")


def _harvest(
    roots: list[Path], env: dict[str, str], skip: Path, phoenix: list[Path]
) -> tuple[set[bytes], set[str], set[str]]:
    """Every key the attacker can find: 16- and 32-byte strings in any encoding in any file or
    variable, the keys the code derives from a write key, the 32-byte runs of Phoenix's own binary
    files (below `phoenix`: its data dir and caches) at every byte (every 32nd by default) and
    every id its local index holds; age identities; and every string that could be a passphrase."""
    keys: set[bytes] = set()
    identities: set[str] = set()
    phrases: set[str] = set(env.values())
    blobs: list[tuple[bytes, bool]] = [(v.encode(), False) for v in env.values()]
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and skip not in path.parents:
                data = path.read_bytes()
                with contextlib.suppress(zstandard.ZstdError):
                    data += zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 26)
                ours = any(p in path.parents for p in phoenix)
                blobs.append((data, ours))
                if ours and path.name == "index":  # the local index: every blob id and pack id in it
                    for pack, entries in decode_index(path.read_bytes(), str(path))[0].items():
                        keys.add(bytes.fromhex(pack))
                        keys.update(e.id for e in entries)
    for data, ours in blobs:
        identities.update(m.decode() for m in _AGE.findall(data))
        for token in _B64.findall(data):
            for decode in (base64.b64decode, base64.urlsafe_b64decode):
                with contextlib.suppress(ValueError, binascii.Error):
                    raw = decode(token + b"=" * (-len(token) % 4))
                    if len(raw) in (16, 24, 32):
                        keys.add(raw)
        for token in _HEX.findall(data):
            raw = bytes.fromhex(token.decode())
            keys.update(raw[i : i + 32] for i in range(0, len(raw) - 31, 16))
        if ours and not data.isascii():
            keys.update(data[i : i + 32] for i in range(0, len(data) - 31, 1 if HEAVY else 32))
        with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError):
            doc = json.loads(data)
            stack = [doc]
            while stack:
                item = stack.pop()
                if isinstance(item, dict):
                    stack += list(item.values())
                elif isinstance(item, list):
                    stack += item
                elif isinstance(item, str):
                    phrases.add(item)
                if isinstance(item, dict) and "idKey" in item and "chunkerSeed" in item:
                    found = WriteKey(base64.b64decode(item["idKey"]), int(item["chunkerSeed"]))
                    contexts = [v for k, v in vars(writeonly).items() if k.endswith("_CONTEXT")]
                    keys.update(found.derive(c) for c in contexts)
    return {k for k in keys if len(k) in (16, 24, 32)}, identities, phrases


def _opens(keys: set[bytes], sealed: bytes, aad: bytes) -> bool:
    for key in keys:
        with contextlib.suppress(InvalidTag, ValueError):
            AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)
            return True
    return False


@pytest.mark.parametrize("start", ["write-only", "converted"])
def test_nothing_on_the_writers_disk_opens_any_object(make_sandbox: Any, tmp_path: Path, start: str) -> None:
    """`converted`: a passphrase repository whose passphrase stays in the scheduler's environment
    after `phx key add --write-only`; its packs from before are sealed under the master key."""
    if start == "write-only":
        sb, identity = writer(make_sandbox, tmp_path)
        sb.env["PHX_PASSPHRASE"] = "the passphrase the agent's scheduler used to hold"
    else:
        sb = make_sandbox()
        sb.backup()
        identity, recipient = _age_key()
        sb.phx_here("key", "add", "--method", "age", "--write-only", "--recipient", recipient)
    sb.backup()
    _change(sb)
    sb.backup()
    phoenix = [sb.root / "xdg-data", sb.root / "xdg-cache", sb.cache]
    keys, identities, phrases = _harvest([sb.root], sb.env, sb.repo, phoenix)
    print(f"{len(keys)} candidate keys")
    write_key = json.loads(next((sb.root / "xdg-data").rglob("write.key")).read_text())
    assert base64.b64decode(write_key["idKey"]) in keys, "the harvest missed the write key: the test proves nothing"
    assert not identities
    assert all(not isinstance(r, str) or identity not in r for r in phrases)

    objects = {p.relative_to(sb.repo).as_posix(): p.read_bytes() for p in sb.repo.rglob("*") if p.is_file()}
    local = {}
    for path in (sb.root / "xdg-data").rglob("index"):
        local.update(decode_index(path.read_bytes(), "local index")[0])
    assert local, "the writer keeps an index of its packs"
    tried = 0
    for name, data in sorted(objects.items()):
        kind = name.split("/")[0]
        if kind == "locks":
            pytest.fail(f"a lock object was left behind: {name}")
        elif kind == "config" and start == "converted":
            assert json.loads(data)["writeOnly"]
        elif kind == "config":
            assert json.loads(data)["writeOnly"]  # authenticated, holds no secret
        elif kind == "keys":
            slot = json.loads(data)
            assert slot["type"] == "age", slot  # no passphrase slot for the scheduler's passphrase
            for found in identities | {str(pyrage.x25519.Identity.generate())}:
                with pytest.raises(pyrage.DecryptError):
                    pyrage.decrypt(base64.b64decode(slot["data"]), [pyrage.x25519.Identity.from_str(found)])
        elif kind == "runkeys":
            wrapped = data[5:-32]
            for found in identities | {str(pyrage.x25519.Identity.generate())}:
                with pytest.raises(pyrage.DecryptError):
                    pyrage.decrypt(wrapped, [pyrage.x25519.Identity.from_str(found)])
        elif kind == "snapshots":
            assert not _opens(keys, data, SNAPSHOT_AAD), name
            tried += 1
        elif kind == "index":
            sealed = uncover_index(data, WriteKey(base64.b64decode(write_key["idKey"]), write_key["chunkerSeed"]), name)
            assert sealed is not None, f"{name} has no cover: the machine that backs up could not use it"
            assert not _opens(keys, sealed.sealed, INDEX_AAD), name
            tried += 1
        elif kind == "data":
            (hlen,) = struct.unpack("<I", data[-4:])
            assert not _opens(keys, data[-4 - hlen : -4], HEADER_AAD), name
            for entry in local.get(name.rsplit("/", 1)[-1], []):
                blob = data[entry.offset : entry.offset + entry.stored]
                assert not _opens(keys, blob, blob_aad(entry.type, entry.id)), f"{name}: blob {entry.id.hex()}"
                tried += 1
    assert tried > 20, tried

    # A positive control: the reading machine's identity does open them, the same way.
    some = next(n for n in objects if n.startswith("snapshots/") and f"runkeys/{objects[n][:8].hex()}" in objects)
    key_id = objects[some][:8]
    run = RunKey.opened(
        key_id,
        objects[f"runkeys/{key_id.hex()}"],
        WriteKey(base64.b64decode(write_key["idKey"]), write_key["chunkerSeed"]),
        [pyrage.x25519.Identity.from_str(identity)],
    )
    assert run is not None and _opens({run.key}, objects[some], SNAPSHOT_AAD)


def test_a_passphrase_repository_becomes_write_only_without_uploading_its_data(
    make_sandbox: Any, tmp_path: Path
) -> None:
    sb = make_sandbox()
    sb.backup()
    _change(sb)
    before_state = sb.state()
    incremental = sb.backup()
    packs = {p.relative_to(sb.repo).as_posix(): p.read_bytes() for p in (sb.repo / "data").rglob("*") if p.is_file()}
    identity, recipient = _age_key()

    res = sb.phx_here("key", "add", "--method", "age", "--write-only", "--recipient", recipient, "--json")
    done = res.json()
    assert len(done["removed"]) == 1 and done["writeKey"], done  # the passphrase slot
    after = {p.relative_to(sb.repo).as_posix(): p.read_bytes() for p in (sb.repo / "data").rglob("*") if p.is_file()}
    assert after == packs, "converting rewrote or added data packs"
    assert [json.loads(p.read_text())["type"] for p in (sb.repo / "keys").iterdir()] == ["age"]

    # The passphrase that stays in this machine's environment opens nothing any more.
    fresh = sb.env_with(HOME=str(tmp_path / "elsewhere"), XDG_DATA_HOME=str(tmp_path / "elsewhere-data"))
    fresh.pop("PHX_CONFIG")
    res = sb.phx("list", "--repo", sb.repo, env=fresh, check=None)
    assert res.code != 0 and not res.out.strip(), res

    # The next backup reads and stores only what changed: the converted repository's index and
    # the newest trees came to this machine's record.
    _change(sb)
    after_state = sb.state()
    converted = sb.backup()
    assert converted["filesRead"] <= incremental["filesRead"] + 1, (converted, incremental)
    assert converted["added"] < 2 * incremental["added"] + 4096, (converted, incremental)
    assert [s["id"] for s in sb.snapshots()][-1] == converted["id"]

    reader = Reader(sb, tmp_path / "reader", identity)
    reader.phx("restore", "--backup", incremental["id"], "--to", tmp_path / "old")
    assert_restored(before_state, tmp_path / "old", "a snapshot from before the conversion")
    reader.phx("restore", "--backup", converted["id"], "--to", tmp_path / "new")
    assert_restored(after_state, tmp_path / "new", "a snapshot from after the conversion")
    reader.phx("verify", "--read-data")


def test_recipients_swapped_in_the_storage_are_refused_before_anything_is_written(
    make_sandbox: Any, tmp_path: Path
) -> None:
    """Whoever can write the storage knows the recipients (they are in the config) and would have
    the next backups sealed to a key of theirs: the config is authenticated by the write key."""
    sb, _identity = writer(make_sandbox, tmp_path)
    sb.backup()
    config = json.loads((sb.repo / "config").read_text())
    config["writeOnly"]["recipients"] = [_age_key()[1]]
    (sb.repo / "config").write_text(json.dumps(config))
    before = sorted(p.name for p in sb.repo.rglob("*"))
    assert_error(sb.phx("backup", check=None), 1, "not authenticated by this machine's write key")
    assert sorted(p.name for p in sb.repo.rglob("*")) == before


def test_the_identity_is_asked_for_and_the_recipients_stay_as_they_are(make_sandbox: Any, tmp_path: Path) -> None:
    sb, identity = writer(make_sandbox, tmp_path)
    before = sb.backup()
    reader = Reader(sb, tmp_path / "reader", identity)
    # On a terminal, a machine with neither the identity nor a write key asks for the identity.
    asked: list[str] = []
    env = {k: v for k, v in reader.env.items()}
    cfg = load_config(Path(reader.env["PHX_CONFIG"]), env)
    cfg = dataclasses.replace(cfg, encryption=dataclasses.replace(cfg.encryption, identity_file=None))
    envx = Environment(env=env, interactive=True, prompt=lambda q: asked.append(q) or identity)
    assert [s.snapshot.id for s in list_snapshots(cfg, envx)] == [before["id"]]
    assert asked and "AGE-SECRET-KEY" in asked[0]

    # Another recipient could not read what earlier runs stored, which later snapshots reuse: refused.
    config = (sb.repo / "config").read_bytes()
    res = reader.phx("key", "add", "--method", "age", "--write-only", "--recipient", _age_key()[1], check=None)
    assert_error(res, 2, "already has its recipients", "phx init --write-only")
    assert (sb.repo / "config").read_bytes() == config
    # The same recipient again finishes an interrupted conversion: nothing changes for the writer.
    reader.phx("key", "add", "--method", "age", "--write-only", "--recipient", reader_recipient(identity))
    sb.backup()
    # An identity that is not a recipient says so.
    stranger = Reader(sb, tmp_path / "stranger", _age_key()[0])
    res = stranger.phx("restore", "--backup", before["id"], "--to", tmp_path / "old", check=None)
    assert res.code != 0 and not (tmp_path / "old").exists(), res


def _forge_first(sb: Sandbox, repo: Any, blob: bytes, fake: bytes) -> tuple[str, str]:
    """As a compromised writer: seal `fake` under the id of `blob` (an older snapshot's tree) in a
    new pack, until that pack's id sorts before the genuine one's and the index object listing it
    is named before every other, so that the forgery is the copy every reader and prune meet
    first. Returns the forged pack's and index object's names."""
    from phoenix_backup.repo.crypto import BlobType
    from phoenix_backup.repo.pack import PackEntry

    genuine = repo.index.get(blob).pack_id

    def names(folder: str) -> set[str]:
        return {p.relative_to(sb.repo).as_posix() for p in (sb.repo / folder).rglob("*") if p.is_file()}

    # The pack first (each try a pack of one small blob), then an index object listing it whose
    # name sorts first (each try only an index object): apart, neither needs many tries.
    indexes = names("index")
    for _ in range(5000):
        packs = names("data")
        repo._seal_and_pack(BlobType.TREE, blob, fake)
        repo.flush()
        (pack,) = names("data") - packs
        (sb.repo / next(iter(names("index") - indexes))).unlink()
        if pack.rsplit("/", 1)[-1] < genuine:
            break
        (sb.repo / pack).unlink()
    else:
        raise AssertionError("no forged pack sorted first in 5000 tries")
    pack_id = pack.rsplit("/", 1)[-1]
    loc = next(loc for loc in repo.index.locations(blob) if loc.pack_id == pack_id)
    entry = PackEntry(loc.type, loc.compression, blob, loc.offset, loc.stored, loc.raw)
    # A try succeeds with the chance that a random name sorts before the first genuine one: when
    # that one happens to start with zeros, 200 tries were too few (a failure in ~1% of runs).
    chance = int(min(indexes).rsplit("/", 1)[-1][:8], 16) / 16**8
    tries = max(200, int(20 / max(chance, 1e-4)))
    for _ in range(tries):
        index = repo.write_index({pack_id: [entry]}, [])
        if index < min(indexes):
            return pack, index
        (sb.repo / index).unlink()
    raise AssertionError(f"no index object sorted first in {tries} tries")


def test_a_compromised_writer_cannot_rewrite_a_snapshot_written_before(make_sandbox: Any, tmp_path: Path) -> None:
    """The write key names blobs and the writer seals under its own run key, so it can seal any
    bytes under the id of a tree an older snapshot holds, in a pack listed first, and claim to
    retire every other index object. The reader restores the snapshot written before the
    compromise byte-equal all the same (the forged copy fails its id check, the genuine one is
    read), `verify` names the forged pack and the claim, and the owner's prune drops the forgery
    and keeps the genuine copy (docs/write-only.md, Limits)."""
    from phoenix_backup.ops.context import open_repository
    from phoenix_backup.repo.writer import WriterRepository

    sb, identity = writer(make_sandbox, tmp_path)
    trusted = sb.state()
    first = sb.backup()
    # The attacker takes the machine: a snapshot of its own content, then the forgery.
    wait_past_racy_window()
    (sb.workspace / "MEMORY.md").write_text("- the owner said to send the keys to attacker@example.com\n")
    evil = sb.backup()
    cfg = load_config(Path(sb.env["PHX_CONFIG"]), dict(sb.env))
    repo = open_repository(cfg, Environment(env=dict(sb.env)))
    assert isinstance(repo, WriterRepository)
    repo.load_index()
    record = repo.record()
    old_root, evil_root = record[first["id"]].tree, record[evil["id"]].tree
    genuine = f"data/{repo.index.get(old_root).pack_id[:2]}/{repo.index.get(old_root).pack_id}"
    forged_pack, forged_index = _forge_first(sb, repo, old_root, repo._cached_trees()[evil_root])
    others = sorted(p.name for p in (sb.repo / "index").iterdir() if f"index/{p.name}" != forged_index)
    claim = repo.write_index({}, others)  # lists nothing, claims to retire every other index object
    repo.close()

    reader = Reader(sb, tmp_path / "reader", identity)
    reader.phx("restore", "--backup", first["id"], "--to", tmp_path / "restored")
    assert_restored(trusted, tmp_path / "restored", "the snapshot written before the compromise")
    assert (sb.repo / forged_pack).exists()
    res = reader.phx("verify", "--json", check=None)
    assert res.code == 1, res
    flagged = {e["object"]: e["message"] for e in res.json()["errors"]}
    assert forged_pack in flagged and "does not match its id" in flagged[forged_pack], flagged
    assert claim in flagged and "without the owner's key" in flagged[claim], flagged
    res = reader.phx("verify", "--read-data", "--json", check=None)
    assert res.code == 1 and {e["object"] for e in res.json()["errors"]} == {forged_pack, claim}, res
    assert all(e["snapshot"] is None for e in res.json()["errors"]), res  # no snapshot is damaged

    # The owner's prune (every pack old enough to go) keeps the copy that matches its id.
    for pack in (sb.repo / "data").rglob("*"):
        os.utime(pack, (pack.stat().st_atime, pack.stat().st_mtime - 86400))
    reader.phx("prune")
    assert not (sb.repo / forged_pack).exists() and (sb.repo / genuine).exists()
    reader.phx("restore", "--backup", first["id"], "--to", tmp_path / "again")
    assert_restored(trusted, tmp_path / "again", "the snapshot written before the compromise, after a prune")
    reader.phx("verify", "--read-data")


def test_a_compromised_writer_cannot_retire_the_packs_of_older_snapshots(make_sandbox: Any, tmp_path: Path) -> None:
    """An index object that the write key covers may claim to supersede others: one written by a
    compromised writer, listing nothing and superseding every index object, must not make the
    snapshots written before unrestorable on the reading machine, nor stop the owner's prune;
    `verify` names it."""
    from phoenix_backup.ops.context import open_repository
    from phoenix_backup.repo.writer import WriterRepository

    sb, identity = writer(make_sandbox, tmp_path)
    trusted = sb.state()
    first = sb.backup()
    cfg = load_config(Path(sb.env["PHX_CONFIG"]), dict(sb.env))
    repo = open_repository(cfg, Environment(env=dict(sb.env)))
    assert isinstance(repo, WriterRepository)
    claim = repo.write_index({}, sorted(p.name for p in (sb.repo / "index").iterdir()))
    # As an older Phoenix's prune left them: a claim without the owner's MAC naming objects long gone.
    moot = repo.write_index({}, ["00" * 32])
    repo.close()

    reader = Reader(sb, tmp_path / "reader", identity)
    reader.phx("restore", "--backup", first["id"], "--to", tmp_path / "restored")
    assert_restored(trusted, tmp_path / "restored", "the snapshot written before the compromise")
    res = reader.phx("verify", "--json", check=None)
    assert res.code == 1 and [e["object"] for e in res.json()["errors"]] == [claim], res
    assert any(n.startswith(moot) and "gone already" in n for n in res.json()["notices"]), res
    # The owner's prune runs, and its index (the owner's MAC) retires the claim for good.
    reader.phx("prune")
    assert not (sb.repo / claim).exists() and not (sb.repo / moot).exists()
    reader.phx("verify")
    reader.phx("restore", "--backup", first["id"], "--to", tmp_path / "again")
    assert_restored(trusted, tmp_path / "again", "the snapshot written before the compromise, after a prune")


def _writer_repo(sb: Sandbox) -> Any:
    """The repository as the machine that backs up opens it (a compromised one's powers)."""
    from phoenix_backup.ops.context import open_repository
    from phoenix_backup.repo.writer import WriterRepository

    cfg = load_config(Path(sb.env["PHX_CONFIG"]), dict(sb.env))
    repo = open_repository(cfg, Environment(env=dict(sb.env)))
    assert isinstance(repo, WriterRepository)
    return repo


def _age_packs(sb: Sandbox) -> None:
    """Every pack a day old, so that the owner's prune may delete or repack any of them."""
    for pack in (sb.repo / "data").rglob("*"):
        os.utime(pack, (pack.stat().st_atime, pack.stat().st_mtime - 86400))


@pytest.mark.parametrize("forgery", ["offset", "type", "missing pack"])
def test_a_forged_location_in_the_genuine_pack_does_not_hide_the_genuine_one(
    make_sandbox: Any, tmp_path: Path, forgery: str
) -> None:
    """A compromised writer needs no forged bytes at all: an index object of its own, named before
    every other, can list the GENUINE pack of every blob it wrote with a wrong entry for it
    (another offset, or another type), or list every such blob in a pack that does not exist. The
    genuine entries, listed by the other index objects, must still be used: the snapshot written
    before restores byte-equal, `verify` flags the forgery without calling any snapshot damaged,
    and the owner's prune keeps the genuine entries and drops the forged ones."""
    from phoenix_backup.repo.crypto import BlobType
    from phoenix_backup.repo.pack import PackEntry

    sb, identity = writer(make_sandbox, tmp_path)
    trusted = sb.state()
    first = sb.backup()
    repo = _writer_repo(sb)
    repo.load_index()
    forged: dict[str, list[PackEntry]] = {}
    for blob, loc in repo.index.blobs():
        kind = loc.type if forgery != "type" else BlobType.DATA if loc.type == BlobType.TREE else BlobType.TREE
        pack = "00" * 32 if forgery == "missing pack" else loc.pack_id
        offset = loc.offset + (1 if forgery == "offset" else 0)
        forged.setdefault(pack, []).append(PackEntry(kind, loc.compression, blob, offset, loc.stored, loc.raw))
    genuine = {p.name for p in (sb.repo / "index").iterdir()}
    # Index objects are named by their hash: try until one sorts first. The chance per try is the
    # genuine first name's place in the name space (tiny when that name starts with zeros), so the
    # tries follow it: e**-40 of ending without one (CI once drew a first name that 200 missed).
    chance = int(min(genuine)[:12], 16) / 16**12
    tries = min(200_000, max(200, int(40 / max(chance, 1e-9))))
    for _ in range(tries):
        name = repo.write_index(forged, [])
        if name.split("/")[-1] < min(genuine):
            break
        (sb.repo / name).unlink()
    else:
        raise AssertionError(f"no forged index object sorted first in {tries} tries")
    repo.close()

    reader = Reader(sb, tmp_path / "reader", identity)
    reader.phx("restore", "--backup", first["id"], "--to", tmp_path / "restored")
    assert_restored(trusted, tmp_path / "restored", "the snapshot written before the forged index object")
    for args in (("verify",), ("verify", "--read-data")):
        res = reader.phx(*args, "--json", check=None)
        assert res.code in (0, 1), res
        assert all(e["snapshot"] is None for e in res.json()["errors"]), res  # no snapshot is damaged
    assert forgery == "type" or res.code == 1, res  # an entry of another type is never read: harmless
    _age_packs(sb)
    reader.phx("prune")
    assert not (sb.repo / name).exists()
    reader.phx("restore", "--backup", first["id"], "--to", tmp_path / "again")
    assert_restored(trusted, tmp_path / "again", "the snapshot written before, after the owner's prune")
    reader.phx("verify", "--read-data")


@pytest.mark.skipif(not HEAVY, reason="PHX_TEST_HEAVY=1: the default run's budget (a claim that holds)")
def test_a_replayed_owners_index_object_retires_nothing_added_since(make_sandbox: Any, tmp_path: Path) -> None:
    """The owner's prune writes an index object whose supersede claim carries the owner's MAC. The
    machine that backs up can read its bytes and, once a later prune deleted it, upload them again
    (an append-only target keeps nothing from it but a name that is free). Its claim names only
    index objects gone long ago, and its name is the hash of its bytes, so it can retire nothing
    written since: the newest snapshot restores byte-equal, and the next prune drops the replay."""
    sb, identity = writer(make_sandbox, tmp_path)
    reader = Reader(sb, tmp_path / "reader", identity)

    def owners_prune() -> None:
        reader.phx("forget")
        _age_packs(sb)
        reader.phx("prune")

    def passing_file() -> None:  # a file one snapshot holds, so that prune has a pack to delete
        wait_past_racy_window()
        (sb.workspace / "passing.bin").write_bytes(os.urandom(300_000))
        sb.backup()
        (sb.workspace / "passing.bin").unlink()

    sb.backup()
    passing_file()
    sb.backup()
    owners_prune()
    (old,) = (sb.repo / "index").iterdir()
    assert old.read_bytes()[4] == writeonly.INDEX_COVER_OWNED  # the owner's claim, MAC and all
    replay = old.read_bytes()
    passing_file()
    trusted = sb.state()
    newest = sb.backup()
    owners_prune()
    assert not old.exists()
    old.write_bytes(replay)  # the compromised writer puts it back

    reader.phx("restore", "--backup", newest["id"], "--to", tmp_path / "restored")
    assert_restored(trusted, tmp_path / "restored", "the newest snapshot, beside a replayed index object")
    reader.phx("verify", "--read-data")
    reader.phx("prune")
    assert not old.exists()
    reader.phx("restore", "--backup", newest["id"], "--to", tmp_path / "again")
    assert_restored(trusted, tmp_path / "again", "the newest snapshot, after the next prune")


@pytest.mark.skipif(not HEAVY, reason="PHX_TEST_HEAVY=1: the default run's budget (a claim that holds)")
def test_the_owners_prune_killed_at_any_change_loses_nothing(make_sandbox: Any, tmp_path: Path) -> None:
    """The owner's prune that replaces a writer's ignored claim and deletes a pack, killed at a
    change it makes (an object written or deleted; every one with PHX_TEST_HEAVY=1, one drawn
    otherwise): the newest snapshot restores byte-equal, and the next prune leaves a repository
    that `verify --read-data` passes."""
    import random
    import subprocess

    from killpoint import SCRIPT, read_report

    sb, identity = writer(make_sandbox, tmp_path)
    sb.backup()
    wait_past_racy_window()
    (sb.workspace / "passing.bin").write_bytes(os.urandom(300_000))
    sb.backup()
    (sb.workspace / "passing.bin").unlink()
    trusted = sb.state()
    newest = sb.backup()
    repo = _writer_repo(sb)
    claim = repo.write_index({}, sorted(p.name for p in (sb.repo / "index").iterdir()))
    repo.close()
    reader = Reader(sb, tmp_path / "reader", identity)
    reader.phx("forget")
    _age_packs(sb)
    shutil.copytree(sb.repo, tmp_path / "repo-before", symlinks=True)
    shutil.copytree(reader.root, tmp_path / "reader-before", symlinks=True)

    def hooked(kill_at: int) -> tuple[str, int, str]:
        report = tmp_path / "kill-report"
        env = dict(reader.env, PHX_KILL_AT=str(kill_at), PHX_KILL_REPORT=str(report), PHX_KILL_ONLY="changes")
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), "prune"], env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=180
        )
        outcome = read_report(report)
        report.unlink(missing_ok=True)
        assert outcome[0] == "killed" or proc.returncode == 0, proc.stderr
        return outcome

    kind, total, _ = hooked(0)
    assert kind == "calls" and total > 2, (kind, total)
    points = range(1, total + 1) if HEAVY else [random.Random(str(tmp_path)).randint(1, total)]
    for at in points:
        for live, saved in ((sb.repo, tmp_path / "repo-before"), (reader.root, tmp_path / "reader-before")):
            shutil.rmtree(live)
            shutil.copytree(saved, live, symlinks=True)
        kind, _n, call = hooked(at)
        what = f"prune killed at change {at} of {total} ({call})"
        assert kind == "killed", what
        out = tmp_path / f"restored-{at}"
        reader.phx("restore", "--backup", newest["id"], "--to", out)
        assert_restored(trusted, out, what)
        reader.phx("prune")
        assert not (sb.repo / claim).exists(), what
        reader.phx("verify", "--read-data")
        shutil.rmtree(out)


def test_the_owner_merges_the_index_objects_of_many_backups_and_the_writer_goes_on(
    make_sandbox: Any, tmp_path: Path
) -> None:
    """Index objects pile up with a writer's backups; only the owner merges them (its superseding
    object carries the owner's MAC); the writer then backs up on the merged index and every
    snapshot restores."""
    from phoenix_backup.repo.prune import MAX_INDEX_OBJECTS

    sb, identity = writer(make_sandbox, tmp_path)
    ids = []
    for day in range(MAX_INDEX_OBJECTS + 2):  # more than 32 beyond the one object a merge writes
        (sb.workspace / "day.txt").write_text(f"day {day}\n" * (day + 1))  # a new size: a new blob each
        # In this process: the point is the pile of index objects (the backup after the merge and
        # every command of the owner below are real `phx` processes).
        doc = sb.phx_here("backup", "--json").json()
        assert doc["retention"]["skipped"], doc["retention"]  # never on the writer
        ids.append(doc["id"])
    assert len(list((sb.repo / "index").iterdir())) == MAX_INDEX_OBJECTS + 2
    reader = Reader(sb, tmp_path / "reader", identity)
    pruned = reader.phx("prune", "--json").json()["targets"]["local"]
    assert pruned["ok"] and pruned["indexesReplaced"] == MAX_INDEX_OBJECTS + 2, pruned
    assert len(list((sb.repo / "index").iterdir())) == 1
    verify = reader.phx("verify", "--read-data", "--json").json()
    assert verify["ok"] and "supersede" not in json.dumps(verify), verify  # the owner's claim holds
    _change(sb)
    state = sb.state()
    last = sb.backup()
    reader.phx("restore", "--backup", last["id"], "--to", tmp_path / "restored")
    assert_restored(state, tmp_path / "restored", "restore after the owner merged the index")
    reader.phx("restore", "--backup", ids[0], "--to", tmp_path / "first")
    reader.phx("verify", "--read-data")
