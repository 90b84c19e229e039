"""Repairing a damaged repository, naming what was lost (the engines of `phx repair`, ops/repair.py).

- `repair index` rebuilds the index from the packs' own headers: one new index object lists
  every pack the store holds whose header can be read, and supersedes every index object present.
  Index entries of packs that are gone disappear, so later backups store that data again. With
  `--read-data`, every pack is read and every copy of every blob checked against its id: a copy
  that does not prove (a wrong copy: it opens under the blob's id but holds other bytes; or a
  damaged one) is left out of the new index while another copy proves, and its pack is replaced:
  its other blobs copied, still sealed, into new packs (as prune repacks), then it is deleted.
  When no copy proves, every copy (and its pack) is kept and the blob is named as damaged.
  `--dry-run` says what it would do and writes nothing.
- `repair snapshots` names the snapshots that refer to data the repository no longer holds (a
  pack missing, shorter than the index says, or with `--read-data` a blob that fails its checks),
  with the paths affected. On request it forgets them (`--forget`), or writes a repaired copy of
  each, tagged `repaired`, without the files whose data is lost and with unreadable folders
  empty (`--rewrite`); both together forget each original once its copy is written, like restic's
  `repair snapshots --forget`. Without `--forget` the originals stay: copying the lost packs back
  from another target (`repair objects`) makes them whole again.
- `repair objects --from NAME` copies back from another target of the same repository what the
  first target lost or holds damaged: the config and key slots when they cannot be read,
  snapshot and index objects that fail their checks, and every pack holding data a snapshot
  needs that is missing here, shorter than the index says, or (with `--read-data`) does not
  match its name. Every object copied is checked against its name first (its SHA-256, or for a
  pack its BLAKE3: `names_content`). Then the index is rebuilt from the packs.

Every change is made under an exclusive lock, in an order that leaves a valid repository at each
step: copies and new objects first, then the new index (superseding the old ones), deletions last.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from phoenix_backup.errors import (
    CorruptObject,
    ExitStatus,
    ObjectNotFound,
    RepositoryError,
    UnsupportedFormat,
)
from phoenix_backup.repo import keys as keyslots
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.locks import DELETED, MORE_COMMITTED
from phoenix_backup.repo.pack import PackEntry, PackIds, PackOrigin, names_content, pack_name
from phoenix_backup.repo.repository import RepoConfig, Repository
from phoenix_backup.repo.snapshot import Snapshot, timestamp_name
from phoenix_backup.repo.tree import ListedExtents, Node
from phoenix_backup.repo.walker import used_blobs
from phoenix_backup.storage.base import Backend

REPAIRED_TAG = "repaired"

# ----------------------------------------------------------------------------------------------
# repair index
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeftOutCopy:
    """A copy of a blob that does not prove, left out of the index because `proving` holds one that does."""

    pack: str
    blob: str  # hex, as messages show it
    why: str
    proving: str  # the pack of a copy that proves

    def to_json(self) -> dict[str, str]:
        return {"pack": self.pack, "blob": self.blob, "why": self.why, "proving": self.proving}


@dataclass
class IndexRepair:
    packs: int = 0  # packs the new index lists
    blobs: int = 0
    replaced: int = 0  # index objects superseded and deleted (with dry_run: that would be)
    dropped: int = 0  # blobs the old index listed that no readable pack holds
    unreadable: dict[str, str] = field(default_factory=dict)  # pack -> why its header cannot be read
    kept: dict[str, int] = field(default_factory=dict)  # unreadable pack -> blobs kept from the old index
    read_data: bool = False
    dry_run: bool = False
    left_out: list[LeftOutCopy] = field(default_factory=list)  # copies that do not prove (--read-data)
    damaged: dict[str, str] = field(default_factory=dict)  # blob (hex) -> why no copy of it proves; all kept
    removed: list[str] = field(default_factory=list)  # packs of copies left out, their other blobs copied first
    kept_packs: list[str] = field(default_factory=list)  # packs of copies left out that also hold unproven copies

    @property
    def exit_status(self) -> ExitStatus:
        # A blob no copy of which proves is a finding, as `verify` says it: nothing mends it here.
        return ExitStatus.FAILURE if self.damaged else ExitStatus.OK

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.exit_status == ExitStatus.OK,
            "dryRun": self.dry_run,
            "readData": self.read_data,
            "packs": self.packs,
            "blobs": self.blobs,
            "indexesReplaced": self.replaced,
            "blobsDropped": self.dropped,
            "unreadablePacks": self.unreadable,
            "keptFromOldIndex": self.kept,
            "copiesLeftOut": [c.to_json() for c in self.left_out],
            "damagedBlobs": self.damaged,
            "packsRemoved": self.removed,
            "packsKept": self.kept_packs,
        }


def rebuild_index(repo: Repository, *, read_data: bool = False, dry_run: bool = False) -> IndexRepair:
    """Replace every index object by one built from the packs' headers (the caller holds an
    exclusive lock; a shared one is enough with `dry_run`, which writes and deletes nothing). A
    pack whose header cannot be read is named; the entries the old index objects list in it
    (within its length) are kept, since its blobs may well be intact (each is checked when read),
    and are its only map. A pack neither lists is left out. With `read_data`, the copies that do
    not prove of a blob another copy of which proves are left out (`_prove_copies`), and their
    packs replaced by new ones holding their other blobs, then deleted."""
    report = IndexRepair(read_data=read_data, dry_run=dry_run)
    old = repo.read_index_objects()
    present = sorted(info.name for info in repo.backend.list("index/"))  # damaged ones too
    packs: dict[str, list[PackEntry]] = {}
    for info in sorted(repo.backend.list("data/"), key=lambda i: i.name):
        pack_id = info.name.split("/")[-1]
        try:
            packs[pack_id] = repo.read_pack_header(pack_id)
        except (CorruptObject, ObjectNotFound) as exc:
            report.unreadable[info.name] = str(exc)
            known = _listed_in(old, pack_id, info.size)
            if known:
                packs[pack_id] = known
                report.kept[info.name] = len(known)
    spoiled = _prove_copies(repo, packs, report) if read_data else []
    if dry_run:
        _count(report, old, packs)
        report.replaced = len(present)
        return report
    # A pack of a copy left out goes, its other blobs (each proven) copied into new packs first,
    # still sealed, as prune repacks: the wrong copy's bytes leave the store.
    new_packs = repo.repack(_sealed_rest(repo, packs, spoiled), PackOrigin.REPAIR) if spoiled else {}
    for pack_id in spoiled:
        del packs[pack_id]
    packs.update(new_packs)
    _count(report, old, packs)
    # The new index first (superseding every object present, damaged ones included: their names
    # are their ids), then the old objects: at every step one complete index is live. In parts
    # as a merge writes it (repo/repository.py `write_index_parts`), none of them deleted.
    new = set(repo.write_index_parts(packs, [name.split("/")[-1] for name in present]))
    for pack_id in spoiled:  # listed by no live index now
        if pack_id not in new_packs:  # never a pack a copy has just been written under
            repo.confirmer.step(DELETED)
            repo.backend.delete(pack_name(pack_id))
    for name in present:
        if name not in new:
            repo.confirmer.step(DELETED)
            repo.backend.delete(name)
    report.replaced = len([n for n in present if n not in new])
    repo.reload_index()
    return report


def _count(
    report: IndexRepair,
    old: dict[str, tuple[dict[str, list[PackEntry]], list[str]]],
    packs: dict[str, list[PackEntry]],
) -> None:
    held = {e.id for entries in packs.values() for e in entries}
    listed = {e.id for listing, _sup in old.values() for entries in listing.values() for e in entries}
    report.packs, report.blobs, report.dropped = len(packs), len(held), len(listed - held)


def _sealed_rest(
    repo: Repository, packs: dict[str, list[PackEntry]], spoiled: list[str]
) -> Iterator[tuple[PackEntry, bytes]]:
    """The blobs `packs` still lists in each pack of `spoiled`, still sealed (each proved by
    `_prove_copies`, read again here one pack at a time)."""
    for pack_id in spoiled:
        if not packs[pack_id]:
            continue  # it held only copies left out: nothing to read
        data = repo.backend.read(pack_name(pack_id))
        for e in sorted(packs[pack_id], key=lambda e: e.offset):
            sealed = data[e.offset : e.offset + e.stored]
            # Proven again as it is copied: bytes that changed since fail the repair before anything is deleted.
            repo.open_blob(
                e.type, e.id, e.compression, sealed, e.raw, f"blob {e.id.hex()[:16]} in {pack_name(pack_id)}"
            )
            yield e, sealed


def _prove_copies(repo: Repository, packs: dict[str, list[PackEntry]], report: IndexRepair) -> list[str]:
    """Read every pack of `packs` once and check each copy of each blob against its id; leave out
    of `packs` the copies that do not prove (they open under the blob's id but hold other bytes,
    or do not open) of a blob another copy of which proves: every reader would pass over them for
    it (`Repository.load_proving`). When none proves, every copy stays and the blob is named in
    `report.damaged`: the only copies there are are never dropped. Returns the packs of copies
    left out whose other copies all prove (`rebuild_index` moves those and deletes the pack);
    one that also holds a copy that does not prove and is kept stays whole (`report.kept_packs`),
    so that what is there of that blob stays where `repair objects` and `verify` find it."""
    repo.backend.prepare_read([pack_name(p) for p in packs])
    proving: dict[tuple[BlobType, bytes], str] = {}
    failed: dict[tuple[BlobType, bytes], list[tuple[str, PackEntry, str]]] = {}
    for pack_id, entries in packs.items():
        name = pack_name(pack_id)
        try:
            data = memoryview(repo.backend.read(name))
        except ObjectNotFound as exc:
            for e in entries:
                failed.setdefault((e.type, e.id), []).append((pack_id, e, str(exc)))
            continue
        for e in entries:
            what = f"blob {e.id.hex()[:16]} in {name}"
            try:
                sealed = data[e.offset : e.offset + e.stored]
                if len(sealed) != e.stored:
                    raise CorruptObject(f"{what} lies past the pack's end (cut short)")
                repo.open_blob(e.type, e.id, e.compression, sealed, e.raw, what, check_id=True)
            except CorruptObject as exc:
                failed.setdefault((e.type, e.id), []).append((pack_id, e, str(exc)))
            else:
                proving.setdefault((e.type, e.id), name)
    left_out: set[tuple[str, PackEntry]] = set()
    for (_kind, blob), copies in failed.items():
        good = proving.get((_kind, blob))
        if good is None:
            report.damaged[blob.hex()[:16]] = "; ".join(f"{pack_name(p)}: {why}" for p, _e, why in copies)
            continue
        for pack_id, e, why in copies:
            left_out.add((pack_id, e))
            report.left_out.append(LeftOutCopy(pack_name(pack_id), blob.hex()[:16], why, good))
    touched = sorted({p for p, _e in left_out})
    for pack_id in touched:
        packs[pack_id] = [e for e in packs[pack_id] if (pack_id, e) not in left_out]
    # A pack still holding a copy that does not prove (kept: no other copy of its blob proves).
    kept = {p for copies in failed.values() for p, e, _why in copies if (p, e) not in left_out}
    report.kept_packs = [pack_name(p) for p in touched if p in kept]
    report.removed = [pack_name(p) for p in touched if p not in kept]
    return [p for p in touched if p not in kept]


def _listed_in(
    objects: dict[str, tuple[dict[str, list[PackEntry]], list[str]]], pack_id: str, size: int
) -> list[PackEntry]:
    """The entries any index object (superseded ones too) lists in `pack_id` that lie within
    `size` bytes, one per blob."""
    out: dict[bytes, PackEntry] = {}
    for listing, _sup in objects.values():
        for e in listing.get(pack_id, ()):
            if e.offset + e.stored <= size:
                out.setdefault(e.id, e)
    return list(out.values())


# ----------------------------------------------------------------------------------------------
# repair snapshots
# ----------------------------------------------------------------------------------------------


@dataclass
class DamagedSnapshot:
    id: str
    name: str
    time: str
    lost: list[str] = field(default_factory=list)  # logical paths; a folder whose listing is lost ends in /
    unreadable: str | None = None  # the snapshot object itself cannot be read
    repaired_as: str | None = None  # the id of the repaired copy (--rewrite)
    forgotten: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "time": self.time,
            "lost": self.lost,
            "unreadable": self.unreadable,
            "repairedAs": self.repaired_as,
            "forgotten": self.forgotten,
        }


@dataclass
class SnapshotRepair:
    checked: int = 0
    damaged: list[DamagedSnapshot] = field(default_factory=list)
    rewrite: bool = False
    forget: bool = False
    read_data: bool = False
    unindexed: int = 0  # packs no index lists whose headers were read: their data is not lost
    index_rebuilt: bool = False  # --rewrite rebuilt the index from the packs first

    @property
    def exit_status(self) -> ExitStatus:
        # Naming damage without acting on it is a finding, like `verify`'s: without a flag, or
        # with --rewrite for a snapshot of which nothing can be read (no copy can be written).
        left = [d for d in self.damaged if not (d.repaired_as or d.forgotten)]
        return ExitStatus.FAILURE if left else ExitStatus.OK

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.exit_status == ExitStatus.OK,
            "checked": self.checked,
            "rewrite": self.rewrite,
            "forget": self.forget,
            "readData": self.read_data,
            "unindexedPacks": self.unindexed,
            "indexRebuilt": self.index_rebuilt,
            "damaged": [d.to_json() for d in self.damaged],
        }


class _Present:
    """Whether a blob can still be read: indexed, a copy of it in a pack the store holds and long
    enough, and with `read_data` a copy of it opening and matching its id (the first listed, or
    another that every reader takes when the first holds other bytes: `Repository.load_proving`).
    One listing of `data/`; results cached."""

    def __init__(self, repo: Repository, read_data: bool) -> None:
        self.repo = repo
        self.read_data = read_data
        self.sizes = {info.name: info.size for info in repo.backend.list("data/")}
        self.known: dict[bytes, bool] = {}

    def __call__(self, blob_id: bytes) -> bool:
        ok = self.known.get(blob_id)
        if ok is None:
            ok = self.known[blob_id] = self._check(blob_id)
        return ok

    def _check(self, blob_id: bytes) -> bool:
        first = self.repo.index.get(blob_id)
        if first is None:
            return False
        # Any location of it, not only the first listed: every reader passes over a copy whose
        # pack is gone or cut short (`Repository.load_blob`) and prune keeps a copy in the store.
        stored = [
            loc
            for loc in self.repo.index.locations(blob_id)
            if loc.type == first.type
            and (size := self.sizes.get(pack_name(loc.pack_id))) is not None
            and loc.offset + loc.stored <= size
        ]
        if not stored:
            return False
        if not self.read_data:
            return True
        try:  # any copy that proves: the readers take it when the first holds other bytes
            self.repo.load_proving(first.type, blob_id)
        except (CorruptObject, ObjectNotFound):
            return False
        return True


@dataclass
class _Scanned:
    tree: bytes | None  # the tree with lost data left out (the same id when nothing is lost); None: unreadable
    lost: list[str]  # paths below the tree
    lost_files: int = 0
    lost_bytes: int = 0


class _Scanner:
    """Walks a snapshot's trees, finding what is lost; with `save`, writes the trees without it."""

    CHANGED = b""  # stands for "another tree" when nothing is written

    def __init__(self, repo: Repository, present: _Present, save: Callable[[list[Node]], bytes] | None) -> None:
        self.repo = repo
        self.present = present
        self.save = save
        self.memo: dict[bytes, _Scanned] = {}

    def scan(self, tree_id: bytes) -> _Scanned:
        done = self.memo.get(tree_id)
        if done is None:
            done = self.memo[tree_id] = self._scan(tree_id)
        return done

    def _scan(self, tree_id: bytes) -> _Scanned:
        try:
            if not self.present(tree_id):
                raise CorruptObject("tree is lost")
            nodes = self.repo.load_tree(tree_id)
        except (CorruptObject, ObjectNotFound):
            return _Scanned(None, [])
        out = _Scanned(tree_id, [])
        kept: list[Node] = []
        for node in nodes:
            if node.type == "dir" and node.subtree is not None:
                sub = self.scan(node.subtree)
                out.lost += [f"{node.name}/{p}" for p in sub.lost]
                out.lost_files += sub.lost_files
                out.lost_bytes += sub.lost_bytes
                subtree = sub.tree
                if subtree is None:
                    out.lost.append(f"{node.name}/")  # the folder's listing is lost: it stays, empty
                    subtree = self._write([])
                if subtree != node.subtree:
                    node = dataclasses.replace(node, subtree=subtree)
                kept.append(node)
            elif not node.blobs_present(self.present):
                out.lost.append(node.name)
                out.lost_files += 1
                out.lost_bytes += node.size
            else:
                kept.append(node)
        if out.lost:
            out.tree = self._write(kept)
        return out

    def _write(self, nodes: list[Node]) -> bytes:
        return self.save(nodes) if self.save is not None else self.CHANGED


def scan_snapshots(repo: Repository, *, rewrite: bool, forget: bool, read_data: bool) -> SnapshotRepair:
    report = SnapshotRepair(rewrite=rewrite, forget=forget, read_data=read_data)
    repo.load_index()
    # Packs no index lists (index objects lost) still hold their data: read their headers, so
    # that what they hold is not taken for lost (and forgotten).
    repo.add_unindexed_packs()
    report.unindexed = len(repo.unindexed_packs)
    present = _Present(repo, read_data)
    if rewrite and (repo.unindexed_packs or repo.lost_packs(present.sizes)):
        # The copies' new trees must not be deduplicated against trees in lost packs, and what
        # they reuse from unindexed packs must be indexed: the index is first rebuilt from the
        # packs, as `phx repair index` does.
        rebuild_index(repo)
        report.index_rebuilt = True
        present = _Present(repo, read_data)
    snapshots = repo.list_snapshots()
    report.checked = len(snapshots) + len(repo.problems.snapshots)
    for name, problem in sorted(repo.problems.snapshots.items()):
        sid = name.split("/")[-1]
        report.damaged.append(DamagedSnapshot(sid, "?", "?", ["/"], unreadable=problem))
    repo.write_packs_as(PackOrigin.REPAIR)
    scanner = _Scanner(repo, present, (lambda nodes: repo.save_tree(nodes)[0]) if rewrite else None)
    taken = {s.name for s in snapshots}
    copies: list[tuple[DamagedSnapshot, Snapshot]] = []
    for snap in snapshots:
        scanned = scanner.scan(snap.tree)
        if scanned.tree is None:
            damaged = DamagedSnapshot(snap.id, snap.name, snap.time, ["/"])
        elif scanned.lost:
            damaged = DamagedSnapshot(snap.id, snap.name, snap.time, sorted(scanned.lost))
        else:
            continue
        report.damaged.append(damaged)
        if rewrite and scanned.tree is not None:
            if forget:
                taken.discard(snap.name)  # the original goes: its copy may keep its name
            copy = _repaired_copy(snap, scanned, timestamp_name(snap.datetime, taken))
            taken.add(copy.name)
            copies.append((damaged, copy))
    if rewrite and copies:
        # Trees first, then each copy; an original is forgotten only after its copy is durable.
        repo.flush()
        for damaged, copy in copies:
            damaged.repaired_as = repo.save_snapshot(copy)
    if forget:
        for damaged in report.damaged:
            repo.delete_snapshot(damaged.id)
            damaged.forgotten = True
    return report


def _repaired_copy(snap: Snapshot, scanned: _Scanned, name: str) -> Snapshot:
    assert scanned.tree is not None
    lost = sorted(scanned.lost)
    note = "data lost; left out by `phx repair snapshots`"
    return dataclasses.replace(
        snap,
        id="",
        name=name,
        tree=scanned.tree,
        tags=tuple(sorted({*snap.tags, REPAIRED_TAG})),
        incomplete=(*snap.incomplete, *({"path": p.rstrip("/"), "error": note} for p in lost)),
        databases=tuple(d for d in snap.databases if not any(_within(d.path, p) for p in lost)),
        stats=dataclasses.replace(
            snap.stats,
            files=max(0, snap.stats.files - scanned.lost_files),
            size=max(0, snap.stats.size - scanned.lost_bytes),
        ),
    )


def _within(path: str, lost: str) -> bool:
    """Whether `path` (a database's logical path) is, or lies in, the lost path `lost`, or holds it
    (a PostgreSQL or Redis database is a folder of streams)."""
    bare = lost.rstrip("/")
    return path == bare or path.startswith(bare + "/") or bare.startswith(path + "/")


# ----------------------------------------------------------------------------------------------
# repair objects --from NAME
# ----------------------------------------------------------------------------------------------


@dataclass
class ObjectsRepair:
    source: str
    target: str
    copied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # damaged packs whose used blobs were copied in other packs
    unrecoverable: int = 0  # blobs snapshots need that neither target holds intact
    index: IndexRepair | None = None
    notices: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.FAILURE if self.unrecoverable else ExitStatus.OK

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.exit_status == ExitStatus.OK,
            "source": self.source,
            "target": self.target,
            "copied": self.copied,
            "deleted": self.deleted,
            "unrecoverable": self.unrecoverable,
            "index": self.index.to_json() if self.index else None,
            "notices": self.notices,
        }


def _copy_checked(
    src: Backend, dest: Backend, name: str, *, cold: bool = False, pack_ids: PackIds = PackIds.BLAKE3
) -> bool:
    """Copy one content-addressed object when the source's copy matches its name (a pack's hash
    tried first as `pack_ids` says)."""
    try:
        data = src.read(name)
    except ObjectNotFound:
        return False
    if not names_content(name, data, pack_ids):
        return False
    dest.write(name, data, cold=cold)
    return True


def repair_config_and_keys(src: Backend, dest: Backend, report: ObjectsRepair, pinned: str | None) -> bytes | None:
    """Config and key slots are not named by their hash: a copy replaces them only when ours
    cannot be read and the source's can, and only from the same repository: the id of our config,
    or when it cannot be read, the id this user pinned here (`pinned`). Otherwise a target holding
    another repository would leave its config here, which no later repair replaces. Returns the
    bytes of a damaged config that was replaced (None: there was none)."""
    theirs_config = src.read("config")
    source_id = RepoConfig.from_bytes(theirs_config, src.location).id  # raises if the source's is unreadable
    previous: bytes | None = None
    try:
        previous = dest.read("config")
        ours_id: str | None = RepoConfig.from_bytes(previous, dest.location).id
        lost = False
    except (ObjectNotFound, CorruptObject):
        ours_id, lost = pinned, True
    if ours_id is not None and ours_id != source_id:
        raise RepositoryError(
            f"target {report.source} holds another repository (id {source_id[:8]}) than {dest.location} "
            f"(id {ours_id[:8]}); it cannot repair it; nothing was copied"
        )
    if lost:
        dest.write("config", theirs_config)
        report.copied.append("config")
    ours = {info.name for info in dest.list("keys/")}
    readable = 0
    damaged = []
    for name in sorted(ours):
        try:
            keyslots.KeySlot.from_json(dest.read(name))
            readable += 1
        except UnsupportedFormat:
            readable += 1
        except (CorruptObject, ObjectNotFound):
            damaged.append(name)
    theirs = {info.name for info in src.list("keys/")}
    # A slot we lack may have been removed on purpose (`phx key remove`): copied back only when
    # no slot here can be read at all.
    wanted = damaged + (sorted(theirs - ours) if readable == 0 else [])
    for name in wanted:
        if name not in theirs:
            continue
        data = src.read(name)
        try:
            keyslots.KeySlot.from_json(data)
        except (CorruptObject, UnsupportedFormat):
            continue
        dest.write(name, data)
        report.copied.append(name)
    return previous if lost else None


def repair_data(repo: Repository, other: Repository, report: ObjectsRepair, *, read_data: bool) -> None:
    repo.load_index()
    snapshots = repo.list_snapshots()
    for name in sorted(repo.problems.snapshots):
        repo.confirmer.step(MORE_COMMITTED)  # a copy into this target commits it
        if _copy_checked(other.backend, repo.backend, name):
            report.copied.append(name)
    damaged_index = sorted(repo.problems.index)
    for name in damaged_index:
        repo.confirmer.step(MORE_COMMITTED)  # a copy into this target commits it
        if _copy_checked(other.backend, repo.backend, name):
            report.copied.append(name)
    if any(n.startswith(("snapshots/", "index/")) for n in report.copied):
        repo.problems.snapshots.clear()
        repo.reload_index()
        snapshots = repo.list_snapshots()
    other.load_index()
    # A pack the other target holds but its index does not list (its index objects lost, or
    # superseded by an index copied from here that no longer lists it) is read from its header.
    other.add_unindexed_packs()
    theirs = {s.id for s in other.list_snapshots()}
    lacking = sorted(theirs - {s.id for s in snapshots} - {n.split("/")[-1] for n in repo.problems.snapshots})
    if lacking:
        report.notices.append(
            f"target {report.source} holds {len(lacking)} snapshot(s) this target lacks (forgotten here, or "
            f"deleted), e.g. {lacking[0][:8]}; they are not copied back: read them with `--target {report.source}`"
        )

    sizes = {info.name: info.size for info in repo.backend.list("data/")}
    damaged_packs: set[str] = set()
    if read_data:
        for name in sorted(sizes):
            try:
                if not names_content(name, repo.backend.read(name), repo.config.pack_ids):
                    damaged_packs.add(name)
            except ObjectNotFound:
                continue

    def good_here(blob_id: bytes) -> bool:
        loc = repo.index.get(blob_id)
        if loc is None:
            return False
        name = pack_name(loc.pack_id)
        size = sizes.get(name)
        return size is not None and loc.offset + loc.stored <= size and name not in damaged_packs

    needed = _needed_blobs(repo, other, snapshots)
    wanted: dict[str, bool] = {}  # pack of the source -> holds data blobs (may go cold)
    for blob_id in sorted(needed):
        if good_here(blob_id):
            continue
        loc = other.index.get(blob_id)
        if loc is None:
            report.unrecoverable += 1
            continue
        wanted[pack_name(loc.pack_id)] = loc.type == BlobType.DATA
    copied_blobs: set[bytes] = set()
    for name, cold in sorted(wanted.items()):
        repo.confirmer.step(MORE_COMMITTED)  # a copy into this target commits it
        if _copy_checked(other.backend, repo.backend, name, cold=cold, pack_ids=repo.config.pack_ids):
            report.copied.append(name)
            copied_blobs.update(e.id for e in other.read_pack_header(name.split("/")[-1]))
        else:
            report.notices.append(f"{name} on target {report.source} is missing or damaged too")
            report.unrecoverable += sum(
                1 for b in needed if (loc := other.index.get(b)) is not None and pack_name(loc.pack_id) == name
            )
    # A damaged pack that was not replaced by its own good copy goes once every blob a snapshot
    # needs from it has a good copy elsewhere (its other blobs are garbage).
    for name in sorted(damaged_packs - set(wanted)):
        pack_id = name.split("/")[-1]
        needs = [b for b in needed if (loc := repo.index.get(b)) is not None and loc.pack_id == pack_id]
        if all(b in copied_blobs for b in needs):
            repo.confirmer.step(DELETED)
            repo.backend.delete(name)
            report.deleted.append(name)
    if wanted or report.deleted or damaged_index:
        report.index = rebuild_index(repo)


def _needed_blobs(repo: Repository, other: Repository, snapshots: list[Snapshot]) -> set[bytes]:
    """Every blob (trees and content) the snapshots refer to. A tree this target cannot read is
    read from the other target; one that neither can read hides what lies below it."""

    def load_list(list_id: bytes) -> bytes:
        for source in (repo, other):
            try:
                return source.load_list(list_id)
            except (CorruptObject, ObjectNotFound):
                continue
        raise CorruptObject(f"extent list {list_id.hex()[:16]} cannot be read on either target")

    def load(tree_id: bytes) -> list[Node]:
        for source in (repo, other):
            try:
                nodes = source.load_tree(tree_id)
            except (CorruptObject, ObjectNotFound):
                continue
            # A database's extent lists (format 6) are read from either target, as trees are.
            return [
                dataclasses.replace(n, content=n.content.bind(load_list, n.name))
                if isinstance(n.content, ListedExtents)
                else n
                for n in nodes
            ]
        return []

    return used_blobs(snapshots, load)
