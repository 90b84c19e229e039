"""`phx export`: a portable export of the agent's memory, from the live stores or a snapshot.

Layout of an export folder (every format):

    metadata.json                   what, from where, when; per database its tables, rows, keys
    checksums.json                  SHA-256 of every other file, and a combined digest
    files/<logical path>            identity, memory notes and config files (workspace/SOUL.md,
                                    home/.argentos/argent.json, ...)
    json:      databases/<store>/<table>.json   a JSON array, one row object per line
    csv:       databases/<store>/<table>.csv    a header line, then one line per row
    markdown:  memories.md, observations.md, dashboard.md, identity.md, <store>.md
    --sanitize: redactions.json (what was redacted where, never the values) and MIGRATION.md

Live stores are read through the SQLite online backup API into private temporary copies, so the
export is consistent even while the agent writes; a snapshot's copies are read from the
repository and checked against their SHA-256. The export is written into a temporary folder
beside `--output` and renamed into place at the end: the output is complete or absent.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import sqlite3
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from phoenix_backup import jsontext
from phoenix_backup._version import __version__
from phoenix_backup.config import Config
from phoenix_backup.dirs import fsync_dir, fsync_tree, is_mount_point
from phoenix_backup.errors import ExitStatus, ExportError, UsageError
from phoenix_backup.memory import markdown
from phoenix_backup.memory.checksums import write_checksums
from phoenix_backup.memory.sanitize import (
    Redaction,
    credential_file,
    is_config_or_env,
    sanitize_shapes,
    sanitize_text,
)
from phoenix_backup.memory.schema import DatabaseSchema, TableInfo, inspect
from phoenix_backup.memory.values import csv_value, json_value
from phoenix_backup.ops.context import (
    Environment,
    agent_latest,
    open_repository,
    refuse_export_in_workspace,
    refuse_plain_copies_in_repository,
    require_identity,
    scratch_dir,
)
from phoenix_backup.ops.selection import drop_key_links, key_files_in_workspace, never_saved
from phoenix_backup.repo.crypto import sha256_hex
from phoenix_backup.repo.reader import copy_snapshot_database, stream_blocks
from phoenix_backup.repo.walker import walk_tree
from phoenix_backup.sinks import leftovers
from phoenix_backup.sinks.files import fold_name
from phoenix_backup.sinks.select import link_targets
from phoenix_backup.sources.files import Entry, open_regular, select
from phoenix_backup.sources.layout import Layout
from phoenix_backup.sources.scope import LogicalMatcher, configured_databases, configured_store
from phoenix_backup.sources.sqlite import check_database, sqlite_uri
from phoenix_backup.sources.sqlite_capture import CaptureError, copy_database
from phoenix_backup.sql import quote
from phoenix_backup.storage.local import os_error
from phoenix_backup.units import human_size

ExportFormat = Literal["json", "csv", "markdown"]
FORMATS: tuple[ExportFormat, ...] = ("json", "csv", "markdown")
EXPORT_FORMAT_NAME = "phoenix-memory-export"
EXPORT_VERSION = 1


@dataclass(frozen=True)
class SourceDatabase:
    logical: str
    copy: Path  # a private, consistent copy
    integrity: str


@dataclass(frozen=True)
class SourceFile:
    logical: str
    size: int
    read: Callable[[], Iterator[bytes]]


@dataclass
class Source:
    kind: Literal["live", "snapshot"]
    databases: list[SourceDatabase]
    files: list[SourceFile]
    info: dict[str, Any]


@dataclass
class ExportedDatabase:
    path: str
    name: str
    kind: str
    integrity: str
    tables: dict[str, int]
    derived: dict[str, str]
    vector_columns: dict[str, list[str]]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "kind": self.kind,
            "integrity": self.integrity,
            "tables": self.tables,
            "derived": self.derived,
            "vectorColumns": self.vector_columns,
        }


@dataclass(frozen=True)
class LeftOut:
    """A file a sanitized export left out, and why (never what it held)."""

    file: str  # path it would have had inside the export
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason}


@dataclass
class ExportResult:
    output: str
    format: ExportFormat
    source: dict[str, Any]
    vectors: bool
    sanitized: bool
    databases: list[ExportedDatabase] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # copied files, relative to the export
    redactions: list[Redaction] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)  # --sanitize: credential and unreadable files
    combined: str = ""
    size: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "format": self.format,
            "source": self.source,
            "vectors": self.vectors,
            "sanitized": self.sanitized,
            "databases": [d.to_json() for d in self.databases],
            "files": self.files,
            "redactions": [r.to_json() for r in self.redactions],
            "leftOut": [x.to_json() for x in self.left_out],
            "checksums": {"algorithm": "sha256", "combined": self.combined},
            "size": self.size,
            "warnings": self.warnings,
        }


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def _component_patterns(cfg: Config) -> tuple[str, ...]:
    c = cfg.components
    return (*c.identity, *c.memory, *c.config)


@contextlib.contextmanager
def live_source(cfg: Config, envx: Environment) -> Iterator[Source]:
    """The configured SQLite stores (each one committed state, written to a private copy) and the
    identity, memory and config files, chosen as a full backup chooses them: any other SQLite file
    among them is a file (`configured_store`), its bytes one committed state as a backup saves it."""
    layout = Layout(cfg.workspace, envx.home)
    with scratch_dir("phx-export-") as scratch:
        dbs: list[SourceDatabase] = []
        for i, path in enumerate(p for p in configured_databases(cfg) if p.is_file()):
            copy = scratch / f"{i}.db"
            copy_database(path, copy)
            dbs.append(SourceDatabase(layout.to_logical(path), copy, check_database(copy).integrity))
        files = [
            SourceFile(
                e.logical, e.st.st_size, _file_reader(e.path, scratch / f"file-{i}.db" if e.kind == "sqlite" else None)
            )
            for i, e in enumerate(_live_files(cfg, layout, envx.env))
        ]
        info = {"kind": "live", "workspace": str(cfg.workspace), "home": str(envx.home)}
        yield Source("live", dbs, files, info)


def _file_reader(path: Path, copy: Path | None = None) -> Callable[[], Iterator[bytes]]:
    """A file's bytes; with `copy`, those of one committed state of the SQLite file at `path`,
    written there first (a live database's file alone may lack what its WAL holds), or its bytes
    as they are when SQLite cannot read it (a damaged cache fails no export)."""

    def read() -> Iterator[bytes]:
        if copy is not None:
            try:
                copy_database(path, copy)
            except CaptureError:
                pass
            else:
                with open(copy, "rb") as f:
                    while block := f.read(1 << 20):
                        yield block
                copy.unlink()
                return
        # A FIFO an agent put in the file's place since the scan is refused, not waited on for ever.
        opened = open_regular(path, follow_links=True)
        if opened is None:
            raise ExportError(f"{path} is no longer a regular file (it was replaced since it was listed); export again")
        with os.fdopen(opened[0], "rb") as f:
            while block := f.read(1 << 20):
                yield block

    return read


def _live_files(cfg: Config, layout: Layout, env: Mapping[str, str]) -> list[Entry]:
    """The regular files of the identity, memory and config components, walked as a full backup
    walks them (sources/files.py): a component is kept whatever `exclude` says, a component that
    is a symbolic link is followed, no configured store (`configured_store`) or database companion
    is a file here (any other SQLite file is: its entry keeps kind "sqlite"), and a key file in the
    workspace is left out as a backup leaves it out (`key_files_in_workspace`)."""
    patterns = _component_patterns(cfg)
    keys = [p for p, _warning in key_files_in_workspace(cfg, env)]
    sel = select(layout, patterns, cfg.exclude, (), optional=patterns, keep=patterns, skip=never_saved(cfg, keys))
    drop_key_links(sel, keys)
    is_store = configured_store(cfg, layout)
    return sorted(
        (e for e in sel.entries.values() if e.kind == "file" or (e.kind == "sqlite" and not is_store(e.logical))),
        key=lambda e: e.logical,
    )


@contextlib.contextmanager
def snapshot_source(cfg: Config, envx: Environment, ref: str, target: str | None) -> Iterator[Source]:
    """A snapshot's configured stores (copies checked against their SHA-256) and component files:
    any other SQLite file it holds is a file, as from the live workspace (`configured_store`)."""

    repo = open_repository(cfg, envx, target=target)
    require_identity(repo)
    layout = Layout(cfg.workspace, envx.home)
    matcher = LogicalMatcher.for_patterns(_component_patterns(cfg), layout)
    is_store = configured_store(cfg, layout)
    with repo.lock(exclusive=False, command="export"), scratch_dir("phx-export-") as scratch:
        repo.load_index()
        snap = repo.find_snapshot(ref, latest=agent_latest(cfg, envx))
        dbs: list[SourceDatabase] = []
        files: list[SourceFile] = []
        envx.progress.phase("reading the snapshot's databases")
        nodes = list(walk_tree(repo, snap.tree))
        # A component that is a symlink was saved with what it points to (as a full backup saves
        # it): that is exported with it.
        by_path = dict(nodes)
        targets = link_targets(
            snap, [(lg, n) for lg, n in nodes if n.type == "symlink" and matcher.matches(lg)], by_path
        )
        # A configured store that is a link was saved with what it points to: that copy is the
        # store, exported under the link's path as from the live workspace.
        store_links: dict[str, list[str]] = {}
        for lg, n in nodes:
            if n.type == "symlink" and is_store(lg):
                for t in link_targets(snap, [(lg, n)], by_path):
                    store_links.setdefault(t, []).append(lg)

        def wanted(logical: str) -> bool:
            return matcher.matches(logical) or any(logical == t or logical.startswith(t + "/") for t in targets)

        for i, (logical, node) in enumerate(nodes):
            stores = store_links.get(logical) or ([logical] if is_store(logical) else [])
            if node.type == "sqlite" and stores:
                envx.progress.working(f"copying {logical.rsplit('/', 1)[-1]} ({human_size(node.size)})")
                copy = copy_snapshot_database(repo, logical, node, scratch / f"{i}.db")
                integrity = check_database(copy).integrity
                dbs.extend(SourceDatabase(store, copy, integrity) for store in stores)
            elif node.type in ("file", "sqlite") and wanted(logical):

                def read(lg: str = logical, nd: Any = node) -> Iterator[bytes]:
                    yield from stream_blocks(repo, lg, nd)

                files.append(SourceFile(logical, node.size, read))
        info = {
            "kind": "snapshot",
            "snapshot": snap.id,
            "name": snap.name,
            "time": snap.time,
            "host": snap.host,
            "workspace": snap.sources.get("workspace"),
            "home": snap.sources.get("home"),
        }
        yield Source("snapshot", dbs, files, info)


# --------------------------------------------------------------------------------------------
# The export
# --------------------------------------------------------------------------------------------


def export(
    cfg: Config,
    envx: Environment,
    *,
    output: Path,
    fmt: ExportFormat = "json",
    ref: str | None = None,
    vectors: bool = True,
    sanitize: bool = False,
    target: str | None = None,
) -> ExportResult:
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; use json, csv or markdown")
    if str(output) == "-":  # stdout by habit: the export went into a new folder named `-`
        raise UsageError("an export is a folder of files, never written to stdout; name a new folder with --output DIR")
    output = output.absolute()
    if output.is_symlink():  # a link to an empty folder: the export goes into that folder, the link stays
        linked = output.resolve()
        if not linked.is_dir():
            raise UsageError(f"{output} is a link to {linked}, which is not a folder; choose a new --output folder")
        output = linked
    refuse_plain_copies_in_repository(cfg, output, "--output")
    refuse_export_in_workspace(cfg, output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UsageError(f"{output} already exists and is not an empty folder; choose a new --output folder")
    if is_mount_point(output):  # the export's folder is renamed over the empty one, never over a mount point
        raise UsageError(
            f"{output} is a mount point, which the export cannot replace with its own folder; "
            f"choose a folder inside it, e.g. --output {output / 'export'}"
        )
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a folder of another owner, immutable, read-only, a file in the way
        what = f"creating the folder {output.parent} of the export"
        raise os_error(exc, what, destination=output.parent) from exc
    # Named and journalled as a restore's temporary files are, so that the next command removes
    # the folder of an export that was killed (sinks/leftovers.py); backups never save it.
    journal = leftovers.Journal(envx.notice)
    work = output.parent / f".phx-tmp-{journal.name}"
    journal.record(output.parent)
    published = False
    try:
        work.mkdir(mode=0o700)
        source_cm = live_source(cfg, envx) if ref is None else snapshot_source(cfg, envx, ref, target)
        with source_cm as source:
            result = ExportResult(str(output), fmt, source.info, vectors and fmt != "markdown", sanitize)
            try:
                _write_export(work, source, result, cfg, envx)
            except sqlite3.Error as exc:
                raise ExportError(f"a store could not be read for the export ({exc}); run `phx doctor`") from exc
        fsync_tree(work)  # the files and folders on disk before the rename publishes them
        with contextlib.suppress(FileNotFoundError):
            _take_on(work, os.stat(output), output, envx)  # an empty folder given as --output
            output.rmdir()
        os.rename(work, output)
        published = True
        fsync_dir(output.parent)  # and the rename itself
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, OSError):  # a full disk, a file size limit: one sentence with the fix
            local = cfg.repository_path if "local" in cfg.targets.enabled_names() else None
            what = f"writing the export to {output}"
            if published:  # its files are whole and on disk; the folder's new entry may not be
                what = (
                    f"syncing the folder that holds the export {output} (complete there, but a power cut could lose it)"
                )
            raise os_error(exc, what, destination=output, repository=local) from exc
        raise
    finally:
        journal.close()
    result.size = sum(f.stat().st_size for f in output.rglob("*") if f.is_file())
    return result


def _take_on(work: Path, old: os.stat_result, output: Path, envx: Environment) -> None:
    """The empty folder given as `--output` is replaced by the export's (the export appears whole
    or not at all): the new folder takes on its extended attributes (ACLs, SELinux label), owner,
    group and mode (but for other users' bits), so that the folder the user prepared keeps who
    may read it."""
    kept = True
    with contextlib.suppress(OSError):  # a file system without extended attributes
        for name in os.listxattr(output):
            try:
                os.setxattr(work, name, os.getxattr(output, name))
            except OSError:
                kept = False
    if (old.st_uid, old.st_gid) != (os.stat(work).st_uid, os.stat(work).st_gid):
        try:
            os.chown(work, old.st_uid, old.st_gid)
        except OSError:  # another user's folder, writable by this one: only root gives a folder away
            kept = False
    # Never for other users: a plain `mkdir` under umask 022 gives them read, and the export holds
    # every store's rows (and secrets, unless --sanitize); a reader meant on purpose is a group or
    # an ACL entry, both taken on.
    os.chmod(work, stat.S_IMODE(old.st_mode) & ~0o007)
    if not kept:
        envx.notice(
            f"warning: {output} was replaced by the export's folder, which could not take on all of its owner, "
            "group and extended attributes (ACLs); check who may read the export"
        )


def _store_names(databases: list[SourceDatabase]) -> list[str]:
    names: list[str] = []
    taken: set[str] = set()
    for db in databases:
        stem = _safe_name(db.logical.rsplit("/", 1)[-1].rsplit(".", 1)[0] or "store")
        name, n = stem, 2
        while fold_name(name) in taken:  # `Memory` and `memory` are one folder on macOS
            name, n = f"{stem}-{n}", n + 1
        names.append(name)
        taken.add(fold_name(name))
    return names


# The longest file name ext4, APFS and exFAT take, in bytes of UTF-8.
_FILE_NAME_BYTES = 255


def _numbered(stem: str, tail: str) -> str:
    """`stem` + `tail` (`~2.md`), `stem` shortened so that the name stays a name a file system
    takes: a note of 255 bytes with `~2` was 257, and the export failed (File name too long)."""
    while len(os.fsencode(stem + tail)) > _FILE_NAME_BYTES and stem:
        stem = stem[:-1]
    name = stem + tail
    while len(os.fsencode(name)) > _FILE_NAME_BYTES:  # an extension of 250 bytes
        name = name[:-1]
    return name


def _file_paths(logicals: list[str]) -> dict[str, str]:
    """Each logical path's path below `files/`: itself, unless a folder or file name on its way
    differs only in case or Unicode normal form (`_folded`) from one an earlier path put in the
    same folder; that name then gets `~2` (`soul~2.md`; its stem shortened when the name would be
    over 255 bytes), and everything below a renamed folder goes into it."""
    out: dict[str, str] = {}
    placed: dict[str, str] = {}  # logical prefix -> its path in the export
    owner: dict[str, str] = {}  # folded path in the export -> the logical prefix it holds
    for logical in logicals:
        parts = logical.split("/")
        at = ""
        for i, part in enumerate(parts):
            prefix = "/".join(parts[: i + 1])
            if prefix in placed:
                at = placed[prefix]
                continue
            stem, dot, ext = part.rpartition(".") if i == len(parts) - 1 and "." in part[1:] else (part, "", "")
            name, n = part, 2
            while owner.setdefault(fold_name(f"{at}/{name}"), prefix) != prefix:
                name, n = _numbered(stem, f"~{n}{dot}{ext}"), n + 1
            at = placed[prefix] = f"{at}/{name}" if at else name
        out[logical] = at
    return out


# The longest table or store file name: 255 bytes, less room for `-NN` and `.json`/`.csv`.
_NAME_LENGTH = 200


def _safe_name(name: str) -> str:
    """A file name for a table or store: ASCII letters, digits, `_`, `-`, `.`; every other byte of
    the name's UTF-8 %XX. One name, one file: %XX of a code point (`é0` and U+0E90 were both
    `%E90`, `ā` and `\\x10` + `1` both `%101`) gave two tables one file, the second written over
    the first, and import wrote one table's rows into the other."""
    try:
        raw = name.encode("utf-8", "surrogateescape")  # a store's file name that is not UTF-8
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogatepass")
    out = "".join(chr(b) if (chr(b).isalnum() and b < 0x80) or chr(b) in "_-." else f"%{b:02X}" for b in raw)
    if out in ("", ".", ".."):  # `%` alone is no escape's: the empty name was `_`, a table `_`'s file too
        return out.replace(".", "%2E") or "%"
    if len(out) <= _NAME_LENGTH:
        return out
    # A file name holds 255 bytes, and %XX triples a byte: a 28-character CJK name was too long,
    # and the export failed. Its head, then `~` (never kept by the escaping) and its SHA-256.
    head = out[: _NAME_LENGTH - 33]
    head = head[: head.rindex("%")] if "%" in head[-2:] else head
    return f"{head}~{sha256_hex(raw)[:32]}"


def _write_export(work: Path, source: Source, result: ExportResult, cfg: Config, envx: Environment) -> None:
    fmt = result.format
    metadata_dbs: list[dict[str, Any]] = []
    # By logical path, from the live stores and a snapshot alike: two stores of one file name get
    # their folders (`memory`, `memory-2`) in the same order from both (the config's order and the
    # snapshot's gave one store's rows the other's folder).
    databases = sorted(source.databases, key=lambda d: d.logical)
    names = _store_names(databases)
    rendered: dict[str, str] = {}
    envx.progress.phase("exporting databases", files=len(names), unit="databases")
    for db, name in zip(databases, names, strict=True):
        envx.progress.working(f"exporting {name}")
        envx.progress.advance(files=1)
        con = sqlite3.connect(sqlite_uri(db.copy, "mode=ro&immutable=1"), uri=True)
        try:
            schema = inspect(con)
            counts = {
                t.name: int(con.execute(f"SELECT count(*) FROM {quote(t.name)}").fetchone()[0]) for t in schema.tables
            }
            tables_meta: list[dict[str, Any]] = []
            if fmt in ("json", "csv"):
                folder = work / "databases" / name
                folder.mkdir(parents=True)
                for table in schema.tables:
                    tables_meta.append(_write_table(con, table, folder, name, fmt, result.vectors, counts[table.name]))
            else:
                doc = _markdown_name(schema, name, rendered)
                with open(work / doc, "w", encoding="utf-8") as out:
                    markdown.render(con, schema, f"{db.logical.rsplit('/', 1)[-1]} ({db.logical})", out)
                rendered[doc] = db.logical
                tables_meta = [
                    {"name": t.name, "rows": counts[t.name], "primaryKey": list(t.key)} for t in schema.tables
                ]
        finally:
            con.close()
        if db.integrity != "ok":
            result.warnings.append(f"{db.logical} fails integrity_check ({db.integrity}); exported what could be read")
        exported = ExportedDatabase(
            db.logical,
            name,
            schema.kind,
            db.integrity,
            counts,
            schema.derived,
            {t.name: list(t.vector_columns) for t in schema.tables if t.vector_columns},
        )
        result.databases.append(exported)
        metadata_dbs.append(
            {
                **exported.to_json(),
                "tableFiles": tables_meta,
                "schema": [s.to_json() for s in schema.statements],
                "ftsRebuild": schema.fts_rebuild,
                "virtualTables": schema.virtual,
            }
        )

    identity = LogicalMatcher.for_patterns(cfg.components.identity, Layout(cfg.workspace, envx.home))
    identity_files: list[tuple[str, bytes]] = []
    unsanitized: list[Redaction] = []
    credentials: list[str] = []
    paths = _file_paths([f.logical for f in source.files])
    for logical, path in paths.items():
        if path != logical:
            result.warnings.append(
                f"files/{logical} is exported as files/{path}: its name differs from another's only in case or "
                "Unicode form, which macOS and a USB stick's file system take for one file; rename it when you "
                "copy it back"
            )
    for f in source.files:
        rel = f"files/{paths[f.logical]}"
        data = b"".join(f.read())
        if result.sanitized:
            kept = _sanitized(f.logical, rel, data, result)
            if kept is None:
                continue
            data = kept
        elif is_config_or_env(f.logical) or credential_file(f.logical, None):
            text = data.decode("utf-8", errors="replace")
            if credential_file(f.logical, text):
                credentials.append(rel)
            elif is_config_or_env(f.logical):
                unsanitized.extend(sanitize_text(text, rel)[1])
        dest = work / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        result.files.append(rel)
        if identity.matches(f.logical):
            identity_files.append((paths[f.logical], data))
    if unsanitized:
        where = sorted({r.file for r in unsanitized})
        result.warnings.append(
            f"{len(unsanitized)} secret(s) in {', '.join(where)} were exported as they are; "
            "export with --sanitize before the export leaves this machine"
        )
    if credentials:
        result.warnings.append(
            f"the credential file(s) {', '.join(credentials)} were exported as they are; "
            "export with --sanitize (which leaves them out) before the export leaves this machine"
        )
    if fmt == "markdown":
        _identity_markdown(work / "identity.md", identity_files)

    metadata = {
        "format": EXPORT_FORMAT_NAME,
        "version": EXPORT_VERSION,
        "exportFormat": fmt,
        "phoenixVersion": __version__,
        "time": datetime.now().astimezone().isoformat(timespec="seconds"),
        "source": source.info,
        "vectors": result.vectors,
        "sanitized": result.sanitized,
        "counts": {d.path: d.tables for d in result.databases},
        "databases": metadata_dbs,
        "files": result.files,
        "documents": rendered,
    }
    # Read back by `phx import`: a name that is not UTF-8 must come back exact (jsontext.dumps_exact).
    (work / "metadata.json").write_text(jsontext.dumps_exact(metadata, indent=2) + "\n", encoding="utf-8")
    if result.sanitized:
        redactions = {
            "count": len(result.redactions),
            "redactions": [r.to_json() for r in result.redactions],
            "leftOut": [x.to_json() for x in result.left_out],
        }
        (work / "redactions.json").write_text(json.dumps(redactions, indent=2) + "\n", encoding="utf-8")
        (work / "MIGRATION.md").write_text(migration_guide(result, source), encoding="utf-8")
    checksums = write_checksums(work)
    result.combined = str(checksums["combined"])


# Binary files a sanitized export keeps, by their first bytes: images a memory note shows (PNG,
# JPEG, GIF, WebP), when they also end where an image ends (text appended after a PNG's IEND
# chunk was kept with it). Any other file that is not UTF-8 cannot be read for secrets and is left out.
_PNG = b"\x89PNG\r\n\x1a\n"


def _image(data: bytes) -> bool | None:
    """None when `data` is no PNG, JPEG, GIF or WebP by its first bytes; else whether it ends
    where the image ends, with nothing after it (a PNG's chunks are walked to its IEND)."""
    if data.startswith(_PNG):
        at = len(_PNG)
        while at + 12 <= len(data):
            size, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
            at += 12 + size
            if kind == b"IEND":
                return at == len(data)
        return False
    if data.startswith(b"\xff\xd8\xff"):
        return data.endswith(b"\xff\xd9")
    if data.startswith((b"GIF87a", b"GIF89a")):
        return data.endswith(b"\x3b")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return int.from_bytes(data[4:8], "little") + 8 == len(data)
    return None


def _sanitized(logical: str, rel: str, data: bytes, result: ExportResult) -> bytes | None:
    """A file's bytes as a sanitized export holds them, or None when it is left out: a credential
    file (by name, or by what a file of another name holds) and a file that is not UTF-8 text
    (but a known image) are left out, each listed with its reason; a config or env file loses its
    secrets by key name and by shape (`sanitize_text`), any other text the secrets of a known
    shape (`sanitize_shapes`)."""
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    reason = credential_file(logical, text)
    if reason is None and text is None:
        image = _image(data)
        if image:
            return data
        reason = (
            "not UTF-8 text, so it could not be read for secrets"
            if image is None
            else "an image with bytes after its end, which could not be read for secrets"
        )
    if reason is not None or text is None:
        why = reason or "not UTF-8 text"
        result.left_out.append(LeftOut(rel, why))
        result.warnings.append(f"{logical} was left out of the sanitized export: {why}")
        return None
    cleaned, found = (sanitize_text if is_config_or_env(logical) else sanitize_shapes)(text, rel)
    result.redactions.extend(found)
    return cleaned.encode("utf-8") if found else data


def _markdown_name(schema: DatabaseSchema, store: str, taken: dict[str, str]) -> str:
    base = {
        "argentos-memory": "memories",
        "argentos-observations": "observations",
        "argentos-dashboard": "dashboard",
    }.get(schema.kind, store)
    name, n = f"{base}.md", 2
    folded = {fold_name(t) for t in (*taken, "identity.md", "MIGRATION.md")}
    while fold_name(name) in folded:  # `Identity.md` is `identity.md` on macOS
        name, n = f"{base}-{n}.md", n + 1
    return name


def _write_table(
    con: sqlite3.Connection, table: TableInfo, folder: Path, store: str, fmt: str, vectors: bool, rows: int
) -> dict[str, Any]:
    columns = table.columns if vectors else tuple(c for c in table.columns if c not in table.vector_columns)
    omitted = [c for c in table.columns if c not in columns]
    vec = {c for c in table.vector_columns if c in columns}
    file = f"{_safe_name(table.name)}.{fmt}"
    cursor = con.execute(table.select_sql(columns, ordered=True))
    with open(folder / file, "w", encoding="utf-8", newline="") as out:
        if fmt == "json":
            keys = [json.dumps(c, ensure_ascii=False) + ": " for c in columns]
            flags = [c in vec for c in columns]
            out.write("[\n")
            first = True
            for row in cursor:
                body = ", ".join(k + json_value(v, f) for k, v, f in zip(keys, row, flags, strict=True))
                out.write(("" if first else ",\n") + "{" + body + "}")
                first = False
            out.write("\n]\n" if not first else "]\n")
        else:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(columns)
            flags = [c in vec for c in columns]
            for row in cursor:
                writer.writerow([csv_value(v, f) for v, f in zip(row, flags, strict=True)])
    meta = table.to_json()
    meta.update(
        {
            "file": f"databases/{store}/{file}",
            "rows": rows,
            "exportedColumns": list(columns),
            "omittedColumns": omitted,
        }
    )
    return meta


def _identity_markdown(path: Path, files: list[tuple[str, bytes]]) -> None:
    """The identity files in one document, each under its own `##` heading with its headings
    moved two levels down to nest below it."""
    lines = ["# Identity", ""]
    if not files:
        lines.append("No identity files were found.")
    for logical, data in files:
        name = logical.split("/", 1)[-1]
        lines += [f"## {name}", "", f"_Copy: [files/{logical}](files/{logical})_", ""]
        text = data.decode("utf-8", errors="replace")
        if name.endswith(".md"):
            for line in text.splitlines():
                if line.startswith("#"):
                    hashes = len(line) - len(line.lstrip("#"))
                    line = "#" * min(6, hashes + 2) + line[hashes:]
                lines.append(line)
        else:
            lines += ["```", text.rstrip("\n"), "```"]
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def migration_guide(result: ExportResult, source: Source) -> str:
    """MIGRATION.md: what the export holds, which secrets to set again, how to import it."""
    origin = "live stores" if source.kind == "live" else f"snapshot {source.info.get('name')}"
    lines = [
        "# Migrating this agent to another machine",
        "",
        f"Exported by Phoenix {__version__} from the {origin}"
        f" of `{source.info.get('workspace')}`, in {result.format} format"
        + (", with embedding vectors." if result.vectors else ", without embedding vectors."),
        "",
        "## What is in it",
        "",
    ]
    for db in result.databases:
        rows = sum(db.tables.values())
        lines.append(f"- `{db.path}` ({db.kind}): {len(db.tables)} tables, {rows} rows")
    lines.append(f"- {len(result.files)} identity, memory and config files below `files/`")
    lines += ["", "## Secrets that were removed", ""]
    if result.redactions:
        lines.append("These values were replaced by `REDACTED`. Set each one again on the new machine:")
        lines.append("")
        lines.append("| file | line | key | kind |")
        lines.append("|---|---|---|---|")
        for r in result.redactions:
            lines.append(f"| `{r.file}` | {r.line} | {('`' + r.key + '`') if r.key else '—'} | {r.kind} |")
    else:
        lines.append("No secrets were found in the files.")
    if result.left_out:
        lines += ["", "## Files that were left out", ""]
        lines.append(
            "These files were not exported: copy each one to the new machine yourself, or set it up again there."
        )
        lines.append("")
        lines.append("| file | why |")
        lines.append("|---|---|")
        for x in result.left_out:
            lines.append(f"| `{x.file}` | {x.reason} |")
    lines += [
        "",
        "## Steps",
        "",
        "1. Install Phoenix on the new machine and run `phx init --workspace ~/argent` "
        "(or write `~/.argentos/backup.json`).",
        "2. Check the export: `phx import DIR --dry-run` verifies `checksums.json` and shows what would be merged.",
        "3. Merge the memory stores: `phx import DIR --conflict-mode skip --force` (use `update` to let the export "
        "win over rows that already exist).",
        "4. Copy the files below `files/workspace/` into the workspace and `files/home/` into the home folder.",
        "5. Put the secrets listed above back into the config files (or into environment variables).",
        "6. Start the agent and check that memory search finds recent memories; full-text indexes are rebuilt by the "
        "import, sqlite-vec indexes are rebuilt by the agent.",
        "7. Run `phx backup` to take the first snapshot on the new machine.",
    ]
    if not result.vectors:
        lines += ["", "This export holds no embedding vectors: re-embed the memories on the new machine."]
    return "\n".join(lines) + "\n"
