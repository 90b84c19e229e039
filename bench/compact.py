"""Repository cost of compacting `phx watch`'s captures into an ordinary snapshot (ops/compact.py).

    .venv/bin/python bench/compact.py --size small --seconds 60

On a generated sample workspace: `phx init`, `phx backup`, then `phx watch --no-files` for
--seconds while a writer commits --rate transactions a second (a 3 KiB row into each store's
table `bench_log`). Then `phx forget` runs in this process with `now` nine days later, so that the
whole watch is a day that thinning keeps one state of: that state becomes a compacted snapshot
and the watch's base snapshot is forgotten; `phx prune` follows. Printed as JSON: the bytes the
base snapshot added, the bytes the compacted snapshot added (its page runs that are not already
in the repository), the segments before and after, and the repository's size at each step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from phoenix_backup.config import load_config
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.ops.forget import forget
from phoenix_backup.sample import generate_workspace


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=20.0, help="commits a second, across the stores")
    ap.add_argument("--workdir", type=Path, default=Path("bench/work/compact"))
    args = ap.parse_args()
    work = args.workdir.absolute()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    layout = generate_workspace(work / "sample", size=args.size, seed=42)
    phx = str(Path(sys.executable).with_name("phx"))
    env = {
        **os.environ,
        "HOME": str(layout.home),
        "PHX_CONFIG": str(layout.home / ".argentos" / "backup.json"),
        "PHX_PASSPHRASE": "bench passphrase",
        "PHX_CACHE_DIR": str(work / "cache"),
        "XDG_DATA_HOME": str(work / "xdg-data"),
        "XDG_CACHE_HOME": str(work / "xdg-cache"),
        "XDG_CONFIG_HOME": str(work / "xdg-config"),
    }
    config = {
        "workspace": str(layout.workspace),
        "backupDir": str(work / "repo"),
        "include": [],
        "exclude": [],
        "encryption": {"enabled": True, "method": "passphrase"},
    }
    Path(env["PHX_CONFIG"]).write_text(json.dumps(config))
    subprocess.run([phx, "init"], env=env, check=True, capture_output=True)
    subprocess.run([phx, "backup"], env=env, check=True, capture_output=True)
    repo_dir = work / "repo"
    stores = sorted((layout.home / ".argentos").rglob("*.db"))
    for db in stores:
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE IF NOT EXISTS bench_log(k INTEGER PRIMARY KEY, body BLOB)")
        con.commit()
        con.close()
    watch = subprocess.Popen([phx, "watch", "--no-files"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not (repo_dir / "captures").is_dir() or not any((repo_dir / "captures").iterdir()):
        time.sleep(0.1)
    cons = [sqlite3.connect(db, isolation_level=None) for db in stores]
    commits, deadline = 0, time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        con = cons[commits % len(cons)]
        con.execute("INSERT INTO bench_log(body) VALUES (randomblob(3072))")
        commits += 1
        time.sleep(1 / args.rate)
    for con in cons:
        con.close()
    time.sleep(2)
    watch.send_signal(signal.SIGTERM)
    watch.wait(timeout=120)
    segments_before = len(list((repo_dir / "captures").iterdir()))
    size_before = _size(repo_dir)
    envx = Environment(env=env)
    cfg = load_config(Path(env["PHX_CONFIG"]), env)
    started = time.perf_counter()
    result = forget(cfg, envx, now=datetime.now(UTC) + timedelta(days=9))
    seconds = time.perf_counter() - started
    thinned = result.targets["local"].thinned
    assert thinned is not None and thinned.compacted, result.to_json()
    size_compacted = _size(repo_dir)
    subprocess.run([phx, "prune"], env=env, check=True, capture_output=True)
    size_pruned = _size(repo_dir)
    repo = open_repository(cfg, envx)
    try:
        snapshots = {s.id: s for s in repo.list_snapshots()}
        compacted = snapshots[thinned.compacted[-1]]
        bases = [s for s in snapshots.values() if s.scope == "watch" and "compacted" not in s.tags]
    finally:
        repo.close()
    databases = sum(db.stat().st_size for db in stores)
    report = {
        "size": args.size,
        "databasesBytes": databases,
        "commits": commits,
        "segmentsBefore": segments_before,
        "segmentBytesBefore": thinned.bytes_before,
        "segmentsAfter": segments_before - thinned.deleted + len(thinned.merges),
        "segmentBytesAfter": thinned.bytes_after,
        "baseSnapshotsForgotten": len(thinned.bases_forgotten),
        "watchBasesLeft": len(bases),
        "compactedSnapshotAddedBytes": compacted.stats.added,
        "compactionSeconds": round(seconds, 1),
        "repositoryBytes": {"beforeForget": size_before, "afterForget": size_compacted, "afterPrune": size_pruned},
        "watchExit": watch.returncode,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
