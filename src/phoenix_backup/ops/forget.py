"""`phx forget`: apply the retention policy (repo/retention.py) on every target, saying why each
snapshot is kept. Only snapshot objects are deleted; `prune` frees the data they alone used.

Each target applies the same policy to its own snapshots (DESIGN §8), so a snapshot forgotten
on one target is forgotten on all of them and replication never brings it back.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from phoenix_backup.config import Config
from phoenix_backup.errors import (
    AppendOnlyRefused,
    CorruptObject,
    ExitStatus,
    IdentityRequired,
    ObjectNotFound,
    PhoenixError,
    RetentionRefused,
    SnapshotNotFound,
    UsageError,
)
from phoenix_backup.ops import compact
from phoenix_backup.ops.context import (
    Environment,
    agent_latest,
    captures_cache,
    open_repository,
    require_identity,
    target_names,
)
from phoenix_backup.repo import captures
from phoenix_backup.repo.locks import DELETED, MORE_COMMITTED, noting_unreleased
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.retention import Candidate, Plan, Policy, apply_policy, parse_time
from phoenix_backup.repo.snapshot import WATCH_SCOPES, Latest, Snapshot
from phoenix_backup.state import record_forgotten, state_path
from phoenix_backup.storage.targets import refuse_append_only

# -- results ------------------------------------------------------------------------------


@dataclass
class Thinned:
    """What thinning did (or, in a dry run, would do) to `phx watch`'s capture segments."""

    merges: list[dict[str, object]] = field(default_factory=list)
    deleted: int = 0  # segment objects deleted (merged, left by a crash, or of a chain without a base)
    orphaned: list[str] = field(default_factory=list)  # chains deleted: every base snapshot is gone
    segments_before: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    compacted: list[str] = field(default_factory=list)  # snapshots written by compaction
    bases_forgotten: list[str] = field(default_factory=list)  # watch bases no segment names any longer
    notices: list[str] = field(default_factory=list)  # compactions that failed (thinned as before)

    def lines(self, dry_run: bool) -> list[str]:
        merge, thin = ("would merge", "would thin") if dry_run else ("merged", "thinned")
        compacts = "would compact" if dry_run else "compacted"
        out = [
            f"captures: {compacts} {m['segments']} segment(s) of chain {str(m['chain'])[:8]} "
            f"({m['from']} to {m['to']}) into snapshot {str(m.get('snapshot') or '(new)')[:8]}, "
            f"the state seen {m['kept']}"
            if m.get("compacted")
            else f"captures: {merge} {m['segments']} segments of chain {str(m['chain'])[:8]} "
            f"({m['from']} to {m['to']}) into one, keeping the state seen {m['kept']}"
            if m["segments"] != 1
            else f"captures: {thin} segment {m['first']} of chain {str(m['chain'])[:8]} "
            f"({m['from']} to {m['to']}) to one state, the one seen {m['kept']}"
            for m in self.merges
        ]
        out += [
            f"captures: base snapshot {sid[:8]} {'would be' if dry_run else 'was'} forgotten: no segment needs it"
            for sid in self.bases_forgotten
        ]
        out += [f"captures: {n}" for n in self.notices]
        out += [
            f"captures: chain {c[:8]} {'would be' if dry_run else 'was'} deleted: its base snapshots are gone"
            for c in self.orphaned
        ]
        if self.merges or self.orphaned or self.deleted:
            out.append(
                f"captures: {self.segments_before} segments, {self.bytes_before} bytes -> "
                f"{self.segments_before - self.deleted + len(self.merges)} segments, {self.bytes_after} bytes"
            )
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "merges": self.merges,
            "deleted": self.deleted,
            "orphanedChains": self.orphaned,
            "segmentsBefore": self.segments_before,
            "bytesBefore": self.bytes_before,
            "bytesAfter": self.bytes_after,
            "compacted": self.compacted,
            "basesForgotten": self.bases_forgotten,
            "notices": self.notices,
        }


@dataclass
class TargetForget:
    target: str
    ok: bool = True
    error: str | None = None
    locks_left: list[str] = field(default_factory=list)  # done, but the lock could not be removed
    plan: Plan | None = None
    removed: list[str] = field(default_factory=list)
    # Each removed snapshot's id: the newest snapshot of its host the target still holds (None: none
    # left), which the state's record of the forget names (`state.record_forgotten`).
    left: dict[str, str | None] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    named: list[Snapshot] = field(default_factory=list)  # `phx forget ID...`: the snapshots named
    thinned: Thinned | None = None  # the capture segments, when there are any

    def removals(self) -> list[tuple[Snapshot | Candidate, str]]:
        """Each snapshot removed (or, in a dry run, to be removed) with the reason, for printing."""
        if self.named:
            return [(s, "named on the command line") for s in self.named]
        return [(d.snapshot, d.removal_text()) for d in self.plan.remove] if self.plan else []

    def to_json(self) -> dict[str, object]:
        plan = self.plan
        return {
            "ok": self.ok,
            "error": self.error,
            "keep": len(plan.keep) if plan else 0,
            "remove": len(plan.remove) if plan else len(self.named),
            "removed": self.removed,
            "snapshots": [d.to_json() for d in plan.decisions] if plan else [],
            "named": [{"id": s.id, "name": s.name, "time": s.time} for s in self.named],
            "notices": self.notices,
            "locksLeft": self.locks_left,
            "captures": self.thinned.to_json() if self.thinned else None,
        }


@dataclass
class ForgetResult:
    dry_run: bool
    policy: Policy
    targets: dict[str, TargetForget]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.targets.values())

    @property
    def removed(self) -> int:
        return sum(len(t.removed) for t in self.targets.values())

    @property
    def exit_status(self) -> ExitStatus:
        status = ExitStatus.of_targets(t.ok for t in self.targets.values())
        left = any(t.locks_left for t in self.targets.values())
        return ExitStatus.PARTIAL if status == ExitStatus.OK and left else status

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "dryRun": self.dry_run,
            "policy": self.policy.to_json(),
            "description": self.policy.describe(),
            "targets": {name: t.to_json() for name, t in self.targets.items()},
        }


# -- the use case -------------------------------------------------------------------------


def forget(
    cfg: Config,
    envx: Environment,
    *,
    dry_run: bool = False,
    target: str | None = None,
    now: datetime | None = None,
    ids: tuple[str, ...] = (),
) -> ForgetResult:
    """Apply the retention policy on every target (or `target`); with `ids`, forget exactly those
    snapshots instead (by id, unique prefix or name): the only way a snapshot carrying a user's tag
    is ever forgotten."""
    policy = Policy.from_config(cfg.retention)
    result = ForgetResult(dry_run, policy, {})
    when = now or datetime.now(UTC)
    missing = SnapshotNotFound("no snapshot to forget")
    names = target_names(cfg, only=target)
    refused = {} if dry_run else refuse_append_only(cfg, names, "forget")
    # Each ref as the first target that resolved it: `latest` on a replica that missed the newest
    # backup is an older snapshot, which the user did not name.
    resolved: dict[str, str] = {}
    # Targets before this one that could not be read: `latest` resolved after them is a replica's
    # own newest, which may be older than the backup the user meant.
    unread: list[str] = []
    for name in names:
        report = TargetForget(name)
        try:
            if name in refused:
                raise AppendOnlyRefused(refused[name])
            repo = open_repository(cfg, envx, target=name)
            try:
                require_identity(repo, "every snapshot (forget decides on all of them)")
                if ids:
                    refuse_latest_after_unread(ids, resolved, unread, name)
                    forget_named(repo, ids, report, dry_run=dry_run, resolved=resolved, latest=agent_latest(cfg, envx))
                else:
                    # A replica's copies are dated when they were copied: once a target had
                    # something to thin, the others are thinned whatever their dates say.
                    eager = any(t.thinned is not None and t.thinned.merges for t in result.targets.values())
                    forget_repository(
                        repo, policy, report, dry_run=dry_run, now=when, eager=eager, compactor=(cfg, envx)
                    )
            finally:
                repo.close()
        except (RetentionRefused, IdentityRequired):
            raise  # the same on every target: say so once
        except SnapshotNotFound as exc:
            if not ids:
                raise
            missing = exc  # a replica that never received it (or forgot it already)
            report.notices.append(f"target {name} does not hold it: {exc}")
        except PhoenixError as exc:
            report.ok = False
            report.error = str(exc)
            if not resolved.keys() >= set(ids):
                unread.append(name)
        if report.removed:  # doctor and status then say the last backup's snapshot was forgotten here, not lost
            record_forgotten(name, report.left, "phx forget", state_path(envx.home))
        result.targets[name] = report
    if ids and not any(t.named for t in result.targets.values()) and all(t.ok for t in result.targets.values()):
        raise missing  # no target holds what was named: the caller's mistake, said once
    return result


def refuse_latest_after_unread(refs: tuple[str, ...], resolved: dict[str, str], unread: list[str], name: str) -> None:
    """`latest` not yet resolved while an earlier target could not be read: this target's own
    newest may be older than the backup meant (held by the unread target), so it is not guessed."""
    if "latest" in refs and "latest" not in resolved and unread:
        raise UsageError(
            f"`latest` is resolved on target {unread[0]}, which failed (see its error), so target {name} forgot "
            f"nothing (its own newest may be an older snapshot); name the snapshot by id "
            f"(`phx list --target {name}`), or run again once {unread[0]} works"
        )


def forget_named(
    repo: Repository,
    refs: tuple[str, ...],
    report: TargetForget,
    *,
    dry_run: bool,
    resolved: dict[str, str] | None = None,
    latest: Latest | None = None,
) -> TargetForget:
    """Forget the snapshots `refs` names, whatever the retention rules and tags say. `resolved`:
    the snapshot id each ref already named on another target (used instead of the ref), to which
    the refs resolved here are added. `latest`: what `latest` names (this agent's newest)."""
    known = {} if resolved is None else resolved
    with noting_unreleased(
        repo.lock(exclusive=not dry_run, command="forget --dry-run" if dry_run else "forget"), report.locks_left.append
    ):
        snapshots = repo.list_snapshots()
        chosen = {}
        for ref in refs:
            snap = repo.find_snapshot(known.get(ref, ref), snapshots, latest)
            known.setdefault(ref, snap.id)
            chosen[snap.id] = snap
        report.named = [chosen[sid] for sid in sorted(chosen, key=lambda sid: chosen[sid].time)]
        if not dry_run:
            repo.refuse_if_rolled_back("forget")
            try:
                for sid in chosen:
                    repo.delete_snapshot(sid)
                    report.removed.append(sid)
            finally:  # those removed before a failure too
                report.left = newest_left(snapshots, report.removed)
    if report.removed:
        repo.publish_changes(f"phoenix forget: {len(report.removed)} snapshot(s) removed")
    return report


def newest_left(snapshots: list[Snapshot], removed: list[str]) -> dict[str, str | None]:
    """Each of `removed` (ids among `snapshots`, oldest first): the newest snapshot of its host
    not removed, or None when none is left."""
    gone = set(removed)
    return {
        snap.id: next((s.id for s in reversed(snapshots) if s.id not in gone and s.host == snap.host), None)
        for snap in snapshots
        if snap.id in gone
    }


def forget_repository(
    repo: Repository,
    policy: Policy,
    report: TargetForget,
    *,
    dry_run: bool,
    now: datetime,
    protect: tuple[str, ...] = (),
    eager: bool = False,
    compactor: tuple[Config, Environment] | None = None,
    locked: bool = False,
) -> TargetForget:
    """Decide on every snapshot of `repo` and, unless `dry_run`, delete those not kept; `protect`
    holds the ids that are kept whatever the rules say (the snapshot a backup just made). Then
    thin the capture segments (`thin_captures`; `eager`: even when all look young). `locked`: the
    caller already holds the exclusive lock (a backup's retention, which prunes under it next)."""
    # Forget deletes snapshot objects: exclusive, like restic, so no backup picks a parent that
    # is being removed. A dry run only reads.
    with noting_unreleased(
        contextlib.nullcontext()
        if locked
        else repo.lock(exclusive=not dry_run, command="forget --dry-run" if dry_run else "forget"),
        report.locks_left.append,
    ):
        if not dry_run:
            repo.locks.confirm_exclusive("forget")
        snapshots = repo.list_snapshots()
        for name, problem in sorted(repo.problems.snapshots.items()):
            report.notices.append(f"{name} cannot be read and was left alone: {problem}")
        report.plan = apply_policy(snapshots, policy, now, protect=protect)
        report.notices += report.plan.notices
        if not dry_run:
            repo.refuse_if_rolled_back("forget")
            try:
                for decision in report.plan.remove:
                    repo.delete_snapshot(decision.snapshot.id)
                    report.removed.append(decision.snapshot.id)
            finally:  # those removed before a failure too
                report.left = newest_left(snapshots, report.removed)
        if not policy.empty:
            try:
                report.thinned = thin_captures(
                    repo, policy, report.plan, now, dry_run=dry_run, eager=eager, compactor=compactor
                )
            except CorruptObject as exc:
                report.ok, report.error = False, str(exc)
    changed = report.thinned is not None and not dry_run and report.thinned.deleted > 0
    if report.removed or changed:
        repo.publish_changes(f"phoenix forget: {len(report.removed)} snapshot(s) removed, capture segments thinned")
    return report


def thin_captures(
    repo: Repository,
    policy: Policy,
    plan: Plan,
    now: datetime,
    *,
    dry_run: bool,
    eager: bool = False,
    compactor: tuple[Config, Environment] | None = None,
) -> Thinned | None:
    """Thin `phx watch`'s capture segments (repo/captures.py `thinning`, docs/continuous.md): every
    state for `policy.captures_within`, then one an hour, then one a day, and one state for
    everything older than the oldest snapshot the policy keeps. Each merged segment is written
    before any segment it stands for is deleted, so a crash leaves every kept point restorable.
    Unless `eager`, nothing is read while every segment object was written within
    `captures_within` (by the listing's dates). With `compactor` (the config and environment a
    snapshot is taken with), the states kept a day at a time are compacted into snapshots
    (ops/compact.py) and the watch's bases no segment names any longer are forgotten. The caller
    holds the exclusive lock."""
    cutoff = policy.captures_within.before(now).timestamp()
    listed = list(repo.backend.list(captures.PREFIX))
    if not listed or (not eager and all(i.modified is not None and i.modified >= cutoff for i in listed)):
        return None
    cache = captures_cache(repo, compactor[1]) if compactor is not None else None
    tl = captures.timeline(repo, cache)
    if not tl.segments and not tl.unreadable:
        return None
    if tl.unreadable:
        name = tl.unreadable[0]
        raise _unreadable(name, tl.problems[name])

    def loaded(seg: captures.Segment) -> captures.Segment:
        # A segment whose header the cache holds is read for its pages only now: one damaged in
        # the store since stops the thinning here (what was merged so far is kept, nothing deleted).
        try:
            return captures.with_pages(repo, seg)
        except (CorruptObject, ObjectNotFound) as exc:
            raise _unreadable(captures.PREFIX + seg.id, str(exc)) from exc

    kept = [
        parse_time(d.snapshot.time)
        for d in plan.keep
        if d.snapshot.scope not in WATCH_SCOPES and not d.snapshot.incomplete
    ]
    horizon = captures.to_us(min(kept)) if kept else None
    now_us = captures.to_us(now)
    every = now_us - captures.to_us(policy.captures_within.before(now))
    hourly = now_us - captures.to_us(policy.captures_hourly_within.before(now))
    out = Thinned(segments_before=len(tl.segments), bytes_before=sum(s.stored_size for s in tl.segments.values()))
    out.orphaned = list(tl.orphaned)
    doomed = {sid for sid in tl.superseded if tl.segments[sid].chain not in tl.orphaned}
    # Those are deleted on the word of the merged segments that stand for them, whose headers may
    # come from the cache: each is read once first, so that one damaged in the store since costs
    # no segment it stands for (the thinning stops, as when the timeline cannot read it).
    standing = {
        seg.id: seg
        for old in (tl.segments[sid] for sid in doomed)
        for seg in tl.chains[old.chain]
        if seg.id != old.id and seg.sequence <= old.sequence and old.last_sequence <= seg.last_sequence
    }
    for sid in sorted(standing):
        loaded(standing[sid])
    doomed |= {sid for sid, seg in tl.segments.items() if seg.chain in tl.orphaned}
    written = 0
    kept_segments: list[captures.Segment] = []  # the merged and compacted segments written
    compacting = compactor is not None
    for run in captures.thinning(tl, now_us, every, hourly, horizon, compact=compacting):
        if run[0].chain in tl.orphaned:
            continue
        # (the segments, the compacted segment standing for them or None to merge them, its snapshot)
        pieces: list[tuple[list[captures.Segment], captures.Segment | None, str | None]] = [(run, None, None)]
        if compactor is not None and captures.long_term(run[-1], now_us, every, hourly, horizon):
            if dry_run:
                ats = [c.at for _s, _p, c in compact.newest(run).values()]
                out.merges.append(_merge_row(run, None, max(ats) if ats else None, compacted=True))
                doomed |= {seg.id for seg in run}
                continue
            try:
                pieces = [(run, *compact.compact(repo, compactor[0], compactor[1], tl, run))]
            except (compact.CompactionFailed, CorruptObject, UsageError) as exc:
                since = min(p.since for seg in run for p in seg.parts)
                until = max(p.until for seg in run for p in seg.parts)
                out.notices.append(
                    f"captures from {captures.describe(since, up=True)} to {captures.describe(until)}: {exc}; every "
                    "`phx forget` tries again, and until one compacts them they are kept whole, however old"
                )
                # The run stays as segments, every state kept, as the notice says: merging would
                # keep only its newest state, and when that is the one that failed its check (the
                # database was damaged), the sound states before it would go with the rest. The
                # next forget tries again.
                continue
        if pieces and not dry_run:
            # Segments of a watch from before format 5 under a format 4 config: format 5 before a
            # merged segment is written (docs/repository-format.md, Version 5).
            repo.mark_captures()
        for segs, made, snapshot in pieces:
            merged = made or captures.merge(segs, loaded)
            name, raw = captures.seal(repo, merged)
            if not dry_run:
                repo.confirmer.step(MORE_COMMITTED)  # a merged segment is a commit, as each deletion after it
                repo.backend.write(name, raw)
            written += len(raw)
            merged.id = name.removeprefix(captures.PREFIX)
            kept_segments.append(merged)
            doomed |= {seg.id for seg in segs}
            ats = [c.at for p in merged.parts for c in p.commits]
            row = _merge_row(segs, name, max(ats) if ats else None, compacted=snapshot is not None)
            if snapshot is not None:
                row["snapshot"] = snapshot
                out.compacted.append(snapshot)
            out.merges.append(row)
    # Once every merged segment is stored: the watch's base snapshots that only the segments they
    # stand for named (a compaction made them needless): never a backup's, never one a remaining
    # segment names, never one the doomed segments did not name (a running watch's new base, whose
    # first segment is not written yet). Before those segments go: a reader follows the merged
    # segments, not them, so a kill in between loses nothing and the next forget deletes them
    # (after them, a kill would leave the base to no later forget).
    if compacting and not dry_run:
        left = [s for sid, s in tl.segments.items() if sid not in doomed] + kept_segments
        named = {p.base.snapshot for s in left for p in s.parts if p.base is not None}
        gone = {p.base.snapshot for sid in doomed for p in tl.segments[sid].parts if p.base is not None} - named
        watch = [s for s in repo.list_snapshots() if s.scope == compact.WATCH_SCOPE]
        # And a compacted snapshot no segment names (a compaction killed before it wrote its
        # segment): never a watch's base, so nothing else can need it.
        strays = {s.id for s in watch if compact.COMPACTED_TAGS[1] in s.tags} - named
        for sid in sorted((gone & {s.id for s in watch}) | strays):
            repo.delete_snapshot(sid)
            out.bases_forgotten.append(sid)
    # Then the segments the merged ones stand for.
    for sid in sorted(doomed):
        if not dry_run:
            repo.confirmer.step(DELETED)
            repo.backend.delete(captures.PREFIX + sid)
    if not dry_run:
        captures.forget_cached(cache, doomed)
    out.deleted = len(doomed)
    out.bytes_after = out.bytes_before - sum(tl.segments[sid].stored_size for sid in doomed) + written
    return out


def _unreadable(name: str, problem: str) -> CorruptObject:
    return CorruptObject(
        f"the capture segments were not thinned: {name} cannot be read ({problem}); copy it back from another "
        "target (`phx sync`) or delete it to give up the states after it, then run `phx forget` again"
    )


def _merge_row(
    run: list[captures.Segment], name: str | None, kept: int | None, *, compacted: bool
) -> dict[str, object]:
    return {
        "chain": run[0].chain,
        "segments": len(run),
        "first": run[0].sequence,
        "last": run[-1].last_sequence,
        "from": captures.describe(min(p.since for s in run for p in s.parts)),
        "to": captures.describe(max(p.until for s in run for p in s.parts)),
        "kept": captures.describe(kept) if kept is not None else "unchanged",
        "segment": name.removeprefix(captures.PREFIX) if name else None,
        "compacted": compacted,
    }
