"""`phx key rotate`: a new encryption key, so that old key slots (and copies of them, such as a Git
target's history) open nothing written from now on.

`key passwd` and `key remove` only replace or drop a wrapping of the same secrets: whoever kept an
old slot (or read it from Git history) still opens everything. Rotation draws a new encryption key,
re-seals every blob a snapshot still needs into new packs, writes a new index, re-seals the
snapshots and the capture segments of `phx watch` (each segment's base snapshot and predecessor
named by their new ids, so `phx restore --at` keeps every point in time), then makes the config
authenticated by the new key: that single atomic write is the commit point. Afterwards the old
objects and slots are deleted.

The id key and the chunker parameter are kept. They only name and cut blobs inside sealed objects,
so a holder of the old secrets learns nothing from them without the encryption key; keeping them
keeps every blob id (trees are re-sealed, not rewritten), deduplication with the next backup and
the local page-hash cache. The fingerprint, the config's authentication and the slots' metadata
key derive from all the secrets, so they change with the encryption key.

Crash safety, under the exclusive lock, in this order:

1. objects (segments too) and slots of another key that the owner's credentials open are deleted
   first: the leftovers of an earlier interrupted rotation (before or after its commit point), or
   a slot and objects planted under another key; then every snapshot and capture segment is
   read: one that does not open, or a chain of segments with one missing, stops the rotation
   here, with nothing changed (another target may hold a good copy);
2. this user's pin records the new fingerprint as `next` (accepted beside the old one);
3. new slots, new packs, the new index, the re-sealed snapshots, the re-sealed segments, then
   the record naming every old object retired (repo/retired.py): readers with the old key ignore
   them (they do not authenticate), so the repository is the old one, whole;
4. the config, authenticated by the new key: from here on the new key is the repository's;
5. the pin moves to the new fingerprint; the old segments, snapshots, index objects and packs go,
   the lock moves to the new key, the old slots go last (while one is left, so is the old key:
   step 1 of a re-run can still find what it sealed).

A SIGKILL anywhere leaves a repository that opens with the owner's secret and restores every
snapshot; `phx key rotate` run again finishes (or redoes) the job. A stop (Ctrl-C, SIGTERM, SIGHUP)
does better: before the commit point it removes what it wrote under the new key (the repository is
the old one, and verifies), after it it finishes step 5 first (the new one, and verifies); a
second signal ends it at once, as a kill does.

Other targets: before anything changes, every reachable replica is looked at: one holding a
snapshot or segment that the first target lacks and the current key opens stops the rotation
(the rotation could not re-seal it, so that replica would keep the old key), naming the steps to
copy them back or give them up; one out of reach is said. Replication (at the end of the
rotation, and on every later backup or `phx sync`) copies the new slots and objects to each
replica first, then its config (the replica's commit point), then deletes the old objects (the
check records too), and the old slots. A replica holding an old snapshot or segment the record
does not name (the first target lost it later, or the replica was out of reach) is not switched:
it keeps its old key and every object, and the sync says so; junk there that no key opens does
not count (repo/replicate.py). A replica that was down keeps the old key until then: its old
slots still open its old objects, and nothing written later.

The integrity check records (`checks/`, repo/checks.py) are re-sealed with the snapshots (each
naming its snapshot's new id) and their old copies deleted first after the commit point; step 1
deletes those of another key as it deletes its objects.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from phoenix_backup.config import Config
from phoenix_backup.errors import PhoenixError, RepositoryError, UsageError
from phoenix_backup.ops.context import (
    Environment,
    credentials,
    enabled_targets,
    open_repository,
    pins,
    target_backend,
)
from phoenix_backup.ops.sync import replicate_all
from phoenix_backup.repo import captures, checks, retired
from phoenix_backup.repo import keys as keyslots
from phoenix_backup.repo.crypto import Sealer
from phoenix_backup.repo.pack import PackEntry, blob_aad, pack_name
from phoenix_backup.repo.pins import Pins
from phoenix_backup.repo.prune import refuse_if_damaged, snapshot_blobs
from phoenix_backup.repo.replicate import TargetReport
from phoenix_backup.repo.repository import RepoConfig, Repository, sealed_with
from phoenix_backup.reporting import Reporter
from phoenix_backup.state import rename_snapshots, state_path
from phoenix_backup.storage.base import Backend
from phoenix_backup.storage.targets import refuse_append_only


@dataclass
class RotateResult:
    repository: str
    fingerprint: str  # the new key's
    previous: str
    snapshots: int = 0
    segments: int = 0  # capture segments re-sealed
    checks: int = 0  # integrity check records re-sealed
    blobs: int = 0
    packs: int = 0
    bytes: int = 0  # bytes of new packs
    slots: list[str] = field(default_factory=list)  # labels of the slots re-created
    dropped: list[str] = field(default_factory=list)  # slots that could not be re-created (ids)
    leftovers: int = 0  # objects of another key deleted first (an interrupted rotation's)
    finished_earlier: bool = False  # only finished a rotation that had passed its commit point
    seconds: float = 0.0
    targets: dict[str, TargetReport] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "repository": self.repository,
            "fingerprint": self.fingerprint,
            "previous": self.previous,
            "snapshots": self.snapshots,
            "segments": self.segments,
            "checks": self.checks,
            "blobs": self.blobs,
            "packs": self.packs,
            "bytes": self.bytes,
            "slots": self.slots,
            "dropped": self.dropped,
            "leftovers": self.leftovers,
            "finishedEarlier": self.finished_earlier,
            "seconds": round(self.seconds, 3),
            "targets": {k: v.to_json() for k, v in self.targets.items()},
        }


def rotate(cfg: Config, envx: Environment) -> RotateResult:
    refuse_append_only(cfg, enabled_targets(cfg)[:1], "key rotate", "it replaces every object")
    started = time.monotonic()
    repo = open_repository(cfg, envx)
    try:
        repo.upgrade()  # format 2 first: the new key must authenticate the config
        if not repo.config.encrypted:
            raise UsageError("the repository is not encrypted, so there is no key to rotate")
        if repo.config.write_only is not None:
            raise UsageError(
                "`phx key rotate` does not rotate a write-only repository: each run seals under a new key already, "
                "wrapped to the recipients; if an identity leaked, start a new write-only repository for new "
                "recipients (`phx init --write-only`) and keep this one for what it holds"
            )
        result = _rotate_first_target(repo, cfg, envx)
        new_repo = Repository.open(repo.backend, credentials(cfg, envx), pins=pins(envx), notice=envx.notice)
        try:
            result.targets = replicate_all(new_repo, cfg, envx, ran="key rotate")
        finally:
            new_repo.close()
    finally:
        repo.close()
    result.seconds = time.monotonic() - started
    return result


def _rotate_first_target(repo: Repository, cfg: Config, envx: Environment) -> RotateResult:
    backend = repo.backend
    store = pins(envx)
    creds = credentials(cfg, envx)
    old = repo.secrets
    with repo.lock(exclusive=True, command="key rotate") as held:
        result = RotateResult(repo.config.id, old.fingerprint, old.fingerprint)
        result.leftovers = _delete_other_keys(repo, creds)
        pin = store.get(repo.config.id)
        if pin is not None and pin.next == old.fingerprint:
            # An interrupted rotation had passed its commit point; step 1 removed the rest.
            store.record(repo.config.id, backend.location, old.fingerprint, format=repo.config.version)
            result.finished_earlier = True
            return result

        snapshots = repo.list_snapshots()
        repo.load_index()
        # Damaged, or planted to block the revocation (anyone who can write the storage can):
        # only the owner can tell, so the message says what to do in either case.
        refuse_if_damaged(
            repo,
            "a rotation would lose what they hold, so nothing was changed; copy a readable one back from "
            "another target, or, if you did not write them, delete them from the storage and run `phx key "
            "rotate` again",
        )
        used = snapshot_blobs(repo, snapshots)
        old_slots = [s.with_info(old) for s in Repository.read_key_slots(backend)]
        old_objects = [info.name for prefix in ("snapshots/", "index/", "data/") for info in backend.list(prefix)]
        # The records of earlier rotations (their names are carried into this one's, then they go).
        carried = retired.load(repo)
        old_records = [
            info.name for info in backend.list(retired.PREFIX) if sealed_with(backend, info.name, repo.sealer)
        ]
        # Every segment is read (and authenticated) now: one that does not open (damaged, or
        # planted) cannot be re-sealed, and another target may hold a good copy that the rotation
        # would retire with the old key, so nothing is changed (as for a damaged snapshot).
        history = captures.timeline(repo)
        if history.unreadable:
            first = history.unreadable[0]
            raise RepositoryError(
                f"{len(history.unreadable)} capture segment(s) of `phx watch` cannot be read (first: "
                f"{history.problems[first]}); a rotation cannot re-seal the states they hold, so nothing was "
                "changed; copy a readable one back from another target that holds it (the same name under "
                "`captures/`), or, to give up those states, delete it from the storage, then run `phx key rotate` again"
            )
        if history.broken:
            # A chain cut by a missing segment: another target may hold it, and the rotation would
            # retire that copy there with the old key (replication deletes what the old key
            # sealed), losing every state after the gap on every target.
            chain = history.broken[0]
            later = sorted(captures.PREFIX + s.id for s in history.after_gap(chain))
            raise RepositoryError(
                f"{len(history.broken)} chain(s) of capture segments of `phx watch` have a segment missing (first: "
                f"segment {history.gap(chain)} of chain {chain[:8]}, before {len(later)} later segment(s)); the "
                "rotation would retire another target's copy of it with the old key, so nothing was changed; copy "
                "it back from a target whose chain is whole (`phx list --timeline --target NAME` shows it; the same "
                "name under `captures/`), or, to give up the states after the gap (no reader reaches them now), "
                f"delete the later segments from the storage (first: {later[0] if later else 'none'}), then run "
                "`phx key rotate` again"
            )
        # A replica holding snapshots or segments the first target lacks would keep the old key
        # at its next sync (the rotation cannot re-seal them): said now, before anything changes.
        _refuse_replicas_ahead(repo, cfg, envx)
        # The integrity check records (`checks/`) are keyed to the repository id and key: each one
        # that opens is re-sealed (naming its snapshot's new id), so restores keep their verdicts.
        old_checks: list[tuple[str, checks.CheckRecord]] = []
        for info in backend.list(checks.PREFIX):
            with contextlib.suppress(PhoenixError):  # not a record of this key: left as it is
                old_checks.append((info.name, checks.read_record(repo, info)))

        new = keyslots.MasterSecrets(os.urandom(keyslots.KEY_LENGTH), old.id_key, old.chunker_seed)
        # Made (not yet written) before the pin names the new key: a slot that cannot be made
        # stops the rotation here, with nothing left unfinished.
        new_slots, dropped = _new_slots(repo, old_slots, new, cfg, creds)
        store.record(
            repo.config.id, backend.location, old.fingerprint, format=repo.config.version, next=new.fingerprint
        )
        try:
            for slot in new_slots:
                backend.write(f"keys/{slot.id}", slot.to_json(), exclusive=True)
            result.slots = [s.label for s in new_slots]
            result.dropped = dropped

            # A repository that holds capture segments becomes format 5 (written by a `phx watch` from
            # before that format): a Phoenix that would rotate them away refuses it from now on.
            holds_segments = next(iter(backend.list(captures.PREFIX)), None) is not None
            config = replace(repo.config, captures=repo.config.captures or holds_segments).signed(new)
            fresh = Repository(backend, config, new, notice=envx.notice)
            sizes = {info.name: info.size for info in backend.list("data/")}
            pack_ids = repo.index.pack_ids()
            envx.progress.phase(
                "resealing packs",
                files=len(pack_ids),
                size=sum(sizes.get(pack_name(p), 0) for p in pack_ids),
                unit="packs",
            )
            packs = fresh.repack(_resealed(repo, used, Sealer(new.encryption_key), result, envx.progress, sizes))
            fresh.write_index_parts(packs, [])
            result.packs = len(packs)
            result.bytes = sum(
                info.size for info in backend.list("data/") if info.name in {pack_name(p) for p in packs}
            )
            renamed: dict[str, str] = {}
            for snap in snapshots:  # oldest first, so each parent is renamed before its children
                parent = renamed.get(snap.parent, snap.parent) if snap.parent else None
                renamed[snap.id] = fresh.save_snapshot(replace(snap, parent=parent))
            result.snapshots = len(snapshots)
            resealed = _reseal_segments(repo, fresh, history, renamed, result, envx.progress)
            checks.write(fresh, [replace(r, snapshot=renamed.get(r.snapshot, r.snapshot)) for _n, r in old_checks])
            result.checks = len(old_checks)
            # The record of what this rotation retires, before the commit point (so before every
            # deletion it licenses): a replica deletes its copy of an old object only when a
            # record names it, and keeps one the first target had lost (the only copy left).
            now = {f"snapshots/{o}": f"snapshots/{n}" for o, n in renamed.items()} | resealed
            names, moved = retired.carry(carried.names, carried.moved, now)
            retired.write(fresh, names | set(now), moved | now, carried.keys | {old.fingerprint})

            # The lock moves to the new key first: whichever key a reader ends up with (this
            # machine's pin accepts both until the end), a killed run's lock stays readable.
            # A lock removed meanwhile (`phx unlock --all` elsewhere) may have let a backup in that
            # writes under the old key: it would be lost past this point, so nothing is committed
            # (`rekey` checks the lock first, `confirm` once more right before the commit point).
            held.rekey(fresh.sealer)
            held.confirm()
        except BaseException:
            # Stopped (Ctrl-C, SIGTERM, SIGHUP) or failed before the commit point: the repository
            # is the old one, whole; what this run wrote under the new key goes again, so that
            # `phx verify` finds nothing that fails authentication (a kill leaves it to the next
            # rotation's step 1).
            _undo(repo, creds, store, old)
            raise

        def finish() -> None:
            store.record(repo.config.id, backend.location, new.fingerprint, format=config.version, next=new.fingerprint)
            # Check records and segments first (neither is ever left naming a snapshot that is
            # gone), then snapshots: never a snapshot whose data is gone.
            for name in [*(n for n, _rec in old_checks), *resealed, *old_objects, *old_records]:
                backend.delete(name)
            for slot in sorted(old_slots, key=lambda s: s.id == repo.opened_with):
                backend.delete(f"keys/{slot.id}")  # the slot that opened the repository last
            store.record(repo.config.id, backend.location, new.fingerprint, format=config.version)
            # This machine's state file names the last success by its old id, gone now.
            rename_snapshots(renamed, state_path(envx.home))

        try:
            backend.write("config", config.to_bytes())  # the commit point
        except BaseException as exc:
            # The write may have landed before the stop (or the fault) came back: the config says.
            landed = _config_is(backend, config.to_bytes())
            if landed is False:
                _undo(repo, creds, store, old)
            elif landed and isinstance(exc, KeyboardInterrupt):
                finish()
            raise
        try:
            finish()
        except KeyboardInterrupt:
            # Stopped past the commit point: the old objects would fail authentication under the
            # new key (`phx verify` would call them damaged) until a re-run; their removal is what
            # that re-run does, so it is finished now (a second signal ends it at once).
            finish()
            raise
        result.fingerprint = new.fingerprint
    backend.checkpoint(f"phoenix: key rotated to {new.fingerprint}")
    backend.publish()
    return result


def _refuse_replicas_ahead(repo: Repository, cfg: Config, envx: Environment) -> None:
    """Raise, before the rotation changes anything, when a reachable replica holds snapshots or
    capture segments that the first target lacks and that the current key opens: the rotation
    cannot re-seal them, so the replica's next sync would keep it on the old key (the only key
    that opens them there), and a revocation after a leak would leave that replica under the
    leaked key. A replica that cannot be reached is said: it is brought over at its next sync."""
    prefixes = ("snapshots/", "captures/")
    ours = {info.name for p in prefixes for info in repo.backend.list(p)}
    ahead: dict[str, list[str]] = {}
    for name in enabled_targets(cfg)[1:]:
        try:
            dest = target_backend(cfg, envx, name)
            try:
                if not dest.exists() or RepoConfig.from_bytes(dest.read("config"), dest.location).id != repo.config.id:
                    continue  # initialised by its next sync, or another repository (its sync says so)
                extra = sorted(
                    info.name
                    for p in prefixes
                    for info in dest.list(p)
                    if info.name not in ours and sealed_with(dest, info.name, repo.sealer)
                )
            finally:
                dest.close()
        except (PhoenixError, OSError) as exc:
            envx.notice(
                f"target {name} could not be reached ({exc}); it keeps the old key until its next `phx sync` "
                "(or backup) brings it over, unless it holds snapshots or capture segments the first target lacks"
            )
            continue
        if extra:
            ahead[name] = extra
    if not ahead:
        return
    name, extra = next(iter(ahead.items()))
    snaps = sum(n.startswith("snapshots/") for n in extra)
    others = f" (and targets {', '.join(list(ahead)[1:])})" if len(ahead) > 1 else ""
    raise RepositoryError(
        f"target {name}{others} holds {snaps} snapshot(s) and {len(extra) - snaps} capture segment(s) that the "
        f"first target lacks (first: {extra[0]}); the rotation cannot re-seal them, so that target would keep "
        "the old key, and nothing was changed; they open under the current key, so they are either yours (lost "
        "from the first target) or planted by whoever holds a leaked key: look at them first (`phx list --target "
        f"{name}`: their times, hosts and paths); if they are yours, copy each from target {name}'s storage into "
        f"the first target's under the same name, run `phx repair objects --from {name}` (it copies back the data "
        "they need), then run `phx key rotate` again (no command copies them back); if they are not, delete them "
        f"from target {name}'s storage (or disable it: targets.{name}.enabled false) and run `phx key rotate` again"
    )


def _config_is(backend: Backend, data: bytes) -> bool | None:
    """Whether the store's config is `data`; None when it cannot be read."""
    try:
        return backend.read("config") == data
    except Exception:
        return None


def _undo(repo: Repository, creds: keyslots.Credentials, store: Pins, old: keyslots.MasterSecrets) -> None:
    """Remove the new key's slots and objects of a rotation that stopped before its commit point,
    and let the pin forget the new fingerprint; a fault here is said, and left to the next run."""
    try:
        _delete_other_keys(repo, creds, say=False)  # its own writes: the stop's one line says enough
        store.record(repo.config.id, repo.backend.location, old.fingerprint, format=repo.config.version)
    except Exception as exc:
        repo.notice(
            f"warning: what the stopped rotation wrote under the new key could not all be removed ({exc}); "
            "`phx key rotate` run again removes it"
        )


def _delete_other_keys(repo: Repository, creds: keyslots.Credentials, *, say: bool = True) -> int:
    """Delete the slots the owner's credentials open to other secrets than the repository's, and
    every capture segment, snapshot, index object and pack sealed under those secrets (`say`: and
    tell the user). Returns how many objects."""
    backend = repo.backend
    slots = Repository.read_key_slots(backend)
    others: dict[str, keyslots.MasterSecrets] = {}
    for _slot, master in keyslots.open_slots(slots, creds):
        if master.fingerprint != repo.secrets.fingerprint:
            others[master.fingerprint] = master
    deleted = 0
    for master in others.values():
        sealer = Sealer(master.encryption_key)
        for prefix in ("captures/", "snapshots/", "index/", "data/", retired.PREFIX):
            for info in list(backend.list(prefix)):
                if sealed_with(backend, info.name, sealer):
                    backend.delete(info.name)
                    deleted += 1
        other = Repository(backend, repo.config, master, notice=repo.notice)
        for info in list(backend.list(checks.PREFIX)):
            if checks.opens(other, info):
                backend.delete(info.name)
                deleted += 1
        for slot in slots:
            if slot.version >= 2 and slot.with_info(master).info is not None:
                backend.delete(f"keys/{slot.id}")
    if others and say:
        repo.notice(f"removed {deleted} object(s) and the key slots of {len(others)} other key(s)")
    return deleted


def _new_slots(
    repo: Repository,
    old_slots: list[keyslots.KeySlot],
    new: keyslots.MasterSecrets,
    cfg: Config,
    creds: keyslots.Credentials,
) -> tuple[list[keyslots.KeySlot], list[str]]:
    """The slots wrapping the new secrets: the passphrase given now (if it opened the repository),
    the configured age recipients or GPG key, and the age and GPG slots whose authenticated
    metadata names their recipients or key. Every other slot cannot be re-created (another
    passphrase, or recipients never authenticated): it is dropped, and listed."""
    enc = cfg.encryption
    wanted: dict[tuple[str, ...], tuple[str, ...] | str | dict[str, int]] = {}
    dropped = []
    for slot in old_slots:
        info = slot.info if slot.info is not None and slot.info.authenticated else None
        if slot.type == "passphrase" and slot.id == repo.opened_with and creds.passphrase is not None:
            wanted[("passphrase",)] = {
                k: v for k, v in slot.params.items() if k in ("n", "r", "p") and isinstance(v, int)
            }
        elif slot.type == "age" and info is not None and info.recipients:
            wanted[("age", *info.recipients)] = info.recipients
        elif slot.type == "gpg" and info is not None and info.key_id:
            wanted[("gpg", info.key_id)] = info.key_id
        elif slot.id != repo.opened_with or slot.type not in ("age", "gpg") or slot.type != enc.method:
            # Its credential is not known here (another passphrase, recipients never authenticated
            # or unreadable metadata): `phx key add` it again. Only the slot that opened the
            # repository with the configured age recipients or GPG key is made again below.
            dropped.append(slot.id)
    if enc.enabled and enc.method == "age" and enc.recipients:
        wanted[("age", *enc.recipients)] = tuple(enc.recipients)
    if enc.enabled and enc.method == "gpg" and enc.key_id:
        wanted[("gpg", enc.key_id)] = enc.key_id
    out: list[keyslots.KeySlot] = []
    for key, value in wanted.items():
        if key[0] == "passphrase" and isinstance(value, dict) and creds.passphrase is not None:
            out.append(keyslots.wrap_passphrase(new, creds.passphrase, kdf_params=value, kept=True))
        elif key[0] == "age" and isinstance(value, tuple):
            out.append(keyslots.wrap_age(new, value))
        elif key[0] == "gpg" and isinstance(value, str):
            out.append(keyslots.wrap_gpg(new, value, homedir=creds.gpg_homedir))
    if not out:
        raise UsageError(
            "no key slot could be made for the new key (no passphrase was given and no age recipient or GPG key "
            "is configured); run with PHX_PASSPHRASE or set encryption.recipients / encryption.keyId"
        )
    return out, dropped


def _resealed(
    repo: Repository,
    used: set[bytes],
    sealer: Sealer,
    result: RotateResult,
    report: Reporter,
    sizes: dict[str, int],
) -> Iterator[tuple[PackEntry, bytes]]:
    """Every used blob once, opened with the old key and sealed with the new one, pack by pack
    (one old pack in memory at a time). Each is authenticated on the way: a damaged blob stops the
    rotation before anything is committed."""
    done: set[bytes] = set()
    for pack_id in sorted(repo.index.pack_ids()):
        name = pack_name(pack_id)
        report.advance(files=1, size=sizes.get(name, 0))
        entries = [e for e in repo.read_pack_header(pack_id) if e.id in used and e.id not in done]
        if not entries:
            continue
        data = repo.backend.read(name)
        for e in sorted(entries, key=lambda e: e.offset):
            aad = blob_aad(e.type, e.id)
            payload = repo.sealer.open(data[e.offset : e.offset + e.stored], aad, f"blob {e.id.hex()[:16]} in {name}")
            done.add(e.id)
            result.blobs += 1
            yield e, sealer.seal(payload, aad)


def _reseal_segments(
    repo: Repository,
    fresh: Repository,
    history: captures.Timeline,
    renamed: dict[str, str],
    result: RotateResult,
    report: Reporter,
) -> dict[str, str]:
    """Re-seal every segment that opens (`history`: every chain, the superseded leftovers of a
    thinning cut short and broken chains too, so that what a reader sees is unchanged) under the
    new key; returns the old names, each with its new one. A segment's name is the SHA-256 of its sealed bytes, so each
    one's new name differs: each segment names its predecessor (`previous`, and a merged one the
    last segment it stands for, `link`) by its new name, so the segments are written in chain
    order, and each base snapshot by the id `renamed` gives it. The chain ids, times, page bytes
    and each base copy's SHA-256 stay: the timeline and every state rebuilt are the same. One
    segment's pages are held at a time."""
    # A segment names only segments of a lower `last_sequence`, or (a merged one's `link`) the
    # plain segment with its own: plain segments first at each place.
    order = sorted(history.segments.values(), key=lambda s: (s.chain, s.last_sequence, s.through is not None, s.id))
    report.phase("resealing capture segments", files=len(order), unit="segments")
    new_ids: dict[str, str] = {}
    old_names: dict[str, str] = {}
    for seg in order:
        full = captures.with_pages(repo, seg)
        parts = [
            p
            if p.base is None
            else replace(p, base=replace(p.base, snapshot=renamed.get(p.base.snapshot, p.base.snapshot)))
            for p in full.parts
        ]
        moved = replace(
            full,
            parts=parts,
            previous=None if full.previous is None else new_ids.get(full.previous, full.previous),
            link=None if full.link is None else new_ids.get(full.link, full.link),
            id="",
        )
        name, raw = captures.seal(fresh, moved)
        fresh.backend.write(name, raw)
        new_ids[seg.id] = name.removeprefix(captures.PREFIX)
        old_names[captures.PREFIX + seg.id] = name
        result.segments += 1
        report.advance(files=1, size=len(raw))
    return old_names
