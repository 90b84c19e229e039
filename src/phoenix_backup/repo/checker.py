"""The repository checker behind `phx verify` (ops/verify.py): structure (every snapshot, tree,
blob and index entry resolvable, every extent of every file and database inside its blob), and with
`--read-data` every pack read, every blob opened, decompressed and hash-checked, and every distinct
file and database node proved against its SHA-256 (what a restore proves: extents past a blob's
end, rearranged or overlapping ones, a wrong hash): in the pack pass, from the plaintext it opens
(repo/prover.py), and those it could not prove read back through the restore's `NodeReader`,
which names what fails.

A damaged object is reported with the snapshots and paths it affects. Unreferenced packs and
leftover temporary files are notices, not errors: an interrupted backup or prune leaves them,
prune removes them. Each notice says what is known of who left the pack: a prune (a superseded
index object still names it, or its origin record says it was repacked), a backup, or, for packs
of an older Phoenix without an origin record, either.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from phoenix_backup.errors import CorruptObject, ExitStatus, ObjectNotFound, PhoenixError, UnsafePath, UnsupportedFormat
from phoenix_backup.repo import captures
from phoenix_backup.repo import keys as keyslots
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.index import BlobLocation
from phoenix_backup.repo.locks import STALE_SECONDS
from phoenix_backup.repo.pack import PackOrigin, iter_blobs, names_content, pack_name, read_header
from phoenix_backup.repo.prover import Content, ListedContent, NodeProver, content_key
from phoenix_backup.repo.reader import NodeMismatch, NodeReader, damage_text, damaged_pack, pack_ranges, prove_node
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.snapshot import Latest, Snapshot
from phoenix_backup.repo.tree import Extents, ListedExtents, ListRef, Node
from phoenix_backup.repo.walker import Trees
from phoenix_backup.reporting import Reporter, Silent

_LEFT_BY_ROTATION = (
    "is sealed with the other key of this machine's unfinished `phx key rotate` (not damage); run `phx key "
    "rotate` again to finish it"
)


@dataclass(frozen=True)
class VerifyError:
    object: str
    snapshot: str | None
    path: str | None
    message: str

    def to_json(self) -> dict[str, str | None]:
        return {"object": self.object, "snapshot": self.snapshot, "path": self.path, "message": self.message}


@dataclass
class VerifyResult:
    checked: dict[str, int] = field(default_factory=dict)
    errors: list[VerifyError] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    read_data: bool = False
    subset: dict[str, object] | None = None  # with --subset: {percent, packs, of, first}

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.OK if self.ok else ExitStatus.FAILURE

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "readData": self.read_data,
            "errors": [e.to_json() for e in self.errors],
            "notices": self.notices,
            **({"subset": self.subset} if self.subset is not None else {}),
        }


class _Users:
    """Which snapshots and paths use each blob, to name what a damaged object affects; the blobs
    found damaged or missing (their paths are named already); and each distinct file or database
    node (same extents, size and SHA-256: the same bytes to prove, once) with the snapshots and
    paths that hold it (the first 1000), each named if it fails."""

    def __init__(self) -> None:
        self.by_blob: dict[bytes, list[tuple[str, str]]] = defaultdict(list)
        self.bad: set[bytes] = set()
        self.contents: dict[Content, tuple[Node, list[tuple[str, str]]]] = {}
        # During the pack pass: the nodes it proves from the plaintext it opens, dropped from
        # `contents` and counted in `proved` (`prove`).
        self.prover: NodeProver | None = None
        self.proved = 0
        self.proved_size = 0
        # A tree that could not be read hides which blobs its paths use: a blob no tree read names
        # is then not said unused (`_report_blob`).
        self.trees_unread = False
        # Each extent list checked this run (`_check_list`), with what it found: a list named by
        # many nodes (a planted one named from many small trees) is read once, not once a node.
        self.lists: dict[ListRef, _ListCheck] = {}
        # The lists that name each blob (their ids), read once: the paths of a damaged blob of a
        # list include every path naming the list (`affected`).
        self.in_lists: dict[bytes, list[bytes]] = defaultdict(list)

    def affected(self, blob: bytes) -> list[tuple[str, str]]:
        """Every snapshot and path using `blob` (the first 1000): those naming it and those naming
        a list that names it."""
        out = dict.fromkeys(self.by_blob.get(blob, ()))
        for list_id in self.in_lists.get(blob, ()):
            out.update(dict.fromkeys(self.by_blob.get(list_id, ())))
        return list(out)[:1000]

    def prove(self, content: Content) -> None:
        if self.contents.pop(content, None) is not None:
            self.proved += 1
            self.proved_size += content[1]

    def add_content(self, node: Node, content: Extents | ListedContent, snapshot: str, path: str) -> None:
        _node, holders = self.contents.setdefault((content, node.size, node.sha256), (node, []))
        if len(holders) < 1000:
            holders.append((snapshot, path))

    def add(self, blob: bytes, snapshot: str, path: str) -> None:
        users = self.by_blob[blob]
        # Once a path: a database naming a blob in many extents (a fragmented one names each blob
        # in as many as it has days) held an entry for each, 3 MB at 50,000 extents of 500 blobs.
        if len(users) < 1000 and (not users or users[-1] != (snapshot, path)):
            users.append((snapshot, path))


def verify_repository(
    repo: Repository,
    *,
    ref: str | None = None,
    read_data: bool = False,
    subset: float | None = None,
    cursor: Path | None = None,
    latest: Latest | None = None,
    report: Reporter | None = None,
    segments_cache: Path | None = None,
) -> VerifyResult:
    """`segments_cache` is the capture segments' header cache (repo/captures.py), used except by a
    whole `--read-data` run, which reads every segment from the store."""
    report = report if report is not None else Silent()
    result = VerifyResult(read_data=read_data)
    _check_key_slots(repo, result)
    repo.load_index()
    for name, message in repo.problems.index.items():
        result.errors.append(VerifyError(name, None, None, message))
    snapshots = repo.list_snapshots()
    for name, message in repo.problems.snapshots.items():
        if name in repo.problems.gone_snapshots:  # forgotten by another process since it was listed
            result.notices.append(f"{name} was deleted while verify ran (forgotten elsewhere): not damage")
        else:
            result.errors.append(VerifyError(name, name.split("/")[-1], None, message))
    if ref is not None:
        snapshots = [repo.find_snapshot(ref, snapshots, latest)]
    # Packs no readable index lists: a crashed backup's leftovers, or the packs of a damaged
    # index. Their own headers say what they hold, so trees can still be walked and the damage
    # traced to the snapshots and paths that need them.
    listed = {info.name: info.size for info in repo.backend.list("data/")}
    for name in sorted(repo.problems.rotation):
        result.notices.append(f"{name} {_LEFT_BY_ROTATION}")
    for name, problem in sorted(repo.add_unindexed_packs().items()):
        if repo.left_by_rotation(name):
            result.notices.append(f"{name} is in no index: it {_LEFT_BY_ROTATION}")
        else:
            result.notices.append(f"{name} is in no index and its header cannot be read: {problem}")
    unindexed = repo.unindexed_packs
    users = _Users()
    trees = Trees(repo)
    report.phase("checking snapshots and trees", files=len(snapshots), unit="snapshots")
    walked: list[Snapshot] = []  # those whose trees are within the walk's budget
    for snap in snapshots:
        if _walk(repo, snap, trees, users, result):
            walked.append(snap)
        report.advance(files=1)
    result.checked["snapshots"] = len(snapshots)
    result.checked["trees"] = len(trees.nodes)
    result.checked["blobs"] = len(users.by_blob)

    # Packs the index names must exist and be long enough; snapshots must not need unindexed packs.
    referenced_packs: set[str] = set()
    needed_unindexed: set[str] = set()

    def fits(loc: BlobLocation) -> bool:
        size = listed.get(pack_name(loc.pack_id))
        return size is not None and loc.offset + loc.stored <= size

    shadowing: defaultdict[str, int] = defaultdict(int)
    for blob, loc in repo.index.blobs():
        if not fits(loc) and blob in users.by_blob:
            # Another location that is there serves the snapshots (write-only: an index object of
            # the machine that backs up may list a missing pack first); the absent one is no
            # snapshot's damage, and prune drops it.
            other = next((o for o in repo.index.locations(blob) if fits(o)), None)
            if other is not None:
                shadowing[pack_name(loc.pack_id)] += 1
                loc = other
        name = pack_name(loc.pack_id)
        size = listed.get(name)
        if blob in users.by_blob:
            referenced_packs.add(name)
            if loc.pack_id in unindexed:
                needed_unindexed.add(loc.pack_id)
                _report_blob(result, users, blob, name, "pack is listed in no readable index (a damaged index object)")
        if size is None or loc.offset + loc.stored > size:
            _report_blob(result, users, blob, name, "pack is missing or shorter than the index says")
    for name, count in sorted(shadowing.items()):
        message = (
            f"pack is missing or shorter than the index says, for {count} blob(s) that another pack holds whole: "
            "no snapshot is affected (an index object lists them wrongly, e.g. one written by the machine that "
            "backs up); `phx prune` here drops those entries"
        )
        result.errors.append(VerifyError(name, None, None, message))
    for pack_id in sorted(unindexed - needed_unindexed):
        result.notices.append(
            f"{pack_name(pack_id)} is not in the index and no snapshot needs it ({_left_by(repo, pack_id)}; "
            "prune removes it)"
        )
    for tmp in repo.backend.list_temporary():
        # Prune keeps one younger than the lock stale age (a write may still be under way there).
        result.notices.append(
            f"{tmp.name} is a leftover temporary file (prune removes it once it is {STALE_SECONDS // 60} minutes old)"
        )

    _report_write_only(repo, result)
    if ref is None:
        _check_segments(repo, result, None if read_data and subset is None else segments_cache)

    if read_data:
        packs = sorted(set(listed) & ({pack_name(p) for p in repo.index.pack_ids()}))
        if ref is not None:
            packs = sorted(referenced_packs & set(packs))
        key = snapshots[0].id if ref is not None and snapshots else "all"
        next_pack: str | None = None
        if subset is not None:
            packs, result.subset, next_pack = choose_subset(packs, subset, cursor, key)
        # Cold packs (S3 GLACIER/DEEP_ARCHIVE) are thawed in one batch, not one wait per pack.
        repo.backend.prepare_read(packs)
        # Each pack's blobs, found in one pass over the index (not one pass per pack: 8,000 tiny
        # packs, a megabyte of storage, took 169 s that way).
        by_pack: dict[str, list[tuple[bytes, BlobLocation]]] = defaultdict(list)
        for blob, loc in repo.index.blobs():
            by_pack[loc.pack_id].append((blob, loc))
        packs_read = set(packs) if subset is not None else None
        # The nodes this run proves, proved in the pack pass as their blobs open (each blob
        # decrypted once); they choose the order the packs are read in.
        users.prover = prover = NodeProver(
            repo.index, (n.split("/")[-1] for n in packs), users.prove, lambda blob, sealed: _reopen(repo, blob, sealed)
        )
        for content in users.contents:
            if _chosen(repo, users, content[0], packs_read):
                prover.add(content)
        packs = prover.order(packs)
        report.phase("reading packs", files=len(packs), size=sum(listed[p] for p in packs), unit="packs")
        for name in packs:
            _read_pack(repo, name, by_pack[name.split("/")[-1]], users, result)
            report.advance(files=1, size=listed[name])
        prover.close()
        users.prover = None
        _prove_past_the_cap(repo, users, prover.past_cap, prover.packs)
        result.checked["packs"] = len(packs)
        _prove_contents(repo, users, result, packs_read, report, (trees, walked))
        if next_pack is not None:  # the run is done: the next one goes on from here
            _write_cursor(cursor, key, next_pack)
    for name, message in sorted(repo.problems.blobs.items()):
        if not any(e.object == name for e in result.errors):
            result.errors.append(
                VerifyError(
                    name,
                    None,
                    None,
                    f"{message}; another location holds the blob whole and was read instead (damaged, or a wrong "
                    "index entry or other bytes sealed by someone holding the write key: the machine that backs up); "
                    "`phx repair index --read-data` (with `--target NAME` on a replica) leaves the failing copy out "
                    "of the index and replaces its pack",
                )
            )
    return result


def _report_write_only(repo: Repository, result: VerifyResult) -> None:
    """Index objects that claim to supersede others without the owner's MAC (format §14): the
    claim is ignored. An error while an object they name is still there (the machine that backs up
    tried to retire part of the index, or an older Phoenix's prune stopped half-way), a notice when
    the objects they name are gone anyway."""
    present = set(repo.index_objects)
    for name, claimed in sorted(repo.problems.claims.items()):
        still = sorted(f"index/{c}" for c in claimed if f"index/{c}" in present)
        why = (
            f"claims to supersede {len(claimed)} index object(s) without the owner's key (only the machine with "
            "the identity may retire index objects; the write key of the machine that backs up may only add)"
        )
        if still:
            result.errors.append(
                VerifyError(
                    name,
                    None,
                    None,
                    f"{why}, {len(still)} of them still here (e.g. {still[0]}): the claim is ignored, nothing is "
                    "retired; `phx repair index` on this machine replaces the index objects",
                )
            )
        else:
            result.notices.append(
                f"{name} {why}; they are gone already, so nothing changes (an older Phoenix wrote such index "
                "objects); `phx repair index` on this machine replaces it"
            )


def _check_segments(repo: Repository, result: VerifyResult, cache: Path | None) -> None:
    """The capture segments of `phx watch`, from which `phx restore --at` rebuilds a database at a
    time: each must open (it is authenticated as a whole; from the header cache when `cache` holds
    its header) and each watch's chain must have every link, as the timeline reads them. A segment
    that does not open, or a chain cut short, is an error: the states after it cannot be rebuilt.
    The timeline's other problems (a base snapshot forgotten, which the next `phx forget` tidies;
    a second segment of one place in a chain) are notices."""
    tl = captures.timeline(repo, cache)
    result.checked["segments"] = len(tl.segments) + len(tl.unreadable)
    for name in tl.rotation:
        result.notices.append(f"{name} {_LEFT_BY_ROTATION}")
    for name in tl.unreadable:
        result.errors.append(
            VerifyError(
                name,
                None,
                None,
                f"capture segment cannot be read ({tl.problems[name]}): `phx restore --at` cannot rebuild the states "
                "it holds, nor those after it in its watch's chain; copy it back from another target (`phx sync`) "
                "or delete it to give up those states",
            )
        )
    for chain in tl.broken:
        held = tl.chains.get(chain, [])
        missing = tl.gap(chain)
        after = f" (after {captures.describe(max(p.until for p in held[-1].parts))})" if held and held[-1].parts else ""
        result.errors.append(
            VerifyError(
                f"chain {chain[:8]}",
                None,
                None,
                f"segment {missing} of this watch's chain of capture segments is missing or unreadable{after}: "
                "`phx restore --at` cannot rebuild the states the later segments hold; copy it back from another "
                "target (`phx sync`) if one holds it",
            )
        )
    for name, problem in sorted(tl.problems.items()):
        if name not in tl.unreadable:
            result.notices.append(f"{name}: {problem}")


def _left_by(repo: Repository, pack_id: str) -> str:
    """What is known of who left an unindexed pack: a superseded index object naming it (a prune
    stopped before deleting it), else the origin record at the pack's start."""
    if pack_id in repo.retired_packs:
        return "left by an interrupted prune, which had already replaced the index that lists it"
    try:
        origin = repo.read_pack_origin(pack_id, repo.read_pack_header(pack_id))
    except (CorruptObject, ObjectNotFound) as exc:
        return f"its origin record cannot be read: {exc}"
    if origin is None:
        return "written by an older Phoenix, which did not record what wrote it: an interrupted backup or prune"
    kind, when = origin
    written = datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")
    if kind == PackOrigin.BACKUP:
        return f"written by a backup at {written} that did not commit it: interrupted, or still running"
    return f"written by {kind.describe()} at {written} that was interrupted"


def _check_key_slots(repo: Repository, result: VerifyResult) -> None:
    """Every key slot must decode: a damaged one opens nothing (the others still do)."""
    for info in repo.backend.list("keys/"):
        try:
            keyslots.KeySlot.from_json(repo.backend.read(info.name))
        except UnsupportedFormat as exc:
            result.notices.append(f"{info.name}: {exc}")
        except (CorruptObject, ObjectNotFound) as exc:
            result.errors.append(
                VerifyError(
                    info.name,
                    None,
                    None,
                    f"key slot cannot be read ({exc}); it opens nothing, the other slots still do; copy it back "
                    f"with `phx repair objects --from TARGET` or remove it with `phx key remove {info.name[5:]}`",
                )
            )
    result.checked["keys"] = sum(1 for _ in repo.backend.list("keys/"))


def _walk(repo: Repository, snap: Snapshot, trees: Trees, users: _Users, result: VerifyResult) -> bool:
    """Check one snapshot's trees (those no earlier snapshot had), recording which paths use each
    blob. A tree that cannot be read, or a snapshot whose trees exceed the walk's budget, is an
    error of that snapshot; verify goes on with the next one (False: its trees exceed the budget)."""

    def unreadable(tree_id: bytes, path: str, exc: PhoenixError) -> None:
        users.trees_unread = True
        loc = repo.index.get(tree_id)
        obj = pack_name(loc.pack_id) if loc else f"tree {tree_id.hex()[:16]}"
        result.errors.append(VerifyError(obj, snap.id, path or "/", str(exc)))

    users.add(snap.tree, snap.id, "/")
    try:
        new = trees.load(snap.tree, "", unreadable)
        trees.check(snap.tree)
    except (CorruptObject, UnsafePath) as exc:
        users.trees_unread = True
        result.errors.append(VerifyError(f"snapshots/{snap.id}", snap.id, "/", str(exc)))
        return False
    for tree_id in new:
        prefix = trees.first_path[tree_id]
        for node in trees.nodes[tree_id]:
            path = f"{prefix}/{node.name}" if prefix else node.name
            if node.type == "dir" and node.subtree is not None:
                users.add(node.subtree, snap.id, path)
            lost_list = False
            for list_id in node.list_blobs():
                users.add(list_id, snap.id, path)
                if not repo.index.has(list_id):
                    users.bad.add(list_id)
                    lost_list = True
                    result.errors.append(
                        VerifyError(
                            f"extent list {list_id.hex()[:16]}", snap.id, path, "extent list blob is not in the index"
                        )
                    )
            if lost_list:
                continue
            # A listed database's extents are streamed here list blob by list blob, each distinct
            # list once a run (`_check_lists`), and its content keyed by its list blobs
            # (`content_key`): none of it is held whole.
            content = content_key(node.content)
            try:
                if node.type not in ("file", "sqlite"):
                    problem = None
                elif isinstance(node.content, ListedExtents):
                    problem = _check_lists(repo, node.content, users, result, snap.id, path)
                else:
                    missing = _check_blobs(repo, content.blobs(), users, snap.id, path)
                    _missing_errors(result, missing, snap.id, path)
                    found = _extents_problem(repo, content.records())
                    problem = None if found is None else _problem_text(0, found)
            except CorruptObject as exc:
                result.errors.append(VerifyError(f"tree {tree_id.hex()[:16]}", snap.id, path, str(exc)))
                continue
            if node.type in ("file", "sqlite"):
                if problem is not None:
                    result.errors.append(VerifyError(f"tree {tree_id.hex()[:16]}", snap.id, path, problem))
                else:
                    users.add_content(node, content, snap.id, path)
    return True


# What a node whose content cannot be restored needs: the writer's bytes are gone from this snapshot.
_CANNOT_RESTORE = (
    "`phx restore` refuses this file from this snapshot (a writer stored wrong extents or a wrong hash); "
    "restore it from another snapshot, back it up again, and report the Phoenix version that wrote it"
)


def wrong_copy_text(pack: str, blob: bytes, good: str | None) -> str:
    """What verify says of a copy of `blob` in `pack` that opens (its tag is valid) but holds other
    bytes: not damage to the disk, nor a writer's wrong extents, but a copy sealed with the
    repository's key (a key holder or a bug); `good`, the pack of a copy that proves, or None."""
    head = (
        f"{pack} holds a wrong copy of blob {blob.hex()[:16]}: it opens under the blob's id but holds other bytes "
        "(sealed with the repository's key: a key holder or a bug, not damage to the disk)"
    )
    if good is None:
        return (
            f"{head}; no copy of the blob proves: `phx restore` refuses the files that need it, `phx repair index "
            "--read-data` keeps every copy and names the blob damaged, `phx repair snapshots --read-data` names the "
            "snapshots that lost it; find what wrote it with the repository's key"
        )
    return (
        f"{head}; {good} holds a copy that proves, which `phx restore`, `dump`, `archive` and `export` take "
        "instead (the data is whole while that pack stays); `phx repair index --read-data` removes the wrong copy "
        "(the pack's other blobs copied into a new pack); find what wrote it with the repository's key"
    )


def _blob_problem(repo: Repository, name: str, blob: bytes, loc: BlobLocation, error: str) -> str:
    """Why the copy of `blob` at `loc` (in pack `name`) failed its checks: a wrong copy when it opens
    (`wrong_copy_text`, naming a copy that proves if one does), else `error`."""
    try:
        sealed = repo.backend.read_range(name, loc.offset, loc.stored)
        repo.open_blob(BlobType.DATA, blob, loc.compression, sealed, loc.raw, f"blob {blob.hex()[:16]}", check_id=False)
    except (CorruptObject, ObjectNotFound):
        return error  # it does not open: damage
    try:
        good, _first, _data = repo.load_proving(BlobType.DATA, blob, (loc, CorruptObject(error)))
    except CorruptObject:
        return wrong_copy_text(name, blob, None)
    return wrong_copy_text(name, blob, pack_name(good.pack_id))


# What a list's check found: the blobs it names that are not in the index, and its first extent
# reaching past its blob (its index in the list, the blob, the byte it ends at, the blob's bytes).
@dataclass
class _ListCheck:
    missing: list[bytes]
    problem: tuple[int, bytes, int, int] | None


def _check_blobs(
    repo: Repository, blobs: Iterator[bytes], users: _Users, snapshot: str, path: str, list_id: bytes | None = None
) -> list[bytes]:
    """Record `path` as a user of each blob (and `list_id` as a list naming it); the blobs not in
    the index (each once), marked bad."""
    missing: list[bytes] = []
    for blob in blobs:
        users.add(blob, snapshot, path)
        if list_id is not None:
            lists = users.in_lists[blob]
            if not lists or lists[-1] != list_id:
                lists.append(list_id)
        if not repo.index.has(blob) and blob not in missing:
            users.bad.add(blob)
            missing.append(blob)
    return missing


def _missing_errors(result: VerifyResult, missing: list[bytes], snapshot: str, path: str) -> None:
    result.errors.extend(
        VerifyError(f"blob {blob.hex()[:16]}", snapshot, path, "data blob is not in the index (missing)")
        for blob in missing
    )


def _check_lists(
    repo: Repository, content: ListedExtents, users: _Users, result: VerifyResult, snapshot: str, path: str
) -> str | None:
    """Check a listed node's extents list by list: each distinct list (its id, size and count) is
    read once a run and what it found kept (`_Users.lists`), so a list named by many nodes costs
    one read (a few MB of planted trees naming one list of 2^20 extents cost 2 CPU-s a tree).
    Every path naming it is told its missing blobs; the node's first extent past its blob is its
    problem (None: none)."""
    problem: str | None = None
    first = 0
    for i, ref in enumerate(content.refs):
        check = users.lists.get(ref)
        if check is None:
            extents = content.read(i)  # CorruptObject naming the node: not kept, read again
            missing = _check_blobs(repo, extents.blobs(), users, snapshot, path, ref.blob)
            check = users.lists[ref] = _ListCheck(missing, _extents_problem(repo, extents.records()))
        _missing_errors(result, check.missing, snapshot, path)
        if problem is None and check.problem is not None:
            problem = _problem_text(first, check.problem)
        first += ref.count
    return problem


def _extents_problem(repo: Repository, records: Iterator[tuple[bytes, int, int]]) -> tuple[int, bytes, int, int] | None:
    """Why a node's extents cannot assemble its bytes, from the index alone (no data read): an
    extent reaching past the plaintext length the index records for its blob (its index, the
    blob, where it ends, the blob's length). (A size that is not the sum of the extents' lengths
    is refused when the tree is decoded, `Node.from_json`.)"""
    for i, (blob, offset, length) in enumerate(records):
        raw = repo.index.raw_length(blob)
        if raw is not None and offset + length > raw:
            return i, blob, offset + length, raw
    return None


def _problem_text(first: int, found: tuple[int, bytes, int, int]) -> str:
    i, blob, end, raw = found
    return (
        f"extent {first + i + 1} of its content ends at byte {end} of blob {blob.hex()[:16]}, which "
        f"holds {raw} bytes: {_CANNOT_RESTORE}"
    )


def _prove_contents(
    repo: Repository,
    users: _Users,
    result: VerifyResult,
    packs: set[str] | None,
    report: Reporter,
    walked: tuple[Trees, list[Snapshot]],
) -> None:
    """Read each distinct file and database node back through the restore's reader and compare its
    bytes with the node's size and SHA-256: what `phx restore` proves before it commits a byte.

    Nodes with a blob already reported damaged or missing are skipped (their paths are named).
    With `packs` (a --subset run), a node is proved by the run that reads the pack holding its
    first blob, so the runs that cover every pack cover every node; an empty node always. A node
    that fails is named with every snapshot and path holding it (the first 1000): the walk met each
    tree once, under the first snapshot holding it, so the snapshots sharing it are found again."""
    chosen = [  # those the pack pass did not prove
        (node, holders)
        for (content, _size, _sha), (node, holders) in users.contents.items()
        if _chosen(repo, users, content, packs)
    ]
    if packs is not None:  # a chosen node's other blobs may lie in packs this run did not thaw
        others = {pack_name(loc.pack_id) for n, _h in chosen for b in n.blobs() if (loc := repo.index.get(b))}
        if others - packs:
            repo.backend.prepare_read(sorted(others - packs))
    # The phase counts every node this run proves: most were proved in the pack pass already.
    report.phase(
        "proving files against their SHA-256",
        files=users.proved + len(chosen),
        size=users.proved_size + sum(n.size for n, _h in chosen),
    )
    report.advance(files=users.proved, size=users.proved_size)
    failing: dict[Content, tuple[str, str]] = {}
    for node, holders in chosen:
        failed = _assembly_problem(repo, holders[0][1], node)
        if failed is not None:
            failing[(content_key(node.content), node.size, node.sha256)] = failed
        report.advance(files=1, size=node.size)
    result.checked["files"] = users.proved + len(chosen)
    for key, holders in _holders(users, failing, *walked).items():
        obj, problem = failing[key]
        result.errors.extend(VerifyError(obj, snap_id, path, problem) for snap_id, path in holders)


def _chosen(repo: Repository, users: _Users, content: Extents | ListedContent, packs: set[str] | None) -> bool:
    """Whether this run proves a node of `content`: none of its blobs reported damaged or missing
    (its paths are named already), and in a --subset run (`packs`) its first blob in a pack the
    run reads (an empty node always)."""
    if users.bad and any(blob in users.bad for blob in content.blobs()):
        return False
    if packs is not None and len(content):
        loc = repo.index.get(content.blob(0))
        return loc is not None and pack_name(loc.pack_id) in packs
    return True


def _holders(
    users: _Users, keys: dict[Content, tuple[str, str]], trees: Trees, snapshots: list[Snapshot]
) -> dict[Content, list[tuple[str, str]]]:
    """The snapshots and paths holding each node of `keys` (the first 1000 each), in snapshot
    order: those the walk recorded, and those of later snapshots that share a tree with an earlier
    one (walked again from the loaded trees, only when a node failed)."""
    out = {key: list(users.contents[key][1]) for key in keys}
    if not keys:
        return out
    seen = {holder for holders in out.values() for holder in holders}
    for snap in snapshots:
        for path, node in trees.walk(snap.tree):
            if node.type not in ("file", "sqlite"):
                continue
            try:
                key = (content_key(node.content), node.size, node.sha256)
            except CorruptObject:
                continue  # a damaged extent list: named by the walk already
            holders = out.get(key)
            if holders is not None and len(holders) < 1000 and (snap.id, path) not in seen:
                seen.add((snap.id, path))
                holders.append((snap.id, path))
    return out


def _assembly_problem(repo: Repository, path: str, node: Node) -> tuple[str, str] | None:
    """The object to name and why the node's extents, read as a restore reads them, are not its
    bytes (None: they are). A blob that fails to read is one of a pack this run did not read (a
    --subset run): that pack is named, not the pack of the node's first blob, which read fine."""
    reader = NodeReader(repo, path, node)
    try:
        for _ in reader.ranges():
            pass
    except (CorruptObject, ObjectNotFound) as exc:
        return damaged_pack(repo, node) or _first_object(repo, node), damage_text(exc)
    try:
        reader.finish()
    except NodeMismatch as exc:
        return _wrong_copy(repo, path, node, exc) or (
            _first_object(repo, node),
            f"its extents assemble bytes that do not match the SHA-256 the snapshot records: {_CANNOT_RESTORE}",
        )
    return None


def _wrong_copy(repo: Repository, path: str, node: Node, error: NodeMismatch) -> tuple[str, str] | None:
    """When a node's bytes fail its SHA-256 because a copy a restore reads first opens but holds
    other bytes than its blob (sealed with the repository's key: a key holder or a bug), that copy's
    pack and what it is, with whether another copy proves; None when every copy read first proves
    (then the writer stored wrong extents or a wrong hash) or the node, read from the copies that
    prove, still does not match (both: the writer's fault is the one no copy mends)."""
    try:
        proven = prove_node(repo, path, node, error)
    except NodeMismatch:
        return None  # every first copy proves: the fault is in the node
    except CorruptObject as exc:  # a blob of it has no copy that proves: named with its packs
        return _first_object(repo, node), str(exc)
    reader = NodeReader(repo, path, node, proven=proven)
    try:
        for _ in reader.ranges():
            pass
        reader.finish()
    except (CorruptObject, ObjectNotFound):
        return None
    blob, good = next(iter(proven.items()))
    first = repo.index.get(blob)
    bad = pack_name(first.pack_id) if first is not None else _first_object(repo, node)
    text = wrong_copy_text(bad, blob, pack_name(good.pack_id))
    return bad, f"{text}; read from the wrong copy, its bytes do not match the SHA-256 the snapshot records"


def _first_object(repo: Repository, node: Node) -> str:
    """The pack of a node's first blob, to name an object as every other verify error does."""
    blob = next(node.blobs(), None)
    loc = repo.index.get(blob) if blob is not None else None
    return pack_name(loc.pack_id) if loc is not None else "content"


def _report_blob(result: VerifyResult, users: _Users, blob: bytes, obj: str, message: str) -> None:
    users.bad.add(blob)
    if users.prover is not None:  # the nodes waiting for it in the pack pass are not proved there
        users.prover.lost(blob)
    affected = users.affected(blob)
    if not affected:
        unused = (
            "no tree that could be read names this blob: it may be below the trees that could not be read"
            if users.trees_unread
            else "no snapshot uses this blob"
        )
        result.notices.append(f"{obj}: {message} ({unused})")
        return
    for snapshot, path in affected:
        result.errors.append(VerifyError(obj, snapshot, path, message))


def _read_pack(
    repo: Repository, name: str, in_index: list[tuple[bytes, BlobLocation]], users: _Users, result: VerifyResult
) -> None:
    pack_id = name.split("/")[-1]
    try:
        data = repo.backend.read(name)
    except ObjectNotFound as exc:
        for blob, _loc in in_index:
            _report_blob(result, users, blob, name, str(exc))
        return
    if not names_content(name, data, repo.config.pack_ids):
        # The pack's bytes changed: find which blobs still open, and blame the others.
        damaged = [b for b, loc in in_index if not _blob_ok(repo, data, b, loc, users)]
        if not damaged:
            try:
                read_header(data, repo.sealer, name)
                result.errors.append(
                    VerifyError(name, None, None, "pack does not match its name (damaged bytes outside any blob)")
                )
            except CorruptObject as exc:
                result.errors.append(VerifyError(name, None, None, str(exc)))
        locs = dict(in_index)
        for blob in damaged:
            why = "blob is damaged (fails authentication or its hash)"
            _report_blob(result, users, blob, name, _blob_problem(repo, name, blob, locs[blob], why))
        return
    try:
        entries = read_header(data, repo.sealer, name)
    except CorruptObject as exc:
        result.errors.append(VerifyError(name, None, None, str(exc)))
        return
    for entry, sealed in iter_blobs(data, entries):
        here = BlobLocation(pack_id, entry.type, entry.compression, entry.offset, entry.stored, entry.raw)
        try:
            plain = repo.open_blob(
                entry.type, entry.id, entry.compression, sealed, entry.raw, f"blob {entry.id.hex()[:16]} in {name}"
            )
        except CorruptObject as exc:
            try:  # another pack holds it whole: no snapshot is affected (the pack is reported below)
                repo.load_blob_elsewhere(entry.type, entry.id, here, exc)
            except PhoenixError:
                _report_blob(result, users, entry.id, name, _blob_problem(repo, name, entry.id, here, str(exc)))
                continue
            if users.prover is not None and _restore_copy(repo, entry.id, here):
                # A restore reads this copy first: other bytes under the blob's id (sealed by a key
                # holder) it would take as they are, damaged ones it would read elsewhere. Either
                # way the nodes that need the blob are read back as a restore reads them.
                users.prover.lost(entry.id)
            continue
        if _restore_copy(repo, entry.id, here):
            _feed(users, entry.type, entry.id, plain, sealed)


def _prove_past_the_cap(repo: Repository, users: _Users, refused: list[Content], packs: set[str]) -> None:
    """Prove the nodes the pack pass refused past its cap (MAX_WAITING) in further passes, each a
    prover taking them in turn up to the same cap, over the packs of the run (`packs`, ids) that
    hold the blobs its nodes need: those blobs read once a pass, in the ranges a restore's reader
    reads (the copy a restore reads, `_restore_location`), each opened once as a restore opens it
    and fed as the pack pass feeds. The pack pass checked every blob against its
    id already; a blob that does not open now, or a pack that is gone, leaves its nodes to the
    restore's reader (`_prove_contents`), which names what fails, as does a node whose bytes do not
    match. (Read back one at a time there instead, 10,000 nodes of two blobs of 512 KiB past the
    cap cost 2.7 CPU-s more than one pass with no cap: docs/proving.md, bench/verify_cliff.py.)"""
    pending = iter(refused)  # each pass takes from where the one before stopped: no node added twice
    while True:
        prover = NodeProver(repo.index, packs, users.prove, lambda blob, sealed: _reopen(repo, blob, sealed))
        for content in pending:
            if content in users.contents and not (users.bad and any(b in users.bad for b in content[0].blobs())):
                prover.add(content)
            if prover.taken >= prover.cap:
                break
        if not prover.taken:  # none left (or a cap of 0): the others go to the restore's reader
            return
        located = [(blob, loc) for blob in prover.waiting if (loc := _restore_location(repo, blob)) is not None]
        # (a node is taken only when its blobs' packs are the run's) Each pack's blobs in the
        # ranges a restore's reader reads (`pack_ranges`: neighbours at most READ_GAP apart, READ_RANGE
        # at most), not one range from the first to the last: nodes needing both ends of a pack
        # read the whole of it in every pass, 100 times the bytes they need with a cap of 1.
        runs: dict[str, list[list[tuple[bytes, BlobLocation]]]] = defaultdict(list)
        for name, run in pack_ranges(located):
            runs[name].append(run)
        for name in prover.order(list(runs)):
            for run in runs[name]:
                _feed_needed(repo, prover, name, run)
        prover.close()


def _feed_needed(repo: Repository, prover: NodeProver, name: str, needed: list[tuple[bytes, BlobLocation]]) -> None:
    """Feed `prover` the blobs `needed` of pack `name` (neighbours, in pack order), read in one range."""
    start = needed[0][1].offset
    end = max(loc.offset + loc.stored for _blob, loc in needed)
    try:
        data = memoryview(repo.backend.read_range(name, start, end - start))
    except (CorruptObject, ObjectNotFound):
        data = memoryview(b"")
    for blob, loc in needed:
        sealed = data[loc.offset - start : loc.offset - start + loc.stored]
        plain = _open_restore_copy(repo, blob, loc, sealed) if len(sealed) == loc.stored else None
        if plain is None:
            prover.lost(blob)  # left to the restore's reader, which names what fails
        else:
            prover.feed(blob, plain, sealed)


def _feed(users: _Users, kind: BlobType, blob: bytes, plain: bytes, sealed: bytes | memoryview) -> None:
    """Hand a data blob's plaintext, just opened from `sealed`, the copy a restore reads
    (`_restore_copy`), and checked against its id, to the nodes the pack pass proves, as the
    restore's reader would hand it to them (`sealed`: what they hold of it for later)."""
    if users.prover is not None and kind == BlobType.DATA:
        users.prover.feed(blob, plain, sealed)


def _reopen(repo: Repository, blob: bytes, sealed: bytes | None) -> bytes | None:
    """A data blob the pack pass held for nodes further on, opened again as a restore's reader
    opens it (AEAD tag checked, decompressed, its length checked): from `sealed`, the bytes the
    pass read from the copy a restore reads, or with None read again from that copy. None when it
    does not open: the nodes go to the restore's reader, which names what fails."""
    loc = _restore_location(repo, blob)
    if loc is None:
        return None
    try:
        if sealed is None:
            sealed = repo.backend.read_range(pack_name(loc.pack_id), loc.offset, loc.stored)
    except (CorruptObject, ObjectNotFound):
        return None
    return _open_restore_copy(repo, blob, loc, sealed)


def _open_restore_copy(repo: Repository, blob: bytes, loc: BlobLocation, sealed: bytes | memoryview) -> bytes | None:
    """A data blob's plaintext from `sealed`, the bytes of its copy at `loc`, opened as a restore's
    reader opens it (AEAD tag checked, decompressed, its length checked); None when it does not."""
    what = f"blob {blob.hex()[:16]} in {pack_name(loc.pack_id)}"
    try:
        return repo.open_blob(BlobType.DATA, blob, loc.compression, sealed, loc.raw, what, check_id=False)
    except (CorruptObject, ObjectNotFound):
        return None


def _restore_location(repo: Repository, blob: bytes) -> BlobLocation | None:
    """The copy of `blob` a restore's reader opens: the index's first location of it as a data blob."""
    first = repo.index.get(blob)
    if first is not None and first.type != BlobType.DATA:
        first = next((loc for loc in repo.index.locations(blob) if loc.type == BlobType.DATA), None)
    return first


def _restore_copy(repo: Repository, blob: bytes, here: BlobLocation) -> bool:
    """Whether the copy of `blob` at `here` (a pack header's entry) is the one a restore's reader
    opens: the index's first location of it as a data blob, every field of it. Only that copy
    proves a node: a restore checks a copy's AEAD tag, not its id (open_blob), so a copy listed
    first with other bytes sealed under the id (by a key holder) is what it writes, though a copy
    further on opens and matches; and it reads the length, compression and plaintext length the
    index lists, so an index entry at the header's offset with another of those (a write-only
    repository's index comes from the machine that backs up) fails a restore that the header's
    entry would pass."""
    return _restore_location(repo, blob) == here


def _blob_ok(repo: Repository, pack: bytes, blob: bytes, loc: BlobLocation, users: _Users) -> bool:
    sealed = pack[loc.offset : loc.offset + loc.stored]
    try:
        plain = repo.open_blob(BlobType(loc.type), blob, loc.compression, sealed, loc.raw, "blob")
    except CorruptObject:
        return False
    if _restore_copy(repo, blob, loc):
        _feed(users, BlobType(loc.type), blob, plain, sealed)
    return True


# --------------------------------------------------------------------------------------------
# --subset PCT: a share of the packs per run, so that regular runs cover the whole repository
# --------------------------------------------------------------------------------------------

SUBSET_CURSOR = "verify-subset.json"


def choose_subset(
    packs: list[str], percent: float, cursor: Path | None, key: str = "all"
) -> tuple[list[str], dict[str, object], str | None]:
    """PCT percent of `packs` (at least one), consecutive in sorted pack-name order, and the pack
    the next run starts at: the caller saves it (`_write_cursor`) once the run has finished.

    A run starts at the pack the previous run would have read next (a cursor kept in the cache,
    per repository and per `--backup`), so ceil(100 / PCT) runs read every pack once: a weekly
    `--subset 25` reads the whole repository each month. Packs added meanwhile fall somewhere in
    the order and are read when the cursor passes them. Without a cursor (first run, lost cache)
    the start is random, which still covers everything over time; it is saved at once. A run that
    stops (a store that fails, packs still thawing from cold storage) leaves the cursor where it
    was, so the next run reads the same packs: moved on at the start, it skipped them for a cycle.
    """
    if not packs:
        return [], {"percent": percent, "packs": 0, "of": 0, "first": None}, None
    ordered = sorted(packs)
    count = min(len(ordered), max(1, math.ceil(len(ordered) * percent / 100)))
    saved = _read_cursor(cursor).get(key)
    if isinstance(saved, str):
        start = next((i for i, name in enumerate(ordered) if name >= saved), 0)
    else:
        start = secrets.randbelow(len(ordered))
        _write_cursor(cursor, key, ordered[start])
    chosen = [ordered[(start + i) % len(ordered)] for i in range(count)]
    info: dict[str, object] = {"percent": percent, "packs": count, "of": len(ordered), "first": chosen[0]}
    return chosen, info, ordered[(start + count) % len(ordered)]


def _read_cursor(cursor: Path | None) -> dict[str, object]:
    if cursor is None:
        return {}
    try:
        doc = json.loads(cursor.read_text())
    except (OSError, ValueError, RecursionError):
        return {}  # the cache is only an accelerator: a lost cursor means a random start
    return doc if isinstance(doc, dict) else {}


def _write_cursor(cursor: Path | None, key: str, next_pack: str) -> None:
    if cursor is None:
        return
    doc = _read_cursor(cursor)
    doc[key] = next_pack
    try:
        tmp = cursor.with_name(f".{cursor.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, cursor)
    except OSError:
        pass
