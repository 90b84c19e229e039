"""The machine that backs up a write-only repository: its write key, its own record of the
snapshots it wrote, and the trees of its newest ones (repo/writeonly.py says why it can read
nothing else).

    <data dir>/write-only/<repo id>/
        write.key        the write key (JSON, mode 0600): names and cuts blobs, authenticates
        index            where the blobs of this machine's packs are (the index format's body, zstd)
        snapshots.json   every snapshot this machine wrote, as written (what `list` and `status` show)
        trees/<16 hex>   the trees of its newest snapshot of one host and scope (zstd), so the next
                         backup finds unchanged files and folders without reading the repository

It is the data dir, not the cache: without the write key the machine can no longer back up (a
copy comes from the machine that made it), and without the record it lists nothing. Losing the
index costs one backup that uploads everything again, losing the trees one that reads every file
again; never data. The repository's own index objects name their packs in a cover the write key
authenticates (repo/writeonly.py): a pack of the local index is used only while a live index
object of the repository lists it, so a pack a prune elsewhere removed or retired is stored again,
never referred to. None of it opens a sealed object: the index holds blob ids (keyed hashes) and
sizes, the record what the snapshots say (names, times, sizes, row counts), the trees the file
names, sizes and SHA-256 of the newest snapshot only, which the workspace here shows anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from phoenix_backup.dirs import make_dirs, read_secret, trustworthy, write_private
from phoenix_backup.errors import (
    ConfigError,
    ConfigNotAuthenticated,
    CorruptObject,
    IdentityRequired,
    MissingCredentials,
    ObjectNotFound,
    PhoenixError,
    UsageError,
)
from phoenix_backup.repo import keys as keyslots
from phoenix_backup.repo.crypto import BlobType, sha256_hex, zstandard_module
from phoenix_backup.repo.index import decode_index, encode_index
from phoenix_backup.repo.locks import DELETED, MORE_COMMITTED
from phoenix_backup.repo.pack import MAX_HEADER, PackEntry, pack_name
from phoenix_backup.repo.repository import RepoConfig, Repository
from phoenix_backup.repo.snapshot import Snapshot
from phoenix_backup.repo.tree import Node as TreeNode
from phoenix_backup.repo.tree import decode_tree, encode_tree
from phoenix_backup.repo.walker import Trees
from phoenix_backup.repo.writeonly import RUN_KEY_ID_LENGTH, RunKey, WriteKey, run_key_name, uncover_index
from phoenix_backup.storage.base import Backend

RECORD_VERSION = 1
_TREE_ENTRY = struct.Struct("<32sI")
# A tree cache file holds the trees of one snapshot: far below this for any workspace.
MAX_TREE_CACHE = 1 << 30


class WriterStore:
    """One write-only repository's local state on the machine that backs it up."""

    def __init__(self, root: Path, repo_id: str) -> None:
        self.folder = root / repo_id
        self.repo_id = repo_id
        self.key_path = self.folder / "write.key"
        self.index_path = self.folder / "index"
        self.record_path = self.folder / "snapshots.json"
        self.trees_dir = self.folder / "trees"

    # -- the write key ---------------------------------------------------------------------

    def save_key(self, write_key: WriteKey) -> None:
        self._mkdir(self.folder)
        write_private(self.key_path, (json.dumps(write_key.document(self.repo_id), indent=2) + "\n").encode())

    def load_key(self, location: str) -> WriteKey:
        try:
            with open(self.key_path, "rb") as f:
                st = os.fstat(f.fileno())
                fix = "copy write.key again from the machine that backs the repository up"
                raw = read_secret(f, self.key_path, "the write key", fix)
        except FileNotFoundError:
            raise no_write_key(location, self.key_path) from None
        except OSError as exc:
            raise ConfigError(
                f"cannot read the write key {self.key_path} ({exc.strerror}); fix its permissions"
            ) from None
        if not trustworthy(st):
            raise ConfigError(
                f"the write key {self.key_path} belongs to another user or others can write it, so it cannot be "
                "trusted; check it, then make it yours with mode 0600 (chown, chmod 600)"
            )
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            doc = None
        return WriteKey.from_document(doc, self.repo_id, str(self.key_path))

    # -- the record ------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._mkdir(self.folder)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def snapshots(self) -> dict[str, Snapshot]:
        """The snapshots this machine wrote; a damaged record lists none (it is said once)."""
        try:
            doc = json.loads(self.record_path.read_bytes())
            if doc.get("version") != RECORD_VERSION:
                raise ValueError("unknown version")
            return {
                sid: Snapshot.from_json_bytes(json.dumps(snap).encode(), sid) for sid, snap in doc["snapshots"].items()
            }
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, CorruptObject) as exc:
            raise CorruptObject(
                f"this machine's record of the snapshots it wrote ({self.record_path}) is damaged ({exc}); move it "
                "away: backups go on, and `phx list` here shows the snapshots written from then on"
            ) from None

    def add(self, sid: str, snap: Snapshot) -> None:
        self.add_all({sid: snap})

    def add_all(self, snapshots: dict[str, Snapshot]) -> None:
        with self._locked():
            try:
                known = json.loads(self.record_path.read_bytes()).get("snapshots", {})
            except (FileNotFoundError, ValueError, AttributeError, RecursionError):
                known = {}
            for sid, snap in snapshots.items():
                known[sid] = json.loads(snap.to_json_bytes())
            doc = {"version": RECORD_VERSION, "snapshots": known}
            write_private(self.record_path, json.dumps(doc, sort_keys=True).encode())

    # -- the index of this machine's packs -------------------------------------------------

    def load_index(self) -> dict[str, list[PackEntry]]:
        """Pack -> entries; a missing or damaged file is an empty index (everything is stored again)."""
        try:
            packs, _sup = decode_index(self.index_path.read_bytes(), str(self.index_path))
        except (OSError, CorruptObject):
            return {}
        return packs

    def save_index(self, packs: dict[str, list[PackEntry]]) -> None:
        self._mkdir(self.folder)
        write_private(self.index_path, encode_index(packs))

    # -- the newest trees ------------------------------------------------------------------

    def _tree_file(self, host: str, scope: str) -> Path:
        return self.trees_dir / sha256_hex(f"{host}\0{scope}".encode())[:16]

    def load_trees(self, valid: Callable[[bytes, bytes], bool]) -> dict[bytes, bytes]:
        """Every cached tree (id -> encoded tree) that `valid` accepts (its id is its keyed hash)."""
        out: dict[bytes, bytes] = {}
        try:
            files = sorted(self.trees_dir.iterdir())
        except FileNotFoundError:
            return out
        zstandard = zstandard_module()
        for path in files:
            try:
                raw = zstandard.ZstdDecompressor().decompress(path.read_bytes(), max_output_size=MAX_TREE_CACHE)
            except (OSError, zstandard.ZstdError):
                continue  # damaged: the files below it are read again
            pos = 0
            while pos + _TREE_ENTRY.size <= len(raw):
                tree_id, length = _TREE_ENTRY.unpack_from(raw, pos)
                pos += _TREE_ENTRY.size
                data = raw[pos : pos + length]
                pos += length
                if len(data) == length and valid(tree_id, data):
                    out[tree_id] = data
        return out

    def save_trees(self, host: str, scope: str, trees: dict[bytes, bytes]) -> None:
        self._mkdir(self.trees_dir)
        parts = [_TREE_ENTRY.pack(tid, len(data)) + data for tid, data in trees.items()]
        zstandard = zstandard_module()
        write_private(self._tree_file(host, scope), zstandard.ZstdCompressor(level=3).compress(b"".join(parts)))

    @staticmethod
    def _mkdir(path: Path) -> None:
        # Each missing parent 0700 too (mkdir(parents=True) gives them the umask's mode: 0777 under
        # umask 000, where anyone could rename the key's folder away and plant a write key).
        make_dirs(path)


def no_write_key(location: str, path: Path | None) -> MissingCredentials:
    where = f" to {path}" if path is not None else ""
    return MissingCredentials(
        f"the repository at {location} is write-only, and this machine has neither its age identity nor its write "
        f"key; to read it, give --identity FILE or set PHX_IDENTITY_FILE; to back up from here, copy write.key from "
        f"the machine that backs it up{where} (mode 0600)"
    )


class WriterRepository(Repository):
    """A write-only repository as the machine that backs it up sees it: it writes as any other,
    deduplicates against the index (which its write key opens), and reads snapshots and trees from
    its own record. Anything else it would read raises IdentityRequired before a byte is read."""

    def __init__(self, backend: Backend, config: RepoConfig, write_key: WriteKey, store: WriterStore, **kwargs: Any):
        super().__init__(backend, config, None, write_key=write_key, **kwargs)
        self.store = store
        self._record: dict[str, Snapshot] | None = None
        self._trees: dict[bytes, bytes] | None = None
        self._new_trees: dict[bytes, bytes] = {}
        self.live_packs: set[str] = set()  # the packs live index objects of the repository list
        self._index_keys: dict[str, bytes] = {}  # index object -> the run key id its sealed part names

    @classmethod
    def open_writer(cls, backend: Backend, config: RepoConfig, root: Path | None, **kwargs: Any) -> WriterRepository:
        if root is None:
            raise no_write_key(backend.location, None)
        store = WriterStore(root, config.id)
        write_key = store.load_key(backend.location)
        problem = config.writer_problem(write_key)
        if problem is not None:
            raise ConfigNotAuthenticated(
                f"the repository at {backend.location} cannot be trusted: {problem}; its config was changed by "
                "someone without the key (or this is not the repository the write key belongs to), so nothing was "
                "written; restore the config object from another target"
            )
        return cls(backend, config, write_key, store, **kwargs)

    # -- what this machine wrote -----------------------------------------------------------

    def record(self) -> dict[str, Snapshot]:
        if self._record is None:
            self._record = self.store.snapshots()
        return self._record

    def list_snapshots(self) -> list[Snapshot]:
        out = list(self.record().values())
        out.sort(key=lambda s: (s.datetime.timestamp(), s.started, s.name, s.id))
        return out

    def load_snapshot(self, sid: str) -> Snapshot:
        found = self.record().get(sid)
        if found is None:
            raise IdentityRequired(self.backend.location, f"snapshot {sid[:8]}, which this machine did not write")
        return found

    def _cached_trees(self) -> dict[bytes, bytes]:
        if self._trees is None:
            self._trees = self.store.load_trees(lambda tid, data: self.ids.blob_id(BlobType.TREE, data) == tid)
        return self._trees

    def load_blob(self, kind: BlobType, blob_id: bytes) -> bytes:
        if kind == BlobType.TREE:
            data = self._new_trees.get(blob_id) or self._cached_trees().get(blob_id)
            if data is not None:
                return data
            raise IdentityRequired(self.backend.location, f"tree {blob_id.hex()[:16]}")
        raise IdentityRequired(self.backend.location, "the data of its snapshots")

    def save_tree(self, nodes: list[TreeNode]) -> tuple[bytes, int]:
        return self._save_tree_blob(encode_tree(self.listed(nodes)))

    def save_list(self, data: bytes) -> bytes:
        # Kept with the trees (and in the tree cache): the next backup reads the parent's lists.
        return self._save_tree_blob(data)[0]

    def _save_tree_blob(self, data: bytes) -> tuple[bytes, int]:
        tree_id = self.ids.blob_id(BlobType.TREE, data)
        self._new_trees[tree_id] = data
        return self.save_blob(BlobType.TREE, data, tree_id)

    def save_snapshot(self, snap: Snapshot) -> str:
        sid = super().save_snapshot(snap)
        # After the commit point: the record and the trees only spare later runs some work.
        self.store.add(sid, snap)
        self._record = None
        trees = self._reachable(snap.tree)
        if trees is not None:
            self.store.save_trees(snap.host, snap.scope, trees)
        return sid

    def _reachable(self, root: bytes) -> dict[bytes, bytes] | None:
        """The encoded trees below `root` and the extent-list blobs they name (format 6), from this
        run's and the cache's; None if one is missing."""
        out: dict[bytes, bytes] = {}
        stack = [root]
        while stack:
            tree_id = stack.pop()
            if tree_id in out:
                continue
            data = self._new_trees.get(tree_id) or self._cached_trees().get(tree_id)
            if data is None:
                return None
            out[tree_id] = data
            for n in decode_tree(data, "tree"):
                if n.subtree is not None:
                    stack.append(n.subtree)
                for list_id in n.list_blobs():
                    listed = self._new_trees.get(list_id) or self._cached_trees().get(list_id)
                    if listed is None:
                        return None
                    out[list_id] = listed
        return out

    def load_index(self) -> None:
        """The entries of this machine's packs (its local index) that a live index object of the
        repository lists: the covers name the packs, and the write key authenticates them."""
        if self._index_loaded:
            return
        covers: dict[str, tuple[list[str], list[str]]] = {}
        for info in self.backend.list("index/"):
            try:
                raw = self.backend.read(info.name)
                if sha256_hex(raw) != info.name.split("/")[-1]:
                    raise CorruptObject(f"{info.name} does not match its name (damaged)")
                covered = uncover_index(raw, self.write_key, info.name)
                if covered is None:
                    raise CorruptObject(
                        f"{info.name} was written before the repository became write-only: only the identity reads "
                        "it (`phx key add --method age --write-only` with it rewrites it)"
                    )
                # The owner's MAC of a superseding cover is not checked here (it needs the identity's
                # secrets): honouring a forged claim only costs this machine uploads.
                covers[info.name] = (covered.packs, covered.superseded)
                self._index_keys[info.name] = covered.sealed[:RUN_KEY_ID_LENGTH]
            except (CorruptObject, ObjectNotFound) as exc:
                self.problems.index[info.name] = str(exc)
        self.index_objects = sorted(covers) + sorted(self.problems.index)
        superseded = {f"index/{s}" for _packs, sup in covers.values() for s in sup}
        live: set[str] = set()
        for name, (packs, _sup) in covers.items():
            if name not in superseded:
                self.relied_on.add(name)
                live.update(packs)
        self.live_packs = live
        for pack_id, entries in self.store.load_index().items():
            if pack_id in live:
                self.index.add_pack(pack_id, entries)
        self._index_loaded = True

    def read_index_object(self, name: str) -> tuple[dict[str, list[PackEntry]], list[str]]:
        """What replication needs of an index object: its packs (with their entries when this
        machine wrote them, else none) and what it supersedes, from its cover."""
        raw = self.backend.read(name)
        if sha256_hex(raw) != name.split("/")[-1]:
            raise CorruptObject(f"{name} does not match its name (damaged)")
        covered = uncover_index(raw, self.write_key, name)
        if covered is None:
            raise IdentityRequired(self.backend.location, f"{name}, written before the repository became write-only")
        mine = self.store.load_index()
        return {pack: mine.get(pack, []) for pack in covered.packs}, covered.superseded

    def drop_missing_packs(self) -> list[str]:
        """Forget the blobs of packs the store lost; no index object is written (this machine
        knows only its own packs' entries)."""
        listing = {info.name: info.size for info in self.backend.list("data/")}
        missing = self.lost_packs(listing)
        self.index.remove_packs(missing)
        return sorted(pack_name(p) for p in missing)

    def flush(self) -> None:
        super().flush()
        self.store.save_index(self.index.by_pack())

    def delete_snapshot(self, sid: str) -> None:
        raise IdentityRequired(self.backend.location, "every snapshot (forget decides on all of them)")

    def add_unindexed_packs(self) -> dict[str, str]:
        return {}  # their headers are sealed under run keys: `phx repair index` runs with the identity

    def upgrade(self) -> bool:
        return False

    # -- verify without the identity ---------------------------------------------------------

    def check_structure(self) -> StructureReport:
        """What can be checked without reading a sealed byte: the cover of every index object is
        the write key's, every pack a live one lists is there, every index object, pack header and
        snapshot this machine wrote is sealed under a run key the repository holds and the write
        key authenticates, every snapshot it wrote is there whole (SHA-256 of its name), and the
        trees of its newest snapshots name only blobs the index lists."""
        report = StructureReport()
        self.load_index()
        for name, message in self.problems.index.items():
            report.error(name, None, message)
        run_keys: dict[bytes, str | None] = {}
        for name, key_id in sorted(self._index_keys.items()):
            self._check_sealed(name, key_id, run_keys, report)
        listing = {info.name: info.size for info in self.backend.list("data/")}
        for pack_id in sorted(self.live_packs):
            name = pack_name(pack_id)
            if name not in listing:
                report.error(name, None, "pack is missing (the index lists it)")
                continue
            self._check_sealed(name, self._header_nonce(name, listing[name]), run_keys, report)
        for blob, loc in self.index.blobs():
            size = listing.get(pack_name(loc.pack_id))
            if size is not None and loc.offset + loc.stored > size:
                report.error(
                    pack_name(loc.pack_id), None, f"pack is shorter than the index says (blob {blob.hex()[:16]})"
                )
        record = self.record()
        present = {info.name for info in self.backend.list("snapshots/")}
        for sid, snap in record.items():
            name = f"snapshots/{sid}"
            if name not in present:
                report.error(name, sid, "the snapshot this machine wrote is missing")
                continue
            raw = self.backend.read(name)
            if sha256_hex(raw) != sid:
                report.error(name, sid, "does not match its name (damaged or replaced)")
                continue
            self._check_sealed(name, raw[:RUN_KEY_ID_LENGTH], run_keys, report)
            self._check_trees(snap, report)
        others = len(present - {f"snapshots/{sid}" for sid in record})
        if others:
            report.notices.append(
                f"{others} snapshot(s) were written by other machines or before this one became write-only: only "
                "the identity reads them (`phx verify` on a machine with it)"
            )
        report.checked.update(
            index=len(self._index_keys),
            packs=len(self.live_packs),
            snapshots=len(record),
            runKeys=len(run_keys),
            blobs=len(self.index),
        )
        return report

    def _header_nonce(self, name: str, size: int) -> bytes | None:
        try:
            (hlen,) = struct.unpack("<I", self.backend.read_range(name, size - 4, 4))
            if hlen > min(MAX_HEADER, size - 4) or hlen < RUN_KEY_ID_LENGTH:
                return None
            return self.backend.read_range(name, size - 4 - hlen, RUN_KEY_ID_LENGTH)
        except (ObjectNotFound, struct.error):
            return None

    def _check_sealed(
        self, name: str, key_id: bytes | None, run_keys: dict[bytes, str | None], report: StructureReport
    ) -> None:
        if key_id is None:
            report.error(name, None, "has no readable header")
            return
        if key_id not in run_keys:
            problem: str | None = None
            try:
                RunKey.authenticated(key_id, self.backend.read(run_key_name(key_id)), self.write_key)
            except ObjectNotFound:
                problem = f"is sealed under {run_key_name(key_id)}, which is missing (or it predates write-only)"
            except PhoenixError as exc:
                problem = str(exc)
            run_keys[key_id] = problem
        if run_keys[key_id] is not None:
            report.error(name, None, f"{run_keys[key_id]}")

    def _check_trees(self, snap: Snapshot, report: StructureReport) -> None:
        trees = self._cached_trees()
        if snap.tree not in trees:
            return
        stack = [snap.tree]
        seen: set[bytes] = set()
        while stack:
            tree_id = stack.pop()
            if tree_id in seen:
                continue
            seen.add(tree_id)
            if not self.index.has(tree_id):
                report.error(f"tree {tree_id.hex()[:16]}", snap.id, "the tree is in no index")
            data = trees.get(tree_id)
            if data is None:
                continue
            for node in decode_tree(data, "tree", trees.__getitem__):
                if node.subtree is not None:
                    stack.append(node.subtree)
                for list_id in node.list_blobs():
                    if not self.index.has(list_id):
                        report.error(f"extent list {list_id.hex()[:16]}", snap.id, f"{node.name}: it is in no index")
                if not all(b in trees for b in node.list_blobs()):
                    continue  # not cached here: its extents are not known to this machine
                try:
                    for blob in node.blobs():
                        if not self.index.has(blob):
                            report.error(f"blob {blob.hex()[:16]}", snap.id, f"{node.name}: its data is in no index")
                except CorruptObject as exc:
                    report.error(f"tree {tree_id.hex()[:16]}", snap.id, str(exc))
        report.checked["trees"] = report.checked.get("trees", 0) + len(seen)


@dataclass
class StructureReport:
    checked: dict[str, int] = field(default_factory=dict)
    errors: list[tuple[str, str | None, str]] = field(default_factory=list)  # (object, snapshot, message)
    notices: list[str] = field(default_factory=list)

    def error(self, obj: str, snapshot: str | None, message: str) -> None:
        self.errors.append((obj, snapshot, message))


# -- turning a repository write-only -------------------------------------------------------------


@dataclass
class Conversion:
    """What `convert` did."""

    slot: keyslots.KeySlot  # the age slot to every recipient
    recipients: tuple[str, ...]
    removed: list[str]  # key slots removed: only the recipients' identities open the repository now
    index_rewritten: int  # index objects replaced by parts under their cover (`write_index_parts`)
    snapshots: int  # snapshots in this machine's record (0 when it was write-only already)
    key_path: Path | None  # this machine's new write key (None when it was write-only already)
    repository: Repository  # the repository as it is now (write-only, with the master secrets)


def convert(repo: Repository, recipients: tuple[str, ...], root: Path) -> Conversion:
    """Make `repo` (opened with its master secrets, under an exclusive lock) write-only for
    `recipients`, without rewriting a data pack: the packs, trees and snapshots written so far stay
    sealed under the master key, which the recipients' identities open through a new age slot.

    In this order, each step re-runnable: the age slot; the config (format 3: the commit point);
    the index in parts under their cover (`write_index_parts`) replacing every other object (the
    machine that backs up must know which packs the index lists); the other key slots go; then
    this machine's write key, the index of every pack, the record of every snapshot and the newest
    trees of this host, so its next backup deduplicates against everything and reads only what
    changed.

    On a repository that is write-only already, it finishes an interrupted conversion (for the
    same recipients) and this machine keeps no write key. Its recipients never change: each run
    key is wrapped to them, and a recipient added later could not read what earlier runs stored,
    which later snapshots reuse."""
    master = repo.secrets
    already = repo.config.write_only
    if already is not None:
        added = [r for r in recipients if r not in already]
        if added:
            raise UsageError(
                f"the write-only repository at {repo.backend.location} already has its recipients, and {added[0]} is "
                "not one of them: every run key is wrapped to them, so an identity added now could not read the "
                "data earlier runs stored (which later snapshots reuse); keep the current identity, or start a new "
                "write-only repository (`phx init --write-only`) for other recipients"
            )
        recipients = already
    slot = keyslots.wrap_age(master, recipients)
    repo.add_key_slot(slot)
    config = replace(repo.config, write_only=recipients).signed(master)
    repo.locks.confirm_held()  # the commit point
    repo.backend.write("config", config.to_bytes())
    converted = Repository(repo.backend, config, master, notice=repo.notice)
    converted.opened_with = slot.id
    repo.load_index()
    old = [name for name in repo.index_objects if name not in repo.problems.index]
    packs = repo.index.by_pack()
    written: set[str] = set()
    if old or packs:
        # `converted` holds no lock of its own: the one held is `repo`'s, confirmed before each step.
        repo.locks.confirm_held(MORE_COMMITTED)
        written = set(converted.write_index_parts(packs, [name.split("/")[-1] for name in old]))
    for name in old:
        if name not in written:  # a part of an interrupted conversion written again, byte for byte
            repo.confirmer.step(DELETED)
            repo.backend.delete(name)
    removed = []
    for other in Repository.read_key_slots(repo.backend):
        if other.id != slot.id:
            repo.confirmer.step(DELETED)
            repo.backend.delete(f"keys/{other.id}")
            removed.append(other.id)
    if already is not None:
        return Conversion(slot, recipients, removed, len(old), 0, None, converted)
    store = WriterStore(root, config.id)
    store.save_key(WriteKey.of(master))
    store.save_index(packs)
    snapshots = repo.list_snapshots()
    store.add_all({s.id: s for s in snapshots})
    newest: dict[tuple[str, str], Snapshot] = {}
    for snap in snapshots:  # oldest first
        if snap.host == socket.gethostname():
            newest[(snap.host, snap.scope)] = snap
    for (host, scope), snap in newest.items():
        with contextlib.suppress(PhoenixError):  # an unreadable tree only means a full read later
            trees = Trees(repo)
            trees.load(snap.tree)
            lists = {b for nodes in trees.nodes.values() for n in nodes for b in n.list_blobs()}
            store.save_trees(host, scope, {tid: repo.load_blob(BlobType.TREE, tid) for tid in [*trees.nodes, *lists]})
    return Conversion(slot, recipients, removed, len(old), len(snapshots), store.key_path, converted)
