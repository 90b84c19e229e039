#!/usr/bin/env python3
"""Phoenix's safety steps alone: the least a backup or a restore of the bench's data set may cost.

The core issue requires these steps of every backup and forbids skipping them to meet a figure:

    backup   for every database whose `.db`/`-wal` changed since the last run (Phoenix's own
             rule): a consistent copy (one committed state, as a capture reads it in place),
             `PRAGMA integrity_check` and row counts on the copy, the SHA-256 of the copy; the
             SHA-256 of every new or changed workspace file. (Since the integrity cadence a
             backup checks at most daily: on daily steps this is an upper bound.)
    restore  every file and database written into the destination (bytes, mode, mtime) with
             its SHA-256, then `PRAGMA integrity_check` of every restored database.

This script does only that, with Phoenix's own functions (`phoenix_backup.sources.sqlite`), on
both cores, the largest items first. It reads no repository and writes none: no chunking,
compression, encryption, deduplication, index or snapshot. bench/run.py runs it as the tool
"safety steps" beside the others, so the time of a step it cannot go under is measured in the
same run, on the same state:

    safety.py backup --root SAMPLE --state DIR
    safety.py restore --root SAMPLE --to DEST
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# bench/run.py, beside this script (so first on the path): the one definition of the data set.
from run import DATABASES, sha256_file, workspace_files

from phoenix_backup.sources import sqlite as sqlite_source
from phoenix_backup.sources.sqlite_capture import copy_database

CHUNK = 1 << 20


def _copy_and_check(db: Path, tmp: Path) -> str:
    copy = tmp / (db.name + ".copy")
    copy_database(db, copy)
    try:
        # As in a Phoenix backup: the check runs beside the SHA-256 of the copy.
        with ThreadPoolExecutor(max_workers=1) as aux:
            check = aux.submit(sqlite_source.check_database, copy)
            digest = sha256_file(copy)
            integrity = check.result().integrity
    finally:
        copy.unlink(missing_ok=True)
    if integrity != "ok":
        raise SystemExit(f"{db}: integrity_check says {integrity}")
    return digest


def backup(root: Path, state_dir: Path) -> dict[str, object]:
    state_file = state_dir / "state.json"
    before = json.loads(state_file.read_text()) if state_file.exists() else {"databases": {}, "files": {}}
    tmp = state_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
    now: dict[str, dict[str, object]] = {"databases": {}, "files": {}}
    jobs: list[tuple[int, str, Path, str]] = []
    for rel in DATABASES:
        stat = sqlite_source.source_stat(root / rel).to_json()
        now["databases"][rel] = stat
        if before["databases"].get(rel) != stat:
            jobs.append((int(stat["size"]) + int(stat["walSize"]), rel, root / rel, "db"))
    for rel in workspace_files(root):
        st = (root / rel).stat()
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        now["files"][rel] = key
        if before["files"].get(rel) != key:
            jobs.append((st.st_size, rel, root / rel, "file"))
    jobs.sort(key=lambda j: -j[0])

    def one(job: tuple[int, str, Path, str]) -> str:
        _size, _rel, path, kind = job
        return _copy_and_check(path, tmp) if kind == "db" else sha256_file(path)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(one, jobs))
    state_file.write_text(json.dumps(now))
    return {"databases": sum(1 for j in jobs if j[3] == "db"), "files": sum(1 for j in jobs if j[3] == "file")}


def _write_copy(src: Path, dest: Path) -> str:
    """Write `src`'s bytes to `dest` with its mode and mtime; the SHA-256 is what a restore
    compares with the snapshot's."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(src, "rb", buffering=0) as f, open(dest, "wb", buffering=0) as out:
        while block := f.read(CHUNK):
            out.write(block)
            digest.update(block)
    st = src.stat()
    shutil.copymode(src, dest)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
    return digest.hexdigest()


def restore(root: Path, dest: Path) -> dict[str, object]:
    items = sorted(
        [*DATABASES, *workspace_files(root)],
        key=lambda rel: -(root / rel).stat().st_size,
    )

    def one(rel: str) -> None:
        _write_copy(root / rel, dest / rel)
        if rel in DATABASES:
            integrity = sqlite_source.check_database(dest / rel).integrity
            if integrity != "ok":
                raise SystemExit(f"{rel}: integrity_check says {integrity}")

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(one, items))
    return {"items": len(items)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backup")
    b.add_argument("--root", type=Path, required=True)
    b.add_argument("--state", type=Path, required=True)
    r = sub.add_parser("restore")
    r.add_argument("--root", type=Path, required=True)
    r.add_argument("--to", type=Path, required=True)
    args = parser.parse_args()
    done = backup(args.root, args.state) if args.command == "backup" else restore(args.root, args.to)
    print(json.dumps(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
