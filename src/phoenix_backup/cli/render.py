"""Plain-text rendering of results (the JSON forms come from each result's `to_json`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from phoenix_backup.errors import shown, shown_each
from phoenix_backup.units import human_size

if TYPE_CHECKING:  # only annotations: a command imports the use cases it runs, not all of them
    from phoenix_backup.ops.backup import BackupResult
    from phoenix_backup.ops.list import SnapshotSummary
    from phoenix_backup.ops.restore import RestoreResult
    from phoenix_backup.ops.sync import SyncResult
    from phoenix_backup.repo.checker import VerifyResult


def table(headers: list[str], rows: list[list[str]]) -> str:
    # A cell's newline or escape (a tag, a name from a planted snapshot) shown escaped: one line a row.
    rows = [[shown(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


# Paths named per component in a dry run without --verbose: all of the identity's, a sample of the rest.
_SHOWN = 12


def backup(r: BackupResult, verbose: bool) -> str:
    if r.dry_run:
        lines = [f"{p.kind:7} {human_size(p.size):>10}  {shown(p.path)}" for p in r.planned] if verbose else []
        for c in r.components:
            if c.name == "include" and not c.paths:
                continue
            what = "added by `include`" if c.name == "include" else c.name
            line = f"{what}: {len(c.paths)} {'databases' if c.name == 'databases' else 'files'}, {human_size(c.size)}"
            if c.paths and not verbose:
                names = [shown(p.split("/", 1)[-1]) for p in c.paths[:_SHOWN]]
                line += f" ({', '.join(names)}{', ...' if len(c.paths) > _SHOWN else ''})"
            if c.absent:
                line += f"; not present here: {', '.join(c.absent)}"
            lines.append(line)
        lines += [f"NOT SAVED: {shown(i['path'])}: {shown(i['error'])}" for i in r.incomplete]
        lines.append(f"would back up {r.files} files and databases, {human_size(r.size)} (dry run: nothing written)")
        return shown_each(lines + [f"warning: {shown(w)}" for w in r.warnings])
    # Counted as `phx drill` counts them: SQLite databases apart, a PostgreSQL or Redis dump's files as files.
    sqlite = sum(1 for db in r.databases if db.engine == "sqlite")
    dbs = f", {sqlite} {'database' if sqlite == 1 else 'databases'}" if sqlite else ""
    lines = [
        f"snapshot {r.id[:8] if r.id else '?'} ({shown(r.name)}) saved: {r.files - sqlite} files{dbs}, "
        f"{human_size(r.size)}, {human_size(r.added)} added, {r.duration:.1f} s"
    ]
    ch = r.changes
    if ch is not None:
        lines += [
            f"  files:     {ch.files_new} new, {ch.files_changed} changed, {ch.files_unmodified} unmodified",
            f"  folders:   {ch.dirs_new} new, {ch.dirs_changed} changed, {ch.dirs_unmodified} unmodified",
            f"  databases: {ch.databases_captured} captured, {ch.databases_unchanged} unchanged",
            f"  added to the repository: {human_size(ch.data_added)} ({human_size(r.added)} stored)",
        ]
    for db in r.databases:
        rows = sum(db.tables.values())
        lines.append(f"  database {shown(db.path)}: integrity {db.integrity}, {len(db.tables)} tables, {rows} rows")
    for name, outcome in r.targets.items():
        lines.append(f"  target {name}: {'ok' if outcome.ok else 'FAILED: ' + (outcome.error or '')}")
    for item in r.incomplete:
        lines.append(f"  not saved: {shown(item['path'])}: {shown(item['error'])}")
    if r.retention is not None:
        for target, removed in r.retention.removed.items():
            for snap in removed:
                lines.append(f"  forgot {snap['id'][:8]} ({shown(snap['name'])}) on {target}: {snap['why']}")
        lines += [f"  retention not applied: {why}" for why in r.retention.elsewhere.values()]
    lines += [f"  {step.describe()}" for step in r.hooks.values() if not step.ok]
    lines += [f"  warning: {shown(w)}" for w in r.warnings]
    return shown_each(lines)


def snapshots(items: list[SnapshotSummary]) -> str:
    if not items:
        return "no snapshots yet; run `phx backup`"
    rows = []
    for item in items:
        s = item.snapshot
        rows.append(
            [
                s.id[:8],
                s.name,
                s.time,
                s.scope,
                str(s.stats.files),
                human_size(s.stats.size),
                human_size(s.stats.added),
                str(len(s.databases)),
                ",".join(s.tags),
                ",".join(item.targets),
            ]
        )
    return table(["ID", "NAME", "TIME", "SCOPE", "FILES", "SIZE", "ADDED", "DBS", "TAGS", "TARGETS"], rows)


def restore(r: RestoreResult, verbose: bool) -> str:
    counts = r.counts()
    lines = []
    if r.dry_run or verbose:
        lines += [f"{i.action:9} {i.kind:7} {shown(i.target)}" for i in r.items]  # one line a file
    summary = ", ".join(
        f"{n} to {a}" if a != "unchanged" else f"{n} unchanged" for a, n in counts.items() if n or a != "delete"
    )
    if r.dry_run:
        for db in r.databases:
            lines.append(f"  database {shown(db['path'])}: {db['action']}{_row_deltas(db)}")
        lines.append(
            f"plan for {shown(r.name)} ({r.snapshot[:8]}) {shown(r.destination)}: {summary} (dry run: nothing written)"
        )
    else:
        done = f"restored {r.restored} files and databases"
        if r.deleted:
            done += f", deleted {r.deleted}"
        lines.append(f"{done} from {shown(r.name)} ({r.snapshot[:8]}) {_dest(r)}")
        for db in r.databases:
            fts = db.get("fts") or {}
            bad = [t for t, m in fts.items() if m != "ok"]
            checks = f", FTS5 {'ok' if not bad else 'FAILED: ' + ', '.join(bad)} ({len(fts)} tables)" if fts else ""
            via = f" via {db['method']}" if db.get("method") else ""
            lines.append(f"  database {shown(db['path'])}{via}: integrity {db['integrity']}{checks}{_copy_check(db)}")
        for action, step in r.gateway.items():
            state = "ok" if step.ok else "FAILED: " + step.describe()
            lines.append(f"  gateway.{action}: {state}")
        if r.safety_snapshot:
            s = r.safety_snapshot
            lines.append(
                f"  safety snapshot {s['id'][:8]} ({shown(s['name'])}, tag pre-restore) holds the previous state; "
                f"undo with: phx restore --backup {s['id'][:8]} --yes"
            )
    a = r.alignment
    if a is not None and a.realigned:
        lines.append(f"  realigned {a.manifest}: new hashes for {', '.join(a.rewritten)} (--realign)")
    for err in r.errors:
        lines.append(f"  not restored: {shown(err['path'])}: {shown(err['error'])}")
    if r.phoenix_config:
        lines.append(
            f"  the Phoenix config this backup ran with: {shown(r.phoenix_config)} (check its paths, then copy it to "
            "~/.argentos/backup.json to back up to this repository again)"
        )
    lines += [f"  warning: {shown(w)}" for w in r.warnings]
    return shown_each(lines)


def _copy_check(db: dict[str, Any]) -> str:
    """How the restored copy's integrity_check is known (docs/restore-checks.md)."""
    check = db.get("copyCheck") or {}
    if not check:
        return ""
    if check.get("ran"):
        return "; copy: integrity_check run on the restored bytes"
    if check.get("by") == "backup":
        return "; copy: these bytes passed integrity_check at backup, not run again"
    return (
        f"; copy: these bytes passed integrity_check in a {check.get('by')} at {check.get('checkedAt')} "
        "(recorded in the repository), not run again"
    )


def _row_deltas(db: dict[str, object]) -> str:
    if "error" in db:
        return f" ({db['error']})"
    tables = db.get("tables")
    if not isinstance(tables, dict) or not tables:
        return ""
    parts = []
    for name, d in tables.items():
        if d["added"] or d["removed"] or d["changed"]:
            parts.append(f"{shown(name)} +{d['added']} -{d['removed']} ~{d['changed']}")  # a table's name: its own
    return ": " + (", ".join(parts) if parts else "no row changes")


def _dest(r: RestoreResult) -> str:
    return "in place" if r.destination == "in place" else f"to {shown(r.destination)}"


def verify(r: VerifyResult, verbose: bool = False) -> str:
    checked = ", ".join(f"{v} {k}" for k, v in r.checked.items())
    lines = [f"notice: {shown(n)}" for n in (r.notices if verbose else grouped_notices(r.notices))]
    for e in r.errors:
        path = f", {shown(e.path)}" if e.path is not None else ""  # a snapshot that cannot be read has no path
        where = f" (snapshot {e.snapshot[:8]}{path})" if e.snapshot else ""
        lines.append(f"error: {shown(e.object)}{where}: {shown(e.message)}")
    read = " and read every byte" if r.read_data else ""
    if r.subset is not None:
        read = f" and read every byte of {r.subset['packs']} of {r.subset['of']} packs ({r.subset['percent']:g}%)"
    if r.ok:
        lines.append(f"repository ok: checked {checked}{read}")
    else:
        lines.append(f"repository has {len(r.errors)} error(s); checked {checked}")
    return shown_each(lines)


def sync(r: SyncResult) -> str:
    lines = []
    for name, t in r.targets.items():
        if not t.ok:
            lines.append(f"target {name}: FAILED: {t.error}")
            continue
        what = f"{t.objects} objects, {human_size(t.bytes)}" if t.objects else "already up to date"
        extra = []
        if t.initialised:
            extra.append("initialised")
        if t.snapshots:
            extra.append(f"{t.snapshots} snapshot(s)")
        if t.uploads_aborted:
            extra.append(f"{t.uploads_aborted} abandoned upload(s) aborted")
        if t.throughput:
            extra.append(f"{human_size(int(t.throughput))}/s")
        lines.append(f"target {name}: ok, {what}" + (f" ({', '.join(extra)})" if extra else ""))
    if any(t.ok for t in r.targets.values()):
        # What a sync proves (docs/targets.md): a replica's objects are taken from its listing.
        lines.append(
            "(what a replica already held was checked by its listing, names and sizes, not read back: "
            "`phx verify --target NAME --read-data` reads it)"
        )
    return shown_each(lines)


def grouped_notices(notices: list[str]) -> list[str]:
    """Notices that differ only in the object they name ("data/ab/… is not in the index …", one per
    leftover pack of an interrupted backup) as one line with their count and the first object;
    `--verbose` and `--json` keep every one."""
    groups: dict[str, list[str]] = {}
    for notice in notices:
        head, sep, rest = notice.partition(" ")
        key = rest if sep and "/" in head else notice
        groups.setdefault(key, []).append(head if key == rest else notice)
    lines = []
    for key, objects in groups.items():
        if len(objects) == 1:
            lines.append(objects[0] if objects[0] == key else f"{objects[0]} {key}")
        else:
            what = f"are {key[3:]}" if key.startswith("is ") else f"have this notice: {key}"
            lines.append(f"{len(objects)} objects {what} (the first: {objects[0]}; --verbose names each)")
    return lines
