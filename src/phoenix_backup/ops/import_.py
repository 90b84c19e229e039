"""`phx import DIR`: merge a JSON export back into the live stores.

Order of work: `checksums.json` is verified first (a damaged export imports nothing; the checksums
are unkeyed, so they detect damage, not tampering), then `metadata.json` is read and every store
it names must be one this config backs up (or lie below `--to DIR`), then — after a confirmation,
unless `force` or `dry_run` — each store is merged by primary key in one transaction of its own
(`sinks/sqlite_merge.py`). Stores are found through their logical paths (`home/.argentos/memory.db`), so an
export made on one machine merges into the stores of another user or machine. Only JSON exports
can be imported: CSV cannot tell NULL from an empty string and Markdown is for people.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from phoenix_backup.config import Config
from phoenix_backup.errors import ChecksumMismatch, MergeFailed, NotAnExport, SourceError, UnsafePath, UsageError
from phoenix_backup.memory import checksums
from phoenix_backup.memory.checksums import read_json_text, verify_checksums
from phoenix_backup.memory.schema import SchemaStatement, TableInfo
from phoenix_backup.memory.values import SqlValue, from_json
from phoenix_backup.ops.context import Environment
from phoenix_backup.ops.export import EXPORT_FORMAT_NAME, EXPORT_VERSION
from phoenix_backup.ops.merge import confirm_merge, merged_before
from phoenix_backup.ops.selection import select_sources
from phoenix_backup.sinks import ConflictMode
from phoenix_backup.sinks.sqlite_merge import MergeResult, SameKeys, key_comparison, merge_database
from phoenix_backup.sources.layout import Layout
from phoenix_backup.sources.scope import configured_databases
from phoenix_backup.sql import fold_name, statement_ends, tokens, unquote
from phoenix_backup.units import human_size

_CREATE = re.compile(r"^\s*CREATE\s", re.IGNORECASE)


class ExportRowSource:
    """One store of a JSON export: its schema statements, tables and rows (streamed)."""

    def __init__(self, folder: Path, db: dict[str, Any]) -> None:
        try:
            self._read(folder, db)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise NotAnExport(
                f"metadata.json of the export in {folder} describes a store it cannot hold ({exc}); export again"
            ) from exc

    def _read(self, folder: Path, db: dict[str, Any]) -> None:
        self.folder = folder
        if not isinstance(db, dict) or not isinstance(db.get("path"), str):
            raise TypeError("a store without a path")
        self.logical = db["path"]
        self._statements = [SchemaStatement.from_json(s) for s in _list(db.get("schema", []))]
        for s in self._statements:
            if s.type not in ("table", "index", "view", "trigger") or not _CREATE.match(s.sql):
                raise NotAnExport(
                    f"the export's schema for {self.logical} holds a statement that is not a CREATE ({s.name}); "
                    "import only exports written by `phx export`"
                )
            if _creates(s.sql) != (s.type, s.name):
                raise NotAnExport(
                    f"the export's schema for {self.logical} names a {s.type} {s.name!r} whose statement creates "
                    f"something else ({s.sql[:80]!r}); import only exports written by `phx export`"
                )
        self._tables: list[TableInfo] = []
        self._files: dict[str, Path] = {}
        self._distinct: dict[str, list[tuple[str, str]]] = {}
        for t in _list(db.get("tableFiles", [])):
            info = TableInfo.from_json(t)
            columns = tuple(str(c) for c in _list(t.get("exportedColumns", list(info.columns))))
            info = TableInfo(info.name, columns, info.key, info.sql, info.virtual, info.vector_columns)
            if not isinstance(t["file"], str) or not isinstance(t.get("rows", 0), int):
                raise TypeError("a table file without a name or row count")
            path = (folder / t["file"]).resolve()
            if not path.is_relative_to(folder.resolve()):
                raise NotAnExport(f"the export names a table file outside its folder ({t['file']}); import refused")
            if path in self._files.values():  # an older export's `é0` and U+0E90, `` and `_`: one file
                raise NotAnExport(
                    f"the export names one file for two tables of {self.logical} ({t['file']}): one table's rows "
                    "were written over the other's by an older phx; export again with this version"
                )
            if any(fold_name(info.name) == fold_name(t.name) for t in self._tables):
                # Each is merged on its own into the one live table: the second's rows went over
                # the first's past the duplicate-key check (or one file was never read).
                raise NotAnExport(
                    f"the export gives table {info.name} of {self.logical} twice in metadata.json; `phx export` "
                    "writes each table once — export again"
                )
            self._tables.append(info)
            self._files[info.name] = path

    @property
    def statements(self) -> list[SchemaStatement]:
        return self._statements

    @property
    def tables(self) -> list[TableInfo]:
        return self._tables

    def check_rows(self, table: TableInfo) -> None:
        """Read every row of the table once: a value it cannot hold, or two rows with one key
        (a hand-edited export: the one merged second was skipped, or with `update` overwrote the
        first), is a NotAnExport naming the file. Keys are compared as SQLite compares the table's
        key (its collation and affinity: 'Alice' and 'alice' are one key of a `COLLATE NOCASE`
        key) and kept in a temporary SQLite file, not in memory (a million keys: 120 MiB)."""
        positions = _key_positions(table)
        if positions is None:
            collections.deque(self.rows(table), maxlen=0)
            return
        with tempfile.TemporaryDirectory(prefix="phx-import-keys-") as scratch:
            con = sqlite3.connect(Path(scratch) / "keys.db", isolation_level=None)
            try:
                declared = _declared_key(con, table)
                seen = SameKeys(con, declared)
                con.execute("BEGIN")
                rows = enumerate(self.rows(table), start=1)
                while batch := [
                    (n, k) for n, row in islice(rows, 500) if None not in (k := tuple(row[i] for i in positions))
                ]:
                    for (number, key), first in zip(batch, seen.add([k for _n, k in batch]), strict=True):
                        if first is not None:
                            raise NotAnExport(
                                f"{self._files[table.name].name} of the export holds two rows with the key {key!r:.80} "
                                f"(the second is row {number}), of which the merge would keep one without a word; "
                                "export again"
                            )
                con.execute("ROLLBACK")
                self._distinct[table.name] = declared
            except sqlite3.Error as exc:
                raise MergeFailed(
                    f"the duplicate-key check of {self._files[table.name].name} could not keep its keys in the "
                    f"temporary folder {tempfile.gettempdir()} ({exc}); nothing was imported — free some room there, "
                    "or set TMPDIR to a folder with room, and try again"
                ) from exc
            finally:
                con.close()

    def distinct_keys(self, table: TableInfo) -> list[tuple[str, str]] | None:
        """The key the export declares, once `check_rows` found its keys distinct under it."""
        return self._distinct.get(table.name)

    def rows(self, table: TableInfo) -> Iterator[tuple[SqlValue, ...]]:
        path = self._files[table.name]
        columns = table.columns
        try:
            for obj in _json_objects(self.folder.resolve(), path.relative_to(self.folder.resolve()).as_posix()):
                yield tuple(from_json(obj.get(c)) for c in columns)
        except (ValueError, AttributeError, TypeError, RecursionError) as exc:
            raise NotAnExport(f"{path.name} of the export cannot be read ({exc}); export again") from exc
        except OSError as exc:  # metadata.json names a folder, or a file the export does not hold
            shown = path.relative_to(self.folder.resolve()).as_posix()
            raise NotAnExport(
                f"metadata.json names {shown!r} as the rows of table {table.name} of {self.logical}, which cannot "
                f"be read ({exc.strerror}); export again"
            ) from exc


def _creates(sql: str) -> tuple[str, str] | None:
    """The type and name of what a CREATE statement of `sqlite_master` makes: a trigger spelled
    as a `table` statement was created before the rows, not after them; a statement naming
    another object than its entry created it unchecked. None for what `sqlite_master` never holds
    (TEMP, a schema-qualified name), or no CREATE at all."""
    t = tokens(sql)
    up = [x.upper() for x in t]
    i = 2 if up[1:2] in (["UNIQUE"], ["VIRTUAL"]) else 1
    kind = {"TABLE": "table", "INDEX": "index", "VIEW": "view", "TRIGGER": "trigger"}.get(up[i] if i < len(up) else "")
    if up[:1] != ["CREATE"] or kind is None or (up[1] == "UNIQUE") != (kind == "index" and i == 2):
        return None
    if up[1] == "VIRTUAL" and kind != "table":
        return None
    i += 1
    if up[i : i + 3] == ["IF", "NOT", "EXISTS"]:
        i += 3
    if i >= len(t) or t[i + 1 : i + 2] == ["."] or "\0" in sql:  # SQLite's text ends at a NUL
        return None
    if statement_ends(sql):  # a second statement after it (a trigger's own `;` end nothing)
        return None
    return kind, unquote(t[i])


def _key_positions(table: TableInfo) -> list[int] | None:
    if not table.key or not all(k in table.columns for k in table.key):
        return None
    return [table.columns.index(k) for k in table.key]


def _declared_key(con: sqlite3.Connection, table: TableInfo) -> list[tuple[str, str]]:
    """How SQLite compares the table's key as the export declares it: its CREATE TABLE is made in
    the scratch database `con` and its key read back, when it is one plain `CREATE TABLE name (`
    (never `AS SELECT`, which would run). Another statement, or one SQLite refuses there, compares
    the key's values as they are."""
    t = tokens(table.sql)
    plain = (
        _creates(table.sql) == ("table", table.name) and "(" in t and "AS" not in (x.upper() for x in t[: t.index("(")])
    )
    if plain and table.virtual is None and table.key != ("rowid",):
        try:
            con.execute(table.sql)
        except sqlite3.Error:
            pass
        else:
            return key_comparison(con, table.name, table.key)
    return [("INTEGER", "BINARY") if k == "rowid" else ("", "BINARY") for k in table.key]


def _json_objects(root: Path, rel: str) -> Iterator[dict[str, Any]]:
    """The row objects of the table file `rel` of the export in `root`, one line at a time as
    `phx export` writes them (`[`, one object per line, `]`); a file reformatted by hand is read
    whole instead. Opened as checksums.json was checked: a link swapped in since is refused."""
    with io.TextIOWrapper(checksums.open_export_file(root, rel), encoding="utf-8") as f:
        first = f.readline()
        if first.strip() != "[":
            size = os.fstat(f.fileno()).st_size
            if size > checksums.MAX_JSON_BYTES:  # read whole, as many times its size in memory
                raise ValueError(
                    f"it is not in the one-row-a-line form `phx export` writes, and at {human_size(size)} larger "
                    f"than the {human_size(checksums.MAX_JSON_BYTES)} Phoenix reads whole"
                )
            f.seek(0)
            doc = json.load(f, parse_constant=_no_constant)
            if not isinstance(doc, list):
                raise ValueError("a table file must hold a JSON array")
            yield from doc
            return
        for number, line in enumerate(f, start=2):
            text = line.strip().removesuffix(",")
            if text in ("", "]"):
                continue
            try:
                obj = json.loads(text, parse_constant=_no_constant)
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {number}: {exc.msg}") from exc
            except (ValueError, RecursionError) as exc:  # a number of over 4,300 digits; nesting too deep
                raise ValueError(f"line {number}: {exc}") from exc
            if not isinstance(obj, dict):
                raise ValueError(f"line {number} is not a row object")
            yield obj


def _no_constant(name: str) -> object:
    """NaN and Infinity, which `phx export` never writes (a non-finite REAL is `{"$real": "inf"}`):
    json.loads would take them, and SQLite stores a NaN as NULL."""
    raise ValueError(f"{name} is not a value `phx export` writes")


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("expected a JSON array")
    return value


def read_metadata(folder: Path) -> dict[str, Any]:
    path = folder / "metadata.json"
    try:
        text = read_json_text(path)
    except FileNotFoundError:
        raise NotAnExport(f"{folder} holds no metadata.json; give the folder `phx export` wrote") from None
    except (OSError, ValueError) as exc:
        raise NotAnExport(f"{path} cannot be read ({exc}); export again") from exc
    return parse_metadata(text, folder)


def parse_metadata(text: str, folder: Path) -> dict[str, Any]:
    """The export's metadata.json, checked as far as import relies on it; any fault is one
    NotAnExport naming the folder. (Its stores are checked by `ExportRowSource`.)"""
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise NotAnExport(f"metadata.json of the export in {folder} is not valid JSON ({exc}); export again") from exc
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT_NAME:
        raise NotAnExport(f"{folder} is not a Phoenix memory export; give the folder `phx export` wrote")
    version = meta.get("version")
    if not isinstance(version, int) or version > EXPORT_VERSION:
        raise NotAnExport(
            f"{folder} was written by a newer Phoenix (export version {version}); upgrade phoenix-backup to import it"
        )
    if not isinstance(meta.get("databases", []), list):
        raise NotAnExport(f"metadata.json of the export in {folder} lists no stores; export again")
    return meta


def configured_stores(cfg: Config, envx: Environment) -> set[str]:
    """The real paths of the SQLite stores a `--databases-only` backup of this config covers:
    `databases.sqlite` (those that do not exist yet too) and the databases found in the workspace."""
    out = {os.path.normpath(p) for p in configured_databases(cfg)}
    with contextlib.suppress(SourceError):
        _layout, sel = select_sources(cfg, "databases", envx)
        out |= {os.path.normpath(e.path) for e in sel.entries.values() if e.kind == "sqlite"}
    return out


def _refuse_links(top: Path, target: Path) -> None:
    """A store below --to DIR is reached through no symlink: DIR may hold links (`restore --to`
    writes a snapshot's links as they were), and SQLite would follow them out of DIR."""
    here = top
    for part in target.relative_to(top).parts:
        here = here / part
        if here.is_symlink():
            raise UnsafePath(
                f"{here} is a symlink, and the store {target} would be written through it; Phoenix never writes "
                "through links — move it aside, or import into another folder with --to DIR"
            )


def import_export(
    cfg: Config,
    envx: Environment,
    *,
    folder: Path,
    conflict_mode: ConflictMode = "skip",
    dry_run: bool = False,
    force: bool = False,
    to: Path | None = None,
) -> MergeResult:
    """Merge the export in `folder` into the configured SQLite stores, or into stores below `to`
    (at their logical paths, as `restore --to` writes them). An export only names stores: a store
    that is not one this config backs up is refused, whatever metadata.json says, because the
    export's checksums are unkeyed and detect damage, not tampering."""
    folder = folder.absolute()
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; give the folder `phx export --format json` wrote")
    report = verify_checksums(folder)
    if not report.ok:
        shown = "; ".join(report.problems[:3]) + (
            f"; and {len(report.problems) - 3} more" if len(report.problems) > 3 else ""
        )
        raise ChecksumMismatch(
            f"the export in {folder} does not match its checksums.json ({shown}); nothing was imported — "
            "copy the export again or export anew"
        )
    meta = read_metadata(folder)
    fmt = meta.get("exportFormat")
    if fmt != "json":
        raise NotAnExport(
            f"{folder} is a {fmt} export, which is for reading, not importing; import an export made with --format json"
        )
    result = MergeResult(str(folder), "export", conflict_mode, dry_run, name=str(meta.get("time", "")))
    result.checked_files = report.checked
    if not meta.get("vectors", True):
        result.warnings.append(
            "this export holds no embedding vectors: restored rows have none, existing rows keep theirs"
        )
    if meta.get("sanitized"):
        result.warnings.append(
            "this export was sanitized: its files hold REDACTED in place of secrets, and credential files "
            "were left out (its MIGRATION.md lists them)"
        )
    sources = [ExportRowSource(folder, db) for db in meta.get("databases", [])]
    layout = Layout(cfg.workspace, envx.home)
    targets: list[Path] = []
    stores = configured_stores(cfg, envx) if to is None else set()
    for src in sources:
        try:
            target = layout.to_real(src.logical, to.absolute() if to is not None else None)
        except UnsafePath as exc:
            raise NotAnExport(f"the export names an unsafe store path {src.logical!r}; import refused") from exc
        if to is not None:
            _refuse_links(to.absolute(), target)
        if to is None and os.path.normpath(target) not in stores:
            raise NotAnExport(
                f"the export names the store {src.logical} ({target}), which is not one of the SQLite stores this "
                "config backs up; nothing was imported — import into a folder with --to DIR, or add the store to "
                "databases.sqlite"
            )
        twice = next((t for t in targets if os.path.normpath(t) == os.path.normpath(target)), None)
        if twice is not None:
            # Each entry is merged on its own: the second's rows went over the first's (a key of
            # both counted skipped, or with `update` written over), the duplicate-key check unseen.
            # By path, not through links: two stores of the exporting machine may be one file here.
            raise NotAnExport(
                f"the export names the store {target} twice (as {src.logical}); `phx export` writes each store once "
                "— nothing was imported; export again"
            )
        targets.append(target)
    # Every row is read once before any store changes: a table file of a later store that cannot
    # be read failed the import after the stores before it were merged.
    for src in sources:
        for table in src.tables:
            src.check_rows(table)
    if not dry_run and not force and sources:
        rows = sum(int(t.get("rows", 0)) for db in meta.get("databases", []) for t in db.get("tableFiles", []))
        confirm_merge(
            envx,
            f"Merge {rows} rows of {len(sources)} store(s) from {folder} into the live stores "
            f"(conflict mode {conflict_mode})?",
            "--force",
        )
    for src, target in zip(sources, targets, strict=True):
        try:
            result.databases.append(merge_database(src, src.logical, target, mode=conflict_mode, dry_run=dry_run))
        except MergeFailed as exc:
            if dry_run or not result.databases:
                raise
            # Each store is its own transaction: say which ones this import did change.
            raise merged_before(
                exc, result, "import again once the cause is fixed: their rows then count as unchanged"
            ) from exc
    return result
