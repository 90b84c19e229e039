"""Compaction of `phx watch`'s capture segments into ordinary snapshots (docs/continuous.md,
"Compaction").

A state that thinning keeps a day at a time (older than `retention.capturesHourlyWithin`, or
before the oldest snapshot the policy keeps) would otherwise live for weeks as a merged segment
whose pages apply on top of a chain that starts at the watch's first base. Instead, the
databases are rebuilt at that state (from their base and the segments, as `restore --at` does),
saved as an ordinary snapshot (scope `watch`, tags `watch` and `compacted`, dated when the watch
saw the state; every copy gets the full `integrity_check`, and its SHA-256 is recorded in its node),
whose page runs deduplicate against the base's: it costs the page runs that changed. A
compacted segment (repo/captures.py `compacted`) then stands for the segments of the run: per
database, one commit without pages on top of that snapshot as its base. Those segments, and the
base snapshots of scope `watch` that no segment names any longer, can then go.

Order (a kill at any point loses no kept state): the snapshot first (the repository's commit
point), then the compacted segment, then (ops/forget.py) the bases only the segments it stands
for named (readers follow the compacted segment, not those), then those segments: a kill before
the last step leaves segments the next forget deletes as superseded, never a base no forget
would delete again; one before the segment is written leaves a snapshot tagged `compacted` that
no segment names, which the next forget forgets.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from datetime import UTC, datetime

from phoenix_backup.config import Config
from phoenix_backup.errors import CorruptObject, PhoenixError
from phoenix_backup.ops.backup import snapshot_entries
from phoenix_backup.ops.context import Environment, scratch_dir
from phoenix_backup.ops.pitr import rebuild
from phoenix_backup.repo import captures, checks
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.walker import walk_tree
from phoenix_backup.sources.files import Entry

WATCH_SCOPE = "watch"  # as ops/watch.py's base snapshots
COMPACTED_TAGS = ("watch", "compacted")


class CompactionFailed(PhoenixError):
    """A run's state could not be made a snapshot (its check failed): the run stays as segments,
    every state kept, until a later forget compacts it (`forget.thin_captures`)."""


def newest(run: list[captures.Segment]) -> dict[str, tuple[captures.Segment, captures.Part, captures.Commit]]:
    """Per database, the newest state the run holds (its last commit) and where it is."""
    out: dict[str, tuple[captures.Segment, captures.Part, captures.Commit]] = {}
    for seg in run:
        for part in seg.parts:
            if part.commits:
                out[part.path] = (seg, part, part.commits[-1])
    return out


def compact(
    repo: Repository, cfg: Config, envx: Environment, tl: captures.Timeline, run: list[captures.Segment]
) -> tuple[captures.Segment, str | None]:
    """The compacted segment standing for `run` (consecutive segments of one chain, see
    `captures.thinning(compact=True)`), and the snapshot written for it (None when every
    database's newest state already is a snapshot's copy). The caller holds the exclusive lock.
    Raises CompactionFailed (nothing kept) when a rebuilt state fails its checks."""
    finals = newest(run)
    reuse = {
        path: part.base
        for path, (_seg, part, commit) in finals.items()
        if part.base is not None and len(part.commits) == 1 and not commit.pages
    }
    need = sorted(path for path in finals if path not in reuse)
    bases: dict[str, captures.Base] = {p: b for p, b in reuse.items() if b is not None}
    made: str | None = None
    if need:
        made, sums = _snapshot(repo, cfg, envx, tl, run[0].chain, {p: finals[p][2].at for p in need})
        bases |= {p: captures.Base(made, sums[p]) for p in need}
    parts: dict[str, list[captures.Part]] = {}
    for seg in run:
        for part in seg.parts:
            parts.setdefault(part.path, []).append(part)
    out: list[tuple[captures.Part, list[bytes]]] = []
    for path, items in parts.items():
        head, tail = items[0], items[-1]
        thinned = sum(len(p.commits) for p in items) > 1 or any(p.thinned for p in items)
        if path not in finals:
            out.append((captures.Part(path, head.page_size, head.since, tail.until, (), None, thinned), []))
            continue
        final = finals[path][2]
        commit = captures.Commit(final.at, final.page_count, ())
        out.append((captures.Part(path, head.page_size, head.since, tail.until, (commit,), bases[path], thinned), []))
    first, last = run[0], run[-1]
    seg = captures.build(
        first.chain, first.sequence, first.previous, first.host, out, through=last.last_sequence, link=last.link_id
    )
    return seg, made


def _snapshot(
    repo: Repository, cfg: Config, envx: Environment, tl: captures.Timeline, chain: str, states: dict[str, int]
) -> tuple[str, dict[str, str]]:
    """A snapshot of each database rebuilt at its time in `states` (logical path -> µs) from the
    history `chain` recorded (another chain may cover the same path then: a watch of the same
    logical path on another machine): its id and each copy's SHA-256. Every copy is checked in
    full; one that fails deletes the snapshot."""
    # Every copy gets the full check (a historical state; the cadence's records are about the live
    # databases and are left alone), and the page hashes stay with the backups' cache.
    repo.load_index()
    checked = dataclasses.replace(cfg, databases=dataclasses.replace(cfg.databases, integrity_check_every="0h"))
    with scratch_dir("phx-compact-") as tmp:
        env = dataclasses.replace(envx, env={**envx.env, "PHX_CACHE_DIR": str(tmp / "cache")})
        entries = []
        for i, (path, at) in enumerate(sorted(states.items())):
            # Named as the database (a tree node takes its file's name), one folder each.
            dest = tmp / str(i) / path.rsplit("/", 1)[-1]
            try:
                dest.parent.mkdir()
                rebuild(repo, tl, path, at, dest, chain)
            except OSError as exc:
                raise _no_room(exc) from exc
            entries.append(Entry(path, dest, "sqlite", os.stat(dest)))
        when = datetime.fromtimestamp(max(states.values()) / 1e6, UTC).astimezone()
        result = snapshot_entries(
            repo,
            checked,
            env,
            entries,
            absent=(),
            scope=WATCH_SCOPE,
            tags=COMPACTED_TAGS,
            parent_scopes=(WATCH_SCOPE,),
            when=when,
        )
    if result.id is None:
        raise CompactionFailed("the compacted snapshot was not written")
    bad = {i["path"]: i["error"] for i in result.incomplete}
    bad |= {p: f"integrity_check: {r}" for p, r in result.integrity_checked.items() if r != "ok"}
    bad |= {p: "not checked" for p in states if p not in result.integrity_checked and p not in bad}
    if bad:
        repo.delete_snapshot(result.id)
        problems = "; ".join(f"{p}: {e}" for p, e in sorted(bad.items()))
        raise CompactionFailed(f"the state rebuilt for compaction fails its checks ({problems}); it stays as segments")
    nodes = dict(walk_tree(repo, repo.load_snapshot(result.id).tree))
    sums = {}
    for path in states:
        node = nodes.get(path)
        if node is None or not node.sha256:
            repo.delete_snapshot(result.id)
            raise CorruptObject(f"the compacted snapshot {result.id[:8]} does not hold {path}")
        sums[path] = node.sha256
    checks.record_snapshot(repo, result.id, result.integrity_checked, "compaction")
    return result.id, sums


def _no_room(exc: OSError) -> CompactionFailed:
    """The temporary folder the databases are rebuilt in failed (no room: a small tmpfs)."""
    return CompactionFailed(
        f"the state could not be rebuilt for compaction in {tempfile.gettempdir()} ({exc.strerror or exc}): "
        "free space there or set TMPDIR to a folder with room; it stays as segments"
    )
