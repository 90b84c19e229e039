"""Replication: copy what a target lacks from the first target, snapshots last (the engine of every
backup's replication and of `phx sync`, ops/sync.py).

Backups write the first enabled target; every other enabled target is a replica that receives
the same objects under the same names. For each replica, in its own thread:

1. initialise it on first use: key slots, then `config` (so a half-copied replica is already a
   valid, openable repository), or check that it holds the same repository (same id);
2. take a shared lock on it (locks belong to one target and are never copied);
3. abort multipart uploads that interrupted runs left (all of them when no other process holds
   a lock there, otherwise those older than a day);
4. copy the key slots it lacks (or holds in another version);
5. copy every index object the replica lacks together with the packs it lists that the replica
   lacks (several uploads in flight; data packs marked cold for S3's storage class), then those
   index objects. One that supersedes index objects the replica holds (a prune's, or a backup's
   that found packs lost on the first target) is preceded by an index object of the replica's
   own listing the packs the replica holds that would otherwise be listed by no index there.
   One that an index object of the replica's own supersedes (the replica's prune dropped its
   packs, which no snapshot there used yet) is not read there: one of the replica's own lists its
   packs too;
6. only when all of that succeeded, copy the snapshot objects it lacks, oldest first, each
   followed by a checkpoint (Git: one commit naming the snapshot), then the capture segments
   (`phx watch`, repo/captures.py) it lacks;
7. when the first target's config differs (after `phx key rotate`, or a format upgrade), copy it:
   the replica's commit point. Then (and whenever the replica still holds slots the first target
   does not) delete the replica's packs, index objects and snapshots that the first target lacks
   and that the current key does not authenticate: what the retired key sealed (and the check
   records the retired key opens). Under `snapshots/` and `captures/`, what no key opens (neither
   the current one nor a retired one the owner's credentials find in the replica's old slots and a
   rotation record names) is junk: it keeps nothing from being brought over, and it is named
   (`TargetReport.junk`) and left in place;
8. delete the key slots the first target no longer has (a slot removed with `phx key
   remove/passwd/rotate` must stop opening replicas; those that can wrap no retired key, the
   current key's and junk under keys/, go before step 7 judges anything); then publish (Git: push).

An index object of the first target that does not decode is skipped and named (`TargetReport.damaged`,
the target's error) rather than stopping the copy, and a pack or index object the replica lists at
another size than the first target's is copied again.

A crash or a failure at any step therefore leaves no replica holding a snapshot whose data is
missing, and the next run (or `phx sync`) copies what is still missing. Every copied object is
checked against its name (SHA-256) first, so damage on the first target is never replicated.
Packs that no index lists (a crashed backup's leftovers, or a running backup's packs) are not
copied. A failing replica never stops the others: its error is its outcome.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

from phoenix_backup.errors import (
    AppendOnlyRefused,
    CorruptObject,
    IdentityRequired,
    ObjectExists,
    ObjectNotFound,
    PhoenixError,
    RepositoryError,
    RepositoryExists,
    StorageError,
    UnsupportedFormat,
)
from phoenix_backup.repo import checks, retired
from phoenix_backup.repo import keys as keyslots
from phoenix_backup.repo.cache import Cache, entry_key, entry_mac, write_entry
from phoenix_backup.repo.crypto import BlobType, Sealer, same_bytes
from phoenix_backup.repo.locks import DELETED, MORE_COMMITTED, Confirmer, LockManager
from phoenix_backup.repo.pack import PackEntry, PackIds, names_content, pack_name
from phoenix_backup.repo.repository import RepoConfig, Repository, index_parts, sealed_with, snapshot_order
from phoenix_backup.repo.snapshot import Snapshot
from phoenix_backup.reporting import Reporter, Silent
from phoenix_backup.state import TargetOutcome
from phoenix_backup.storage.base import Backend, is_valid_name

# The keys a rotation retired that a replica's old slots hold (`_retired_keys`); None: not known.
RetiredKeys = list[keyslots.MasterSecrets] | None

# Objects copied at once to one replica (each a pack of up to ~24 MiB in memory).
COPY_WORKERS = 4


@dataclass
class TargetReport:
    """What replication did to one target."""

    name: str
    location: str = ""
    ok: bool = True
    error: str | None = None
    initialised: bool = False
    objects: int = 0  # objects copied (packs, index, snapshots, keys)
    bytes: int = 0
    snapshots: int = 0  # snapshot objects copied
    keys_removed: int = 0
    retired: int = 0  # objects of a retired key deleted (after `phx key rotate`)
    junk: list[str] = field(default_factory=list)  # objects there no key opens (left in place, said)
    damaged: list[str] = field(default_factory=list)  # the first target's objects skipped as damaged
    # Packs the first target lost that were copied from another target: (pack, that target).
    recovered: list[tuple[str, str]] = field(default_factory=list)
    uploads_aborted: int = 0
    seconds: float = 0.0
    # Told of the objects to copy and of each one copied (not part of the report itself).
    progress: Reporter = field(default_factory=Silent, repr=False, compare=False)
    # Set when the command stops (Ctrl-C, SIGTERM): no object is copied from then on.
    stopping: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    # The locks held on both sides while copying, confirmed before each object (`Confirmer.step`).
    confirmer: Confirmer | None = field(default=None, repr=False, compare=False)

    @property
    def throughput(self) -> float:
        """Bytes per second copied to the target (0 when nothing was copied)."""
        return self.bytes / self.seconds if self.seconds > 0 and self.bytes else 0.0

    def outcome(self) -> TargetOutcome:
        return TargetOutcome(self.ok, self.error)

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "error": self.error,
            "location": self.location,
            "initialised": self.initialised,
            "objects": self.objects,
            "bytes": self.bytes,
            "snapshots": self.snapshots,
            "keysRemoved": self.keys_removed,
            "retired": self.retired,
            "junk": self.junk,
            "damaged": self.damaged,
            "recovered": {obj: holder for obj, holder in self.recovered},
            "uploadsAborted": self.uploads_aborted,
            "seconds": round(self.seconds, 3),
            "bytesPerSecond": round(self.throughput),
        }


def seed_repository(source: Backend, dest: Backend) -> None:
    """Make an empty `dest` hold the repository of `source`: key slots first, `config` last, so
    `dest` counts as a repository only once it can be opened."""
    slots = {info.name: source.read(info.name) for info in source.list("keys/")}
    slots = {name: data for name, data in slots.items() if _is_slot(data)}  # no damaged or planted one
    dest.create(slots)
    for name, data in slots.items():
        dest.write(name, data)
    dest.write("config", source.read("config"), exclusive=True)


def _carry_mark(repo: Repository, dest: Backend, confirm: Confirmer, report: TargetReport) -> None:
    """Before a capture segment is copied to `dest`: when the first target's config is format 5
    (docs/repository-format.md §2) and `dest`'s is the same under the same key without it, `dest`
    gets the first target's. Never the reverse: a version is never lowered."""
    source_raw, raw = repo.backend.read("config"), dest.read("config")
    if raw == source_raw:
        return
    ours = RepoConfig.from_bytes(source_raw, repo.backend.location)
    theirs = RepoConfig.from_bytes(raw, dest.location)
    marked = ours.captures and not theirs.captures and ours.same_but_captures(theirs)
    if marked and repo.authenticates(ours) and repo.authenticates(theirs):
        confirm.now(MORE_COMMITTED)
        dest.write("config", source_raw)
        report.objects += 1


def replicate(
    repo: Repository,
    name: str,
    dest: Backend,
    notice: Callable[[str], None],
    progress: Reporter | None = None,
    stopping: threading.Event | None = None,
    ran: str = "sync",
    others: Mapping[str, Backend] | None = None,
) -> TargetReport:
    """Copy what `dest` lacks from `repo` (the first target). Never raises for the target's own
    failures: they are the report's error. `progress` is told the packs and index objects to copy
    (a phase `uploading`), then each object copied. Once `stopping` is set, the copy ends after
    the objects under way, as a failure does: nothing published, the next run copies the rest.
    The credentials that opened `repo` open the replica's old slots after a key rotation: what the
    retired key sealed is told from junk no key opens (without them, everything is taken for the
    former). A pack the first target lost that one of the `others` (the repository's other
    targets) holds whole is copied from there."""
    report = TargetReport(name, dest.location, progress=progress if progress is not None else Silent())
    if stopping is not None:
        report.stopping = stopping
    started = time.monotonic()
    try:
        lost = _replicate(repo, dest, notice, report, ran, others or {})
        if lost:
            # A commit pushed on top of the remote (another clone's, or anyone's with push access)
            # deleted snapshots, or packs an index object there lists, that the first target holds,
            # and the merge before the push took that deletion: the remote lacked them, and the
            # sync said nothing. A `phx forget` deletes on the first target too, and a prune there
            # drops a pack from its index objects first, so these were neither: copied again, said.
            notice(
                f"warning: target {name}: a commit pushed to {dest.location} by someone else deleted or changed "
                f"{len(lost)} object(s) that the first target holds ({_lost_kinds(lost)}; first: {lost[0]}); "
                "not a `phx forget` (it deletes on every target); copying them there again: look at the "
                "remote's history for who deletes there"
            )
            report.damaged.clear()
            report.recovered.clear()
            again = _replicate(repo, dest, notice, report, ran, others or {}, lost)
            if again:
                raise RepositoryError(
                    f"target {name} lost {len(again)} object(s) that the first target holds ({_lost_kinds(again)}; "
                    f"first: {again[0]}) again to a commit pushed to {dest.location} meanwhile; they are missing "
                    "there; look at the remote's history for who deletes there, then run `phx sync`"
                )
    except PhoenixError as exc:
        report.ok, report.error = False, str(exc)
    except OSError as exc:  # e.g. the Git clone's folder cannot be written
        report.ok, report.error = False, f"{exc.strerror or exc} at {dest.location}"
    finally:
        report.seconds = time.monotonic() - started
    return report


def _replicate(
    repo: Repository,
    dest: Backend,
    notice: Callable[[str], None],
    report: TargetReport,
    ran: str,
    others: Mapping[str, Backend],
    again: Collection[str] = (),
) -> list[str]:
    """Copy what `dest` lacks (and the packs `again`, lost there to others' commits, though an
    index object there lists them); return the snapshots and the packs an index object there lists
    that the first target holds and `dest` lost to others' commits merged before its publish (Git),
    by name."""
    source = repo.backend
    switched = False
    seeded = False
    if not dest.exists():
        try:
            seed_repository(source, dest)
            seeded = True
        except (RepositoryExists, ObjectExists):
            # Another run (a second sync, a backup's replication) made it meanwhile: checked below.
            # With no config there, it is no replica at all (a folder of other files): said as such.
            if not dest.exists():
                raise
    if seeded:
        report.initialised = True
        report.objects += 2
        notice(f"initialised target {report.name} at {dest.location}")
    else:
        raw = dest.read("config")
        theirs = RepoConfig.from_bytes(raw, dest.location)
        if theirs.id != repo.config.id:
            raise RepositoryError(
                f"{dest.location} holds another repository (id {theirs.id[:8]}, not {repo.config.id[:8]}); "
                f"point targets.{report.name} at an empty location or empty it"
            )
        source_raw = source.read("config")
        switched = raw != source_raw
        if switched and theirs.same_but_captures(repo.config) and repo.authenticates(theirs):
            # The same key: one of the two has the format 5 mark of `phx watch` and the other not
            # yet (`_carry_mark`). No rotation to bring over.
            switched = False
    old: RetiredKeys = None  # the retired keys there, once looked for
    locks = LockManager(dest, repo.locks.sealer, notice)
    with locks.acquire(exclusive=False, command="replicate", ran=ran) as held:
        # Both locks, the first target's and this one's: a prune on either side that judged one
        # stale (a suspend) or removed it may delete what this copy relies on or is committing.
        confirm = report.confirmer = Confirmer([repo.locks, locks])
        if switched and repo.config.write_only is None:
            # Before anything is copied: an old snapshot or segment here that no rotation retired
            # is the only copy left. The replica stays as it is (its old key opens all it holds,
            # and no object of the new key there reads as damage under it); the sync says so.
            old = _retired_keys(repo, dest)
            _refuse_unretired(repo, dest, report, old, brought_over=False)
        # Every writer holds a lock: with no other lock present, every unfinished upload is a
        # leftover of a killed run. (A writer locking right after this check and starting an
        # upload before the listing could lose that upload; it then fails and the next sync
        # copies the object again. Nothing is ever half-written.)
        alone = all(info.name == held.name for info in locks.all())
        report.uploads_aborted = dest.abort_abandoned_uploads(everything=alone)
        stale_keys = _add_keys(source, dest, report)
        # A slot of the current key that the first target no longer has (`phx key remove`, `phx
        # key passwd`), or junk under keys/, wraps no retired key: it goes now, whatever else the
        # replica holds (a refusal below must not leave a removed, maybe leaked, credential opening
        # the replica, and junk there must not make each sync look for a retired key's objects).
        removed = _wrapping_no_retired_key(repo, dest, stale_keys)
        for name in removed:
            confirm.step(DELETED)
            dest.delete(name)
            report.keys_removed += 1
        stale_keys = [n for n in stale_keys if n not in removed]
        _add_run_keys(source, dest, report)
        sizes = {info.name: info.size for prefix in ("data/", "index/") for info in source.list(prefix)}
        there = {info.name: info.size for info in dest.list("data/")}
        # A pack the replica lists at another size than the first target's (truncated, a 0-byte
        # object) is not held there: it is copied again, or its backups would not restore there.
        present = {name for name, size in there.items() if sizes.get(name, size) == size}
        # So is an index object (copied again below, as one the replica lacks).
        present_index = {info.name for info in dest.list("index/") if sizes.get(info.name, info.size) == info.size}
        source_index = {name for name in sizes if name.startswith("index/")}
        missing_index = sorted(source_index - present_index)
        # An index object of the first target that does not decode (damaged, or planted by anyone
        # who can write that storage) is skipped and named: it must not keep every replica from
        # new backups. The packs the first target knows only from their headers (those a damaged
        # index object listed) are copied, listed by an index object of the replica's own.
        readable: dict[str, tuple[dict[str, list[PackEntry]], list[str]]] = {}
        for index_name in missing_index:
            try:
                readable[index_name] = _index_packs(repo, index_name)
            except CorruptObject:
                report.damaged.append(index_name)
        # Packs they list that the first target does not hold (asked by name: a listing may lag)
        # are not copied but named: one index object of another repository planted there (it
        # decodes, and passes its checksum unencrypted) stopped every sync before any snapshot.
        # An index object none of whose packs the first target holds is not copied either.
        absent = _absent_packs(source, readable, sizes, set(there))
        # One the repository's other targets hold is taken from there (the first target lost it:
        # snapshots copied without it would not restore from this replica either).
        data_packs = {
            pack_name(p): bool(e) and e[0].type == BlobType.DATA for r in readable.values() for p, e in r[0].items()
        }
        for obj in sorted(absent):
            holder = _copy_from_others(others, dest, obj, data_packs.get(obj, False), report, repo.config.pack_ids)
            if holder is not None:
                absent.discard(obj)
                present.add(obj)
                report.recovered.append((obj, holder))
        for index_name in list(readable):
            kept = [p for p in readable[index_name][0] if pack_name(p) not in absent]
            if readable[index_name][0] and not kept:
                del readable[index_name]
                report.damaged.append(index_name)
        report.damaged.extend(sorted({pack_name(p) for r in readable.values() for p in r[0]} & absent))
        missing_index = [n for n in missing_index if n in readable]
        # Those a replica's own index object supersedes (its prune dropped their packs, used by
        # no snapshot there yet): copied again they would not be read there.
        revived = _superseded_there(repo, dest, sorted(present_index - source_index), missing_index)
        revive: dict[str, list[PackEntry]] = {}
        packs: dict[str, bool] = {}  # pack object name -> is a data pack (may go cold)
        listed: set[bytes] = set()  # blobs the copied index objects list
        superseded: set[str] = set()  # index objects they supersede
        superseding: set[str] = set()  # those of them that supersede others
        for index_name in missing_index:
            listing, sup = readable[index_name]
            superseded.update(f"index/{s}" for s in sup)
            if sup:
                superseding.add(index_name)
            for pack_id, entries in listing.items():
                listed.update(e.id for e in entries)
                if index_name in revived and entries:
                    revive.setdefault(pack_id, entries)
                obj = pack_name(pack_id)
                if obj not in present and obj not in absent:
                    # Entries unknown (a write-only repository's machine that backs up reads only
                    # the covers of others' index objects): stays readable at once.
                    packs[obj] = bool(entries) and entries[0].type == BlobType.DATA
        # (Those the replica holds already came with an index object that lists them there.)
        # Only when the first target lists a pack the replica lacks that no copied index object
        # lists: the whole index is read then, and each sync after a damaged object stays cheap.
        lacking = {n for n in sizes if n.startswith("data/")} - present - packs.keys()
        unindexed = _unindexed(repo, listed, present) if report.damaged and lacking else {}
        for pack_id, entries in unindexed.items():
            packs[pack_name(pack_id)] = entries[0].type == BlobType.DATA
        # Those the replica holds damaged that no copied index object lists (theirs are listed there).
        recopy = sorted(name for name in there if name not in present and name not in packs)
        # A pack a commit merged into the replica deleted (its index object still there): the
        # replica's listing lacks it, and no index object it lacks lists it.
        recopy += sorted(n for n in again if n.startswith("data/") and n in sizes and n not in there and n not in packs)
        todo = [*packs, *recopy, *missing_index]
        report.progress.phase("uploading", files=len(todo), size=sum(sizes.get(n, 0) for n in todo), unit="objects")
        if unindexed:
            # Before the packs: a replica that held them and no index object listing them (a run
            # stopped between the two) was no longer given one, and the next sync copied the
            # snapshots needing them ("not in the index"). Stopped before the packs, the next
            # sync copies them and writes this again. Unsealed, it supersedes an id no object has:
            # it must not take the damaged object's name (what it lists), which a replica holding
            # it takes for holding that object's packs.
            sup = [] if repo.config.encrypted else [os.urandom(32).hex()]
            written = repo.sibling(dest).write_index_parts(unindexed, sup)
            with _COUNT_LOCK:
                report.objects += len(written)
        _copy_all(source, dest, [(n, cold) for n, cold in sorted(packs.items())], report, repo.config.pack_ids)
        refused: list[str] = []  # the first refusal of an append-only target, said once the rest is copied
        for name in recopy:  # one at a time: rare, and a damaged copy on the first target is skipped
            try:
                _copy_one(source, dest, name, False, report, repo.config.pack_ids)
            except CorruptObject:
                report.damaged.append(name)  # the replica's copy stays; `phx verify` tells which is whole
            except AppendOnlyRefused as exc:
                # Not a reason to keep every new backup from an append-only replica (one pack
                # truncated there, or a listing giving another size, stopped every sync there).
                refused.append(str(exc))
            else:
                present.add(name)
        confirm.now(MORE_COMMITTED)
        _keep_indexed(repo, dest, sorted(superseded & present_index), listed, present, report)
        if revive:  # an index object of the replica's own lists them
            replica, (folder, key) = repo.sibling(dest), _superseded_cache(repo)
            written = []
            for part in index_parts(revive):
                # Unsealed, a name follows from what the object lists, and an earlier sync's
                # (stopped before the snapshot) listing these very packs may since be superseded
                # by a prune of the replica, hiding this one too: each supersedes an id no object
                # has. (Sealed, a name is new each time; a write-only repository's machine that
                # backs up could not claim to supersede anything.)
                sup = [] if repo.config.encrypted else [os.urandom(32).hex()]
                for name in replica.write_index_parts(part, sup):
                    written.append(name)
                    if folder is not None:  # the next sync need not read it
                        _cache_superseded(folder, key, name, sup)
            with _COUNT_LOCK:
                report.objects += len(written)
        # Those that supersede others after the rest are all written (copies run in parallel): an
        # index written in parts (`write_index_parts`) has only its last part superseding the old
        # objects, and the replica must not retire them before it holds every part (a replication
        # stopped between them left blobs listed by no live index object there).
        _copy_all(source, dest, [(n, False) for n in missing_index if n not in superseding], report)
        _copy_all(source, dest, [(n, False) for n in missing_index if n in superseding], report)
        # (Those a merged commit changed there are copied again over theirs.)
        have = {info.name for info in dest.list("snapshots/")} - set(again)
        snapshots = _lacking_snapshots(repo, have, report)
        for snap in snapshots:  # oldest first
            obj = f"snapshots/{snap.id}"
            if obj in have:
                continue
            confirm.now(MORE_COMMITTED)  # each snapshot is a commit point on the replica
            _copy_one(source, dest, obj, False, report)
            report.snapshots += 1
            dest.checkpoint(f"phoenix snapshot {snap.name} ({snap.id[:8]})")
        if not repo.can_read:
            # Backing up a write-only repository, this machine knows only the snapshots it wrote:
            # the others (older, another machine's) are copied by name.
            known = {f"snapshots/{snap.id}" for snap in snapshots}
            for obj in sorted({info.name for info in source.list("snapshots/")} - have - known):
                _copy_one(source, dest, obj, False, report)
                report.snapshots += 1
        # The capture segments of `phx watch` and the integrity check records (they name snapshots,
        # copied above). The format 5 mark first, read now (a watch may have written it since).
        if not switched:
            _carry_mark(repo, dest, confirm, report)
        for prefix in ("captures/", "checks/", retired.PREFIX):
            have_objects = {info.name for info in dest.list(prefix)}
            # An object under checks/ too large for a record is not read (nor copied).
            wanted = {
                info.name
                for info in source.list(prefix)
                if prefix != checks.PREFIX or info.size <= checks.MAX_RECORD_SIZE
            }
            for obj in sorted(wanted - have_objects):
                _copy_one(source, dest, obj, False, report)
        if stale_keys and not switched and repo.config.write_only is None:
            old = _retired_keys(repo, dest)
            # Switched by a run that stopped before the removal (or slots planted since).
            _refuse_unretired(repo, dest, report, old, brought_over=True)
        if switched:
            confirm.now(MORE_COMMITTED)
            dest.write("config", source.read("config"))
            report.objects += 1
        if (switched or stale_keys) and repo.config.write_only is None:
            # What a retired key sealed (after a rotation). A write-only repository is never
            # rotated, and its objects are sealed under many run keys.
            _remove_retired(repo, dest, report, old)
            if report.junk:
                notice(
                    f"target {report.name} holds {len(report.junk)} object(s) under snapshots/ or captures/ that "
                    f"neither the current key nor the key a rotation retired opens, or that the retired key sealed "
                    f"after this target was brought over to the new key (first: {report.junk[0]}): damaged or "
                    "planted, not a snapshot or segment of this repository; they were left in place, and did not "
                    "keep the target on its old key; delete them from the target's storage"
                )
        for name in stale_keys:
            confirm.step(DELETED)
            dest.delete(name)
            report.keys_removed += 1
        dest.checkpoint("phoenix: sync repository objects")
        # Listed only where a publish may merge (a Git clone's working tree): S3 would be listed
        # whole at each sync.
        before = _listed(dest) if dest.merges_on_publish else {}
    lost: list[str] = []
    if dest.publish() and before:
        after = _listed(dest)
        # Deleted, or changed to another size (a snapshot, which no size check guards, stayed so).
        gone = {name for name, size in before.items() if after.get(name) != size}
        if gone:  # those the first target no longer holds were forgotten (on every target) or pruned
            lost = _needed_there(repo, dest, sorted(gone & _listed(source).keys()))
    errors: list[str] = []  # both said when both happen
    if refused:
        errors.append(
            f"target {report.name} lists {len(refused)} object(s) at another size than the first target's and "
            f"everything else was copied; {refused[0]}"
        )
    if report.recovered:
        obj, holder = report.recovered[0]
        errors.append(
            f"{len(report.recovered)} pack(s) the first target's index lists are missing there (first: {obj}); "
            f"target {holder} holds a copy, copied from there to target {report.name}, which is whole; bring it "
            f"back to the first target with `phx repair objects --from {holder}`"
        )
    if report.damaged:
        errors.append(
            f"{len(report.damaged)} object(s) on the first target are damaged, missing there, or no object of "
            "this repository "
            f"(first: {report.damaged[0]}) and were not copied to target {report.name}; everything else was; "
            "run `phx verify` to see what they affect: `phx repair objects --from TARGET` brings back a whole "
            "copy a replica holds, and what was planted there is deleted from the first target's storage"
        )
    if errors:
        report.ok = False
        report.error = "; also, ".join(errors)
    return lost


_MERGED_PREFIXES = ("data/", "snapshots/")


def _listed(backend: Backend) -> dict[str, int]:
    """The packs and snapshots `backend` lists, with their sizes (a Git clone's: its working tree)."""
    return {info.name: info.size for prefix in _MERGED_PREFIXES for info in backend.list(prefix)}


def _needed_there(repo: Repository, dest: Backend, gone: list[str]) -> list[str]:
    """Those of `gone` (deleted at `dest` by others' commits, held by the first target) whose
    absence there loses something: a snapshot, or a pack a live index object there still lists.
    A pack no index object there lists any more went with a prune of that target (another
    machine's `phx prune`), and so did an index object (one of its own supersedes it, or the next
    sync copies it again with its packs)."""
    packs = [n for n in gone if n.startswith("data/")]
    listed: set[str] = set()
    if packs:  # the replica's index objects read only then (a Git clone's: local files)
        indexes = repo.sibling(dest).read_index_objects()
        superseded = {f"index/{s}" for _listing, sup in indexes.values() for s in sup}
        listed = {pack_name(p) for name, (listing, _s) in indexes.items() if name not in superseded for p in listing}
    return [n for n in gone if n.startswith("snapshots/") or n in listed]


def _lost_kinds(names: list[str]) -> str:
    """How many of `names` are snapshots and packs (said in a warning)."""
    counts = {prefix: sum(n.startswith(prefix) for n in names) for prefix in _MERGED_PREFIXES}
    return f"{counts['snapshots/']} snapshot(s), {counts['data/']} pack(s)"


def _lacking_snapshots(repo: Repository, have: set[str], report: TargetReport) -> list[Snapshot]:
    """The readable snapshots of the first target that the replica (`have`: its listing) lacks,
    oldest first (the order of `Repository.list_snapshots`). Only those are read: each sync read
    every snapshot of the first target (21 reads with 20 backups, for each replica, with nothing to
    copy). One unreadable is left out: gone since the listing (a forget elsewhere), or another
    machine's in a write-only repository (copied by name); a damaged one (or one still listed
    that its storage answers "not found" for) is named in `report.damaged`: the sync said "ok"
    for a replica that never received it."""
    out = []
    for info in repo.backend.list("snapshots/"):
        if info.name in have:
            continue
        try:
            out.append(repo.load_snapshot(info.name.removeprefix("snapshots/")))
        except CorruptObject:
            report.damaged.append(info.name)
        except ObjectNotFound:
            if repo.backend.stat(info.name) is not None:
                report.damaged.append(info.name)
        except IdentityRequired:
            continue
    return sorted(out, key=snapshot_order)


def _add_keys(source: Backend, dest: Backend, report: TargetReport) -> list[str]:
    """Copy the slots `dest` lacks or holds in another version; return the slots only `dest`
    holds, which go once the config is the first target's (a replica is never left without a
    slot that opens it)."""
    ours = {info.name for info in source.list("keys/")}
    theirs = {info.name for info in dest.list("keys/")}
    for name in sorted(ours):
        if name not in theirs or dest.read(name) != source.read(name):
            _copy_one(source, dest, name, False, report)
    return sorted(theirs - ours) if ours else []


def _wrapping_no_retired_key(repo: Repository, dest: Backend, names: list[str]) -> list[str]:
    """Those of the replica's slots `names` (the first target lacks them) that can wrap no key a
    rotation retired: one of the current key (its sealed metadata that key authenticates), and an
    object under keys/ that is no slot (bytes that do not parse, or a slot stored under another
    slot's id: no opening uses it). Removing them loses no way to open the replica's old objects."""
    if not repo.config.encrypted or repo.config.write_only is not None:
        return []
    out = []
    for name in names:
        try:
            slot = keyslots.KeySlot.from_json(dest.read(name))
        except CorruptObject:
            out.append(name)  # junk, not a slot
            continue
        except (UnsupportedFormat, ObjectNotFound):
            continue  # a newer Phoenix's slot: it may wrap a retired key
        if name != f"keys/{slot.id}" or (slot.version >= 2 and slot.with_info(repo.secrets).info is not None):
            out.append(name)
    return out


def _add_run_keys(source: Backend, dest: Backend, report: TargetReport) -> None:
    """Copy the run keys of a write-only repository that `dest` lacks, before anything sealed under them."""
    theirs = {info.name for info in dest.list("runkeys/")}
    _copy_all(source, dest, [(info.name, False) for info in source.list("runkeys/") if info.name not in theirs], report)


def _old_objects(repo: Repository, dest: Backend, prefixes: tuple[str, ...]) -> list[str]:
    """The replica's objects under `prefixes` that the first target lacks and the repository's
    key does not authenticate (sealed under a retired key, or damaged or planted there)."""
    out = []
    for prefix in prefixes:
        ours = {info.name for info in repo.backend.list(prefix)}
        out += [
            info.name
            for info in dest.list(prefix)
            if info.name not in ours and not sealed_with(dest, info.name, repo.sealer)
        ]
    return out


def _retired_keys(repo: Repository, dest: Backend) -> list[keyslots.MasterSecrets] | None:
    """The keys a rotation retired that the replica's slots hold: those the credentials that
    opened `repo` open there and that a rotation record names (a slot planted there, say to the owner's age
    recipient, wraps a key no record names). None when none is found (no credentials, or a
    record from before the records named keys): then no object there can be told from junk."""
    creds = repo.credentials
    if creds is None or not repo.config.encrypted:
        return None
    named = retired.load(repo).keys
    try:
        found = {
            master.fingerprint: master
            # A budget of its own: the replica's slots do not spend the first target's opening's.
            for _slot, master in keyslots.open_slots(Repository.read_key_slots(dest), replace(creds, budget=None))
            if master.fingerprint in named and master.fingerprint != repo.secrets.fingerprint
        }
    except PhoenixError:
        return None
    return list(found.values()) or None


def _split_junk(dest: Backend, names: list[str], old: RetiredKeys) -> tuple[list[str], list[str]]:
    """`names` (objects the current key does not open) split into those a retired key `old` opens
    and the junk no key opens; with `old` unknown, all are taken for the former."""
    if old is None:
        return names, []
    sealers = [Sealer(m.encryption_key) for m in old]
    ok = [n for n in names if any(sealed_with(dest, n, sealer) for sealer in sealers)]
    return ok, [n for n in names if n not in ok]


def _refuse_unretired(
    repo: Repository, dest: Backend, report: TargetReport, old: RetiredKeys, *, brought_over: bool
) -> None:
    """Raise when the replica holds a snapshot or capture segment that the first target lacks, that
    the repository's key does not authenticate, and that no rotation record names, or whose
    re-sealed successor (the record's `moved`) is on neither side: a key rotation did not re-seal
    it (the first target had lost it before), or the re-sealed copy was lost since (before a later
    rotation, or before this sync), so the replica's copy is the only one, readable only with the
    old key. Switching the replica would have its copy deleted (and its old slots, the only
    wrapping of that key there), so the replica is left as it is. An object that neither the current
    key nor a retired key `old` opens is junk (damaged or planted): it keeps nothing, and goes to
    `report.junk` (left in place, said). So does, on a replica already `brought_over` to the new key
    (its config is the first target's), an old snapshot or segment that no record names: the sync
    that switched it found none there first, so it came later, written by a holder of the retired
    key (the owner writes nothing under it since)."""
    name = report.name
    names, moved, _keys = retired.load(repo)
    prefixes = ("snapshots/", "captures/")
    ours = {info.name for p in prefixes for info in repo.backend.list(p)}
    # A successor only the replica holds counts when it is whole under the key (not a name planted there).
    present = ours | {
        info.name
        for p in prefixes
        for info in dest.list(p)
        if info.name not in ours and info.name in moved.values() and sealed_with(dest, info.name, repo.sealer)
    }
    sealed, report.junk = _split_junk(dest, _old_objects(repo, dest, prefixes), old)
    kept = retired.unsafe(names, moved, sealed, present)
    if brought_over:
        report.junk += [n for n in kept if n not in names]
        kept = [n for n in kept if n in names]
    if not kept:
        return
    snaps = sum(n.startswith("snapshots/") for n in kept)
    raise RepositoryError(
        f"target {name} holds {snaps} snapshot(s) and {len(kept) - snaps} capture segment(s) that the first "
        f"target lacks and that a key rotation did not re-seal, or whose re-sealed copy is gone (first: "
        f"{kept[0]}): lost, forgotten or merged on the first target while this target was not synced, or "
        "written here by someone else; so as not to delete what may be the only copy, this target keeps its "
        "old key and every object; restore what you need from it with its old key (`phx restore --backup "
        f"NAME --target {name} --to DIR` with PHX_DATA_DIR set to an empty folder: this machine refuses a "
        "key it rotated away from), then delete from it the snapshots and segments the first target lacks "
        "and run `phx sync` to bring it over to the new key"
    )


def _remove_retired(repo: Repository, dest: Backend, report: TargetReport, old: RetiredKeys) -> None:
    """Delete the replica's capture segments, snapshots, index objects, packs and rotation records
    that the first target lacks and the repository's key does not authenticate: after a key
    rotation, what the retired key sealed. Its segments and snapshots were re-sealed under the new
    key and copied before; `_refuse_unretired` has checked that a rotation's record names each.
    The junk it found (`report.junk`, no key opens it) is left in place. With the retired keys `old`
    known, so are the integrity check records they open (the rotation re-sealed them)."""
    junk = set(report.junk)
    prefixes = ("captures/", "snapshots/", "index/", "data/", retired.PREFIX)
    doomed = [n for n in _old_objects(repo, dest, prefixes) if n not in junk]
    if old is not None:
        ours = {info.name for info in repo.backend.list(checks.PREFIX)}
        retired_repos = [Repository(dest, repo.config, m, notice=repo.notice) for m in old]
        for info in dest.list(checks.PREFIX):
            if info.name not in ours and any(checks.opens(r, info) for r in retired_repos):
                doomed.append(info.name)
    for obj in doomed:
        if report.confirmer is not None:
            report.confirmer.step(DELETED)
        dest.delete(obj)
        report.retired += 1


def _index_packs(repo: Repository, name: str) -> tuple[dict[str, list[PackEntry]], list[str]]:
    """The packs an index object of the first target lists, with their entries, and the index
    objects it supersedes (bare ids)."""
    try:
        return repo.read_index_object(name)
    except CorruptObject as exc:
        raise CorruptObject(f"the first target's {exc}; run `phx verify`") from exc


def _unindexed(repo: Repository, listed: set[bytes], present: set[str]) -> dict[str, list[PackEntry]]:
    """The packs the first target knows only from their own headers (no readable index object
    there lists them: a damaged one did) that the replica lacks (`present`: those it holds), with
    their entries that the copied index objects do not list."""
    repo.load_index()
    out: dict[str, list[PackEntry]] = {}
    # Each one's header again, not the index's first location of each blob: a pack planted with
    # a header claiming a pack's blobs, listed first, kept the genuine pack from the replica.
    for pack_id in sorted(repo.unindexed_packs):
        if pack_name(pack_id) not in present:
            try:
                entries = repo.read_pack_header(pack_id)
            except (CorruptObject, ObjectNotFound):
                continue  # gone or damaged since the index was read: copied, it would fail too
            kept = [e for e in entries if e.id not in listed]
            if kept:
                out[pack_id] = kept
    return out


def _absent_packs(
    source: Backend,
    readable: dict[str, tuple[dict[str, list[PackEntry]], list[str]]],
    sizes: dict[str, int],
    there: set[str],
) -> set[str]:
    """The packs the index objects `readable` list that neither the first target (its listing
    `sizes`, then asked by name) nor the replica (`there`, its listing) holds."""
    wanted = {pack_name(p) for listing, _ in readable.values() for p in listing}
    return {n for n in sorted(wanted - sizes.keys() - there) if source.stat(n) is None}


def _copy_from_others(
    others: Mapping[str, Backend], dest: Backend, name: str, cold: bool, report: TargetReport, pack_ids: PackIds
) -> str | None:
    """Copy pack `name` (the first target lacks it) to `dest` from the first of `others` that holds
    it whole (checked against its name); return that target's name, or None when none does."""
    for other, backend in sorted(others.items()):
        if other == report.name:
            continue
        try:
            data = backend.read(name)
        except PhoenixError:
            continue  # not there, or that target is down: the others are asked
        if not names_content(name, data, pack_ids):
            continue  # damaged there too
        if report.confirmer is not None:
            report.confirmer.step(MORE_COMMITTED)
        dest.write(name, data, cold=cold)
        with _COUNT_LOCK:
            report.objects += 1
            report.bytes += len(data)
        return other
    return None


def _superseded_there(repo: Repository, dest: Backend, own: list[str], missing: list[str]) -> set[str]:
    """Those of the index objects `missing` (the replica lacks them) that an index object `own` to
    the replica (its own prune's) supersedes. Read only when some are missing; what each one
    supersedes is kept in the local cache, so that each sync after a prune of the replica does not
    read its whole index again."""
    if not missing or not own:
        return set()
    replica = repo.sibling(dest)
    folder, key = _superseded_cache(repo)
    out: set[str] = set()
    for name in own:
        sup = _cached_superseded(folder, key, name) if folder is not None else None
        if sup is None:
            try:
                _listing, sup = replica.read_index_object(name)
            except (CorruptObject, ObjectNotFound, IdentityRequired):
                continue  # damaged (verify names it), a retired key's, or not readable on this machine
            if folder is not None:
                _cache_superseded(folder, key, name, sup)
        out.update(f"index/{s}" for s in sup)
    return out & set(missing)


def _superseded_cache(repo: Repository) -> tuple[Path | None, bytes]:
    """The cache folder of what index objects supersede, with the key its entries are MACed with:
    the secret id key, bound to the sealing key's fingerprint (after a `phx key rotate` an object
    the old key sealed no longer opens). None in a write-only repository (what an object supersedes
    there depends on who reads it) or without a writable cache."""
    if repo.config.write_only is not None:
        return None, b""
    try:
        folder = Cache(repo.config.id).dir / "superseded"
    except (StorageError, OSError):
        return None, b""
    return folder, entry_key(repo.ids.page_key, repo.fingerprint, "superseded index cache")


def _cached_superseded(folder: Path, key: bytes, name: str) -> list[str] | None:
    """What index object `name` supersedes (bare ids), from the cache; None without an entry that
    authenticates. An index object's name is the hash of its bytes: an entry never goes stale."""
    try:
        raw = (folder / name.removeprefix("index/")).read_bytes()
    except OSError:
        return None
    mac, rest = raw[:32], raw[32:]
    if not same_bytes(mac, entry_mac(key, name, rest)):
        return None
    sup = rest.decode("ascii", "replace").split()
    return sup if all(is_valid_name(f"index/{s}") for s in sup) else None


def _cache_superseded(folder: Path, key: bytes, name: str, sup: list[str]) -> None:
    rest = " ".join(sup).encode()
    write_entry(folder, name.removeprefix("index/"), entry_mac(key, name, rest) + rest)


def _keep_indexed(
    repo: Repository, dest: Backend, superseded: list[str], listed: set[bytes], present: set[str], report: TargetReport
) -> None:
    """An index object of the first target supersedes others there (a prune's, or a backup's
    that found packs lost there); copied, it supersedes the replica's copies of them too. The
    blobs those list in packs the replica holds that the new objects do not list (lost on the
    first target, or garbage pruned there) would then be listed by no index on the replica: its
    snapshots that need them would look damaged, and `phx repair objects --from` it would not find
    them. Before the new objects are copied, one index object of the replica's own lists them
    (the replica's own prune deletes what no snapshot there uses)."""
    replica = repo.sibling(dest)
    keep: dict[str, dict[bytes, PackEntry]] = {}
    for name in superseded:
        try:
            listing, _sup = replica.read_index_object(name)
        except (CorruptObject, ObjectNotFound, IdentityRequired):
            # Damaged there (verify names it), sealed under a retired key, or this machine backs up
            # a write-only repository and cannot read it (the machine with the identity can:
            # `phx sync` there lists what this leaves unlisted).
            continue
        for pack_id, entries in listing.items():
            if pack_name(pack_id) in present:
                for e in entries:
                    if e.id not in listed:
                        keep.setdefault(pack_id, {}).setdefault(e.id, e)
    if keep:
        written = replica.write_index_parts({pack_id: list(entries.values()) for pack_id, entries in keep.items()}, [])
        with _COUNT_LOCK:
            report.objects += len(written)


def _copy_one(
    source: Backend, dest: Backend, name: str, cold: bool, report: TargetReport, pack_ids: PackIds = PackIds.BLAKE3
) -> None:
    if report.stopping.is_set():
        raise _Stopped(f"the copy to target {report.name} was stopped; the next `phx sync` copies what it lacks")
    if report.confirmer is not None:
        report.confirmer.step(MORE_COMMITTED)
    if name.startswith(checks.PREFIX):
        try:
            data = source.read(name)
        except PhoenixError:
            return  # unreadable (something planted that is not a file): every reader drops it too
        if not checks.fits_name(name, data):
            return  # not a record (planted or damaged): every reader drops it, so it is not copied
    else:
        data = source.read(name)
    if name.startswith("keys/") and not _is_slot(data):
        return  # damaged or planted: no opening uses it, and the replica's copy (good) stays
    if (name.startswith(("data/", "index/", "snapshots/", "captures/", retired.PREFIX))) and not names_content(
        name, data, pack_ids
    ):
        raise CorruptObject(f"{name} on the first target does not match its name (damaged); run `phx verify`")
    dest.write(name, data, cold=cold)
    with _COUNT_LOCK:
        report.objects += 1
        report.bytes += len(data)
    if name.startswith(("data/", "index/")):  # what the phase counts (keys and snapshots are small)
        report.progress.advance(files=1, size=len(data))


def _is_slot(data: bytes) -> bool:
    """Whether `data` is a key slot this Phoenix reads, or one of a newer Phoenix."""
    try:
        keyslots.KeySlot.from_json(data)
    except CorruptObject:
        return False
    except UnsupportedFormat:
        pass
    return True


_COUNT_LOCK = threading.Lock()


class _Stopped(PhoenixError):
    """The command copying to a replica stopped (`TargetReport.stopping`)."""


def _copy_all(
    source: Backend,
    dest: Backend,
    items: list[tuple[str, bool]],
    report: TargetReport,
    pack_ids: PackIds = PackIds.BLAKE3,
) -> None:
    """Copy with several uploads in flight; the first failure cancels what has not started (a
    pack's hash tried first as `pack_ids` says)."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=COPY_WORKERS, thread_name_prefix=f"phx-copy-{report.name}") as pool:
        futures: list[Future[None]] = [
            pool.submit(_copy_one, source, dest, n, cold, report, pack_ids) for n, cold in items
        ]
        _done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in pending:
            fut.cancel()
        for fut in futures:
            if fut.done() and not fut.cancelled() and fut.exception() is not None:
                raise fut.exception()  # type: ignore[misc]
