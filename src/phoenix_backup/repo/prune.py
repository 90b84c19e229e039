"""Pruning a repository: free the data no snapshot references (the engine of `phx prune`, which
runs it on every target: ops/prune.py).

Under an exclusive lock, prune walks every snapshot's trees to find the blobs in use, then:

1. packs holding no used blob are deleted;
2. packs that are mostly unreferenced are repacked: their used blobs are copied (still sealed)
   into new packs, and the old packs deleted (the threshold is below);
3. leftovers of interrupted backups and prunes (packs no index lists) are deleted.

No pack written less than LEFTOVER_MIN_AGE (the lock stale age, 30 minutes) ago, or after the
oldest other lock present was taken, is deleted or repacked: a backup whose lock was lost (removed
by `phx unlock`, or judged dead by mistake) may still be about to commit it. Such a backup also
checks, before it commits, that its lock is still there and that the packs it refers to exist, so
it fails rather than commit a snapshot whose data a prune removed. And a snapshot that appears
while prune runs (written by a process that did not see prune's lock) stops prune before it
changes the index or deletes anything.

The order is what makes a crash harmless at any point: new packs first, then one new index object
that lists every pack still needed and names the index objects it supersedes, then the packs no
longer needed, and the old index objects last. Before the new index exists the old one is
complete; after, the new one is. Deleted packs are never referenced by a live index, and a pack a
crash left behind is still named by a superseded index object, so `verify` can say that a prune
left it. A prune that fails or is stopped (a store's error, a full disk, Ctrl-C, SIGTERM) before
its new index object is written deletes the packs it repacked into, which no index names, as a
failed backup deletes its own (`Repository.removing_unindexed`); one killed outright (SIGKILL, a
power cut) leaves them, and a later prune deletes them once LEFTOVER_MIN_AGE old.

Repack threshold. A pack is repacked when at least REPACK_MOSTLY_UNUSED (half) of its bytes are
unreferenced: copying its used part then costs at most one byte written per byte freed, which keeps
prune cheap on S3/R2 (every repack is a download and an upload) and on Git (where a rewritten pack
stays in history forever). As a bound on waste, when the unreferenced bytes left in kept packs
would still exceed MAX_UNUSED_FRACTION (10%) of the repository, further packs are repacked, the
most unreferenced first, until they do not. restic's default bound is 5%; Phoenix's packs are
large (8 MiB) next to a small workspace repository, so 5% would rewrite a whole pack on nearly
every prune to free a few hundred kilobytes.

Index objects. Every backup writes one; a prune that changes anything replaces every live one by
one new index (in objects of at most INDEX_PART_BLOBS blobs, repo/repository.py
`index_parts`). One that changes nothing (nothing forgotten, `retention.last: -1`) still
does when more than MAX_INDEX_OBJECTS (32) are live beyond the objects such a merge writes, so
that their number stays bounded whatever the history: each one costs every command a read (a GET
on S3/R2) and some CPU to load (0.05-0.25 ms measured here). With one backup a day the index is
then rewritten about once a month (once a day at most, the daily prune's cadence): about 40
bytes a blob on every target. It is step 2 and 4 of the order above, under the same exclusive
lock; an index object written since prune read the index is neither superseded nor deleted.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phoenix_backup.dirs import make_dirs, write_private
from phoenix_backup.errors import (
    CorruptObject,
    ObjectNotFound,
    PhoenixError,
    RepositoryError,
)
from phoenix_backup.repo import checks
from phoenix_backup.repo.locks import DELETED, STALE_SECONDS
from phoenix_backup.repo.pack import PackEntry, blob_aad, pack_name
from phoenix_backup.repo.repository import Repository, index_parts
from phoenix_backup.repo.tree import Node
from phoenix_backup.repo.walker import used_blobs
from phoenix_backup.reporting import Reporter, Silent
from phoenix_backup.storage.base import ObjectInfo

REPACK_MOSTLY_UNUSED = 0.5
MAX_UNUSED_FRACTION = 0.10
MAX_INDEX_OBJECTS = 32  # live index objects past which a prune merges them (above)
# Packs younger than this (leftovers and unused packs alike) may belong to a backup that is
# still running (its lock refreshed within the stale age): they are kept.
LEFTOVER_MIN_AGE = STALE_SECONDS
# After a backup, prune runs at most this often (it reads every tree; forget is cheap).
AUTO_PRUNE_INTERVAL = 24 * 3600
# Storage classes a pack cannot be read from without a thaw, and the minimum storage periods
# (days) during which rewriting a pack is charged as if it had stayed (S3 pricing).
_NEEDS_THAW = ("GLACIER", "DEEP_ARCHIVE")
_MIN_DAYS = {"STANDARD_IA": 30, "ONEZONE_IA": 30, "GLACIER_IR": 90, "GLACIER": 90, "DEEP_ARCHIVE": 180}


@dataclass
class PackUse:
    pack_id: str
    size: int
    entries: list[PackEntry]
    used: list[PackEntry] = field(default_factory=list)
    info: ObjectInfo | None = None

    @property
    def used_bytes(self) -> int:
        return sum(e.stored for e in self.used)

    @property
    def unused_bytes(self) -> int:
        return max(0, self.size - self.used_bytes)

    @property
    def unused_ratio(self) -> float:
        return self.unused_bytes / self.size if self.size else 1.0


@dataclass
class TargetPrune:
    """What prune did (or, in a dry run, would do) on one target."""

    target: str
    ok: bool = True
    error: str | None = None
    snapshots: int = 0
    packs_before: int = 0
    bytes_before: int = 0
    deleted_packs: int = 0
    repacked_packs: int = 0
    leftover_packs: int = 0
    young_leftovers: int = 0
    young_packs: int = 0  # indexed packs no snapshot uses, kept for being young
    temporary_files: int = 0
    bytes_freed: int = 0
    bytes_written: int = 0
    indexes_replaced: int = 0
    check_records: int = 0  # integrity check records of forgotten snapshots (or not this owner's) deleted
    notices: list[str] = field(default_factory=list)

    @property
    def bytes_after(self) -> int:
        return self.bytes_before - self.bytes_freed + self.bytes_written

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "error": self.error,
            "snapshots": self.snapshots,
            "packs": {
                "before": self.packs_before,
                "deleted": self.deleted_packs,
                "repacked": self.repacked_packs,
                "leftovers": self.leftover_packs,
                "youngLeftoversKept": self.young_leftovers,
                "youngUnusedKept": self.young_packs,
            },
            "temporaryFiles": self.temporary_files,
            "bytes": {
                "before": self.bytes_before,
                "freed": self.bytes_freed,
                "written": self.bytes_written,
                "after": self.bytes_after,
            },
            "indexesReplaced": self.indexes_replaced,
            "checkRecords": self.check_records,
            "notices": self.notices,
        }


# -- the record of leftovers and of the last prune (the state folder) ----------------------


class PruneState:
    """`~/.argentos/backup/prune.json`: per repository and target, when prune last ran and when
    it first saw each leftover whose store does not say how old it is. Losing the file only
    delays the removal of leftovers; it never makes prune delete anything sooner."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            data = {}
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}

    @classmethod
    def for_home(cls, home: Path) -> PruneState:
        return cls(home / ".argentos" / "backup" / "prune.json")

    def entry(self, key: str) -> dict[str, Any]:
        entry = self.data.setdefault(key, {})
        if not isinstance(entry, dict):
            entry = self.data[key] = {}
        return entry

    def last_prune(self, key: str) -> float | None:
        value = self.entry(key).get("lastPrune")
        return float(value) if isinstance(value, int | float) else None

    def save(self) -> None:
        try:
            make_dirs(self.path.parent)
            write_private(
                self.path, (json.dumps(self.data, indent=2, sort_keys=True) + "\n").encode()
            )  # 0600, any umask
        except OSError:
            pass  # only an accelerator of leftover removal and of the daily rhythm


def state_key(repo: Repository, target: str) -> str:
    return f"{repo.config.id}/{target}"


def prune_repository(
    repo: Repository,
    report: TargetPrune,
    *,
    dry_run: bool,
    state: PruneState,
    now: float,
    progress: Reporter | None = None,
    locked: bool = False,
) -> TargetPrune:
    """`progress` is told the phases: the snapshots walked, the packs repacked, the packs deleted.
    `locked`: the caller already holds this repository's exclusive lock (a backup's retention,
    which forgets and prunes under one lock)."""
    # A dry run changes nothing, so a shared lock is enough and it may run beside a backup.
    with (
        contextlib.nullcontext()
        if locked
        else repo.lock(exclusive=not dry_run, command="prune --dry-run" if dry_run else "prune"),
        # Under the lock: a prune that fails or is stopped before its new index names the packs
        # it repacked into removes them, as a failed backup removes its own (docs/reliability.md).
        contextlib.nullcontext() if dry_run else repo.removing_unindexed(),
    ):
        _prune_locked(repo, report, dry_run=dry_run, state=state, now=now, progress=progress or Silent())
    if not dry_run:
        state.entry(state_key(repo, report.target))["lastPrune"] = now
        if report.deleted_packs or report.repacked_packs or report.leftover_packs or report.indexes_replaced:
            repo.publish_changes(f"phoenix prune: {report.deleted_packs + report.repacked_packs} pack(s) removed")
    return report


def _prune_locked(
    repo: Repository, report: TargetPrune, *, dry_run: bool, state: PruneState, now: float, progress: Reporter
) -> None:
    progress.phase("finding the data snapshots use")
    objects = repo.read_index_objects()
    snapshots = repo.list_snapshots()
    refuse_if_damaged(repo)
    if not dry_run:
        repo.refuse_if_rolled_back("prune")
    report.snapshots = len(snapshots)
    superseded = {f"index/{s}" for _p, sup in objects.values() for s in sup}
    live = {name: packs for name, (packs, _sup) in objects.items() if name not in superseded}
    # Honours `superseded` the same way. The index a backup loaded when it started (its retention
    # prunes with it) lacks what another process committed since, a backup that ended first, say:
    # that snapshot's trees would look lost and prune would refuse. Read it again then.
    if repo.relied_on and not set(live) <= repo.relied_on:
        repo.reload_index()
    else:
        repo.load_index()

    used = snapshot_blobs(repo, snapshots)
    listing = {info.name: info for info in repo.backend.list("data/")}
    report.packs_before = len(listing)
    report.bytes_before = sum(i.size for i in listing.values())

    # Every pack a live index lists, with the used blobs it is the chosen home of (a blob stored
    # twice, e.g. by a crashed run and a later one, is used in one pack only).
    packs: dict[str, PackUse] = {}
    home: dict[bytes, str] = {}
    for name in sorted(live):
        for pack_id, entries in sorted(live[name].items()):
            use = packs.setdefault(pack_id, PackUse(pack_id, 0, []))
            # Every distinct entry, not one per blob: an index object of the machine that backs
            # up, read first, may list a genuine pack with a wrong entry for a blob it holds.
            known = set(use.entries)
            use.entries.extend(e for e in entries if e not in known)
    missing_needed = []
    candidates: dict[bytes, list[tuple[str, PackEntry]]] = {}
    for pack_id, use in sorted(packs.items()):
        info = listing.get(pack_name(pack_id))
        use.info = info
        use.size = info.size if info is not None else 0
        for e in use.entries:
            if e.id in used and info is not None:
                candidates.setdefault(e.id, []).append((pack_id, e))
    beaten: set[tuple[str, PackEntry]] = set()  # other entries for a blob in its chosen pack
    for blob, held in candidates.items():
        pack_id, e = held[0] if len(held) == 1 else _sound_copy(repo, held)
        home[blob] = pack_id
        packs[pack_id].used.append(e)
        beaten.update((p, other) for p, other in held if p == pack_id and other != e)
    for pack_id in {p for p, _e in beaten}:  # the new index lists only the entry chosen
        packs[pack_id].entries = [e for e in packs[pack_id].entries if (pack_id, e) not in beaten]
    lost = used - home.keys()
    if lost:
        missing_needed.extend(sorted(b.hex()[:16] for b in lost)[:5])
        raise RepositoryError(
            f"{len(lost)} blob(s) that snapshots need are in no pack (e.g. {', '.join(missing_needed)}); "
            "prune refuses to run on a damaged repository; run `phx verify` to see what is affected"
        )

    # The store's clock may differ from ours: a machine whose clock is ahead took packs a backup
    # had just written, and another machine's temporary files, for old. Both clocks must agree an
    # object is old: a store's clock that looks ahead of ours (or a time planted on our lock,
    # `touch -d`) only ever makes objects look younger.
    # Prune holds its lock: one stat of it; a store that gives no time gives none to packs either.
    skew = min(0.0, repo.locks.store_skew("prune") or 0.0)
    # The skew is on our clock as it is set now: `now`, read before prune's lock was written, is
    # taken back by as much as our clock was set back since (else every object aged by that step).
    aged_at = now - repo.locks.set_back()
    young = _young_packs(repo, report, listing, state, aged_at, skew)
    unused = [u for u in packs.values() if u.info is not None and not u.used]
    delete = [u for u in unused if pack_name(u.pack_id) not in young]
    report.young_packs = len(unused) - len(delete)
    if report.young_packs:
        report.notices.append(
            f"{report.young_packs} pack(s) no snapshot uses were written less than {LEFTOVER_MIN_AGE // 60} "
            "minutes ago (or after another lock was taken) and were kept: a running backup may still "
            "commit them (a later prune removes them)"
        )
    # A pack whose every blob is used is never repacked: its header alone is no waste, and in an
    # unencrypted repository the copy would have the same bytes, so the same name as the pack
    # that step 3 deletes.
    partial = [
        u
        for u in packs.values()
        if u.info is not None and u.used and len(u.used) < len(u.entries) and pack_name(u.pack_id) not in young
    ]
    kept_bytes = sum(u.size for u in packs.values() if u.info is not None and u.used)
    repack = _choose_repack(partial, report, now, kept_bytes)
    vanished = [u for u in packs.values() if u.info is None]
    for u in vanished:
        report.notices.append(f"{pack_name(u.pack_id)} is listed in the index but absent; no snapshot needs it")

    leftovers, young_leftovers = _leftovers(report, listing, set(packs), young)
    temporary = _old_temporary_files(repo, aged_at, skew)

    report.deleted_packs = len(delete)
    report.repacked_packs = len(repack)
    report.leftover_packs = len(leftovers)
    report.young_leftovers = young_leftovers
    report.temporary_files = len(temporary)
    report.bytes_freed = sum(u.size for u in delete + repack) + sum(i.size for i in leftovers)
    report.bytes_written = sum(u.used_bytes for u in repack)  # the new packs' blobs (headers aside)
    # An index object whose claim to supersede others was ignored (write-only: not the owner's,
    # repo/repository.py `open_index`) is replaced too, by one that the owner's key covers.
    # So is one listing a wrong entry for a blob beside its genuine one in the same pack.
    rewrite_index = bool(
        delete
        or repack
        or vanished
        or superseded & set(objects)
        or repo.problems.claims
        or beaten
        # Past the bound beyond the objects the merge writes (counted as it writes them: a
        # count of blobs alone falls short and the next prune would merge again, and the next).
        or len(live) > MAX_INDEX_OBJECTS + len(index_parts({pid: u.entries for pid, u in packs.items()}))
    )
    report.indexes_replaced = len(objects) if rewrite_index else 0
    if dry_run:
        report.check_records = len(_forgotten_check_records(repo))
        return

    # 1. New packs, durable before anything refers to them.
    new_packs: dict[str, list[PackEntry]] = {}
    if repack:
        progress.phase("repacking", files=len(repack), size=sum(u.size for u in repack), unit="packs")
        # Streamed: one old pack in memory at a time.
        new_packs = repo.repack(_sealed_blobs(repo, repack, progress))
        report.bytes_written = sum(listing_size(repo, p) for p in new_packs)
    committed = {s.id for s in snapshots}
    _stop_if_new_snapshots(repo, committed, "before changing the index or deleting anything; run it again")
    # The commit point is next: a lock another process removed meanwhile (`phx unlock`) may have
    # let a backup start that relies on what prune is about to delete.
    repo.locks.confirm_exclusive("prune")
    # 2. One index for everything still needed, superseding every index object read.
    old: list[str] = []
    if rewrite_index:
        gone = {u.pack_id for u in delete + repack + vanished}
        keep = {pid: u.entries for pid, u in packs.items() if pid not in gone}
        keep.update(new_packs)
        old = sorted(objects)
        written = set(repo.write_index_parts(keep, [n.split("/")[-1] for n in old]))
        old = [n for n in old if n not in written]  # never a part just written under that name
    _stop_if_new_snapshots(repo, committed, "before deleting anything; run `phx repair index`, then prune again")
    # 3. Packs: nothing live refers to them any more. Each deletion confirms the lock first
    # (`Confirmer.step`): a suspend or a removed lock mid-way stops here, and the order makes
    # stopping anywhere safe (the new index no longer lists these packs; the old index objects,
    # deleted last, are superseded by it).
    progress.phase("deleting packs", files=len(delete) + len(repack) + len(leftovers), unit="packs")
    for u in delete + repack:
        if u.pack_id not in new_packs:  # never a pack a copy has just been written under
            repo.confirmer.step(DELETED)
            repo.backend.delete(pack_name(u.pack_id))
        progress.advance(files=1)
    for info in leftovers:
        # A repack may have just written the very same bytes as a leftover of an earlier,
        # interrupted prune (same blobs, and in an unencrypted repository the same seals).
        if info.name.split("/")[-1] not in new_packs:
            repo.confirmer.step(DELETED)
            repo.backend.delete(info.name)
        progress.advance(files=1)
    # 4. The old index objects last: the new one lists everything they list that is still needed,
    # and while they exist they name what a prune stopped before deleting.
    for name in old:
        repo.confirmer.step(DELETED)
        repo.backend.delete(name)
    for name in temporary:
        repo.confirmer.step(DELETED)  # outside the suppress: a lock doubted or gone stops the prune here
        with contextlib.suppress(PhoenixError):
            repo.backend.delete_temporary(name)
    # 5. The integrity check records of snapshots that are gone (repo/checks.py).
    for name in _forgotten_check_records(repo):
        repo.confirmer.step(DELETED)  # outside the try: a lock doubted or gone stops the prune here
        try:
            repo.backend.delete(name)
        except PhoenixError as exc:
            # Nothing needs it gone (it counts for no restore): what prune did stands.
            report.notices.append(f"{name} could not be deleted ({exc}); it counts for nothing")
            continue
        report.check_records += 1
    with contextlib.suppress(PhoenixError):
        repo.backend.abort_abandoned_uploads(everything=False)
    seen = state.entry(state_key(repo, report.target)).get("seen", {})
    for name in [pack_name(u.pack_id) for u in delete + repack] + [i.name for i in leftovers]:
        seen.pop(name, None)


def _forgotten_check_records(repo: Repository) -> list[str]:
    """The integrity check records whose snapshot the repository no longer holds (listed now: a
    snapshot committed since prune started keeps its records), and those that do not open with
    this repository's key (another key's, or planted: they never count)."""
    held = {info.name.removeprefix("snapshots/") for info in repo.backend.list("snapshots/")}
    gone, unreadable = checks.names_of_forgotten(repo, held)
    return sorted([*gone, *unreadable])


def listing_size(repo: Repository, pack_id: str) -> int:
    info = repo.backend.stat(pack_name(pack_id))
    return info.size if info is not None else 0


def refuse_if_damaged(
    repo: Repository, consequence: str = "prune would delete data they may need, so it refuses"
) -> None:
    """Prune decides what is garbage from what it can read: an unreadable snapshot's data would
    look unreferenced, and an unreadable index hides where blobs live. It refuses instead (and so
    does a key rotation, which would leave them behind under the retired key)."""
    problems = {**repo.problems.snapshots, **repo.problems.index}
    if problems:
        first = sorted(problems)[0]
        raise RepositoryError(
            f"{len(problems)} snapshot or index object(s) cannot be read (first: {first}); {consequence}; "
            "run `phx verify` to see what is damaged"
        )
    if repo.problems.rotation:
        raise RepositoryError(
            f"a `phx key rotate` on this machine did not finish ({len(repo.problems.rotation)} snapshot or index "
            f"object(s) are sealed with its other key); run `phx key rotate` to finish it, then run this again"
        )


def snapshot_blobs(repo: Repository, snapshots: list[Any]) -> set[bytes]:
    """Every blob the snapshots refer to; a tree that cannot be read stops the caller (prune)."""

    def load(tree_id: bytes) -> list[Node]:
        try:
            return repo.load_tree(tree_id)
        except (CorruptObject, ObjectNotFound) as exc:
            raise RepositoryError(
                f"tree {tree_id.hex()[:16]} cannot be read ({exc}); prune refuses to run on a damaged "
                "repository; run `phx verify` to see what is affected"
            ) from exc

    try:
        return used_blobs(snapshots, load)
    except CorruptObject as exc:  # a database's extent list (format 6): the blobs it names are unknown
        raise RepositoryError(
            f"{exc}; prune refuses to run on a damaged repository; run `phx verify` to see what is affected"
        ) from exc


def _choose_repack(partial: list[PackUse], report: TargetPrune, now: float, kept_bytes: int) -> list[PackUse]:
    """Packs at least half unreferenced; then the most unreferenced others while the waste left in
    kept packs exceeds MAX_UNUSED_FRACTION of what the repository keeps."""
    candidates = []
    for u in partial:
        reason = _cannot_repack(u, now)
        if reason:
            report.notices.append(f"{pack_name(u.pack_id)} is {u.unused_ratio:.0%} unreferenced but {reason}")
        else:
            candidates.append(u)
    candidates.sort(key=lambda u: (-u.unused_ratio, u.pack_id))
    total = kept_bytes
    waste = sum(u.unused_bytes for u in partial)
    chosen = []
    for u in candidates:
        if u.unused_ratio >= REPACK_MOSTLY_UNUSED or waste > MAX_UNUSED_FRACTION * total:
            chosen.append(u)
            waste -= u.unused_bytes
            total -= u.unused_bytes
    return chosen


def _cannot_repack(u: PackUse, now: float) -> str | None:
    info = u.info
    if info is None or info.storage_class is None:
        return None
    if info.storage_class in _NEEDS_THAW:
        return f"is in {info.storage_class} (reading it needs a thaw); it stays until it is entirely unused"
    days = _MIN_DAYS.get(info.storage_class)
    if days and info.modified is not None and now - info.modified < days * 86400:
        return f"is within the {days}-day minimum storage period of {info.storage_class}"
    return None


def _sound_copy(repo: Repository, held: list[tuple[str, PackEntry]]) -> tuple[str, PackEntry]:
    """Of a blob's copies in several packs, the first that opens and whose plaintext hashes to its
    id: the copy prune keeps is the only one left afterwards. A tag proves the stored bytes were
    sealed under the blob's id, not that they are the blob: in a write-only repository the machine
    that backs up seals under its own key, and in any repository a key holder or a bug can seal
    other bytes under an id (a wrong copy, which every reader passes over for a copy that proves:
    `Repository.load_proving`; kept first in name order, it left the file with no good copy).
    Only blobs held more than once are read here."""
    for pack_id, e in held:
        sealed = repo.backend.read_range(pack_name(pack_id), e.offset, e.stored)
        with contextlib.suppress(CorruptObject):
            what = f"blob {e.id.hex()[:16]} in {pack_name(pack_id)}"
            repo.open_blob(e.type, e.id, e.compression, sealed, e.raw, what)
            return pack_id, e
    return held[0]


def _sealed_blobs(
    repo: Repository, packs: list[PackUse], progress: Reporter | None = None
) -> Iterator[tuple[PackEntry, bytes]]:
    """The used blobs of `packs`, still sealed, checked on the way (a damaged blob must fail the
    prune before its only copy is replaced, not be copied on)."""
    for u in packs:
        data = repo.backend.read(pack_name(u.pack_id))
        if progress is not None:
            progress.advance(files=1, size=len(data))
        for e in sorted(u.used, key=lambda e: e.offset):
            sealed = data[e.offset : e.offset + e.stored]
            repo.sealer.open(sealed, blob_aad(e.type, e.id), f"blob {e.id.hex()[:16]} in {pack_name(u.pack_id)}")
            yield e, sealed


def _stop_if_new_snapshots(repo: Repository, known: set[str], then: str) -> None:
    """Under prune's exclusive lock no snapshot may appear; one that did was written by a process
    that did not see the lock, and its data may look unused: stop before deleting anything."""
    new = sorted({info.name.split("/")[-1] for info in repo.backend.list("snapshots/")} - known)
    if new:
        raise RepositoryError(
            f"snapshot {new[0][:8]} was written while prune ran, by a process that did not see prune's lock; "
            f"prune stopped {then}"
        )


def _young_packs(
    repo: Repository,
    report: TargetPrune,
    listing: dict[str, ObjectInfo],
    state: PruneState,
    now: float,
    skew: float,
) -> set[str]:
    """The packs prune must keep whatever they hold: written less than LEFTOVER_MIN_AGE ago, or
    after the oldest other lock present was taken (a dry run may run beside backups). `skew`: how
    far the store's clock is ahead of ours, never more than 0."""
    entry = state.entry(state_key(repo, report.target))
    seen = entry.setdefault("seen", {})
    if not isinstance(seen, dict):
        seen = entry["seen"] = {}
    cutoff = now - LEFTOVER_MIN_AGE
    for lock in repo.locks.others():
        cutoff = min(cutoff, lock.created or 0.0)  # an older Phoenix's lock: its start is unknown
    young = set()
    for name, info in listing.items():
        # The store's own modification time (on our clock) when it has one; else when prune first
        # saw it.
        born = info.modified - skew if info.modified is not None else float(seen.setdefault(name, now))
        if info.modified is None and born > now:
            # First seen by a clock that was ahead: seen now, or the pack stayed young until then.
            born = seen[name] = now
        if born >= cutoff:
            young.add(name)
    for name in list(seen):
        if name not in listing:
            del seen[name]
    return young


def _leftovers(
    report: TargetPrune, listing: dict[str, ObjectInfo], indexed: set[str], young_packs: set[str]
) -> tuple[list[ObjectInfo], int]:
    """Packs no live index lists, old enough to delete; and how many are kept for being young."""
    old: list[ObjectInfo] = []
    young = 0
    for name, info in sorted(listing.items()):
        if name.split("/")[-1] in indexed:
            continue
        if name in young_packs:
            young += 1
        else:
            old.append(info)
    if young:
        report.notices.append(
            f"{young} unindexed pack(s) younger than {LEFTOVER_MIN_AGE // 60} minutes were kept: they may "
            "belong to a backup that is still running (a later prune removes them)"
        )
    return old, young


def _old_temporary_files(repo: Repository, now: float, skew: float) -> list[str]:
    """Temporary files of interrupted writes on a local store, older than the lock stale age on
    the store's clock (`skew`, never more than 0, as for packs): on a folder shared over NFS, a
    machine whose clock is ahead must not take another machine's file being written for old.
    Only a local store has them (remote PUTs are atomic)."""
    # A time of 0 (the epoch, as an archive or a file system without times gives) is old, not unknown.
    return [
        t.name
        for t in repo.backend.list_temporary()
        if now + skew - (now + skew if t.modified is None else t.modified) >= LEFTOVER_MIN_AGE
    ]


def prune_due(state: PruneState, repo: Repository, target: str, now: float) -> bool:
    """A day since the last prune, or a last prune dated after `now`: recorded by a clock that was
    ahead (or ours is behind now), it would otherwise stop the daily prune until that date, the
    forgotten data kept meanwhile."""
    last = state.last_prune(state_key(repo, target))
    return last is None or not 0 <= now - last < AUTO_PRUNE_INTERVAL
