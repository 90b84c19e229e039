"""What one `PRAGMA integrity_check` costs, with SQLite's defaults and with a larger page cache
and/or a memory map (`PRAGMA cache_size`, `PRAGMA mmap_size`): CPU-seconds, read system calls,
bytes read and peak resident memory of a fresh process per setting.

    .venv/bin/python bench/integrity_check.py DB [DB...]

The connection is opened as a restore opens its copy (read-only, `immutable=1`); each setting
runs in a process of its own, so `ru_maxrss` is that setting's peak as `/usr/bin/time` would show
it (the pages of a memory-mapped file count in it). The database's pages should be in the page
cache (run it twice): a cold read measures the disk instead. Prints one Markdown table per
database; issue 20's figures and the reasons Phoenix keeps SQLite's defaults are in
docs/restore-checks.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

MIB = 1 << 20

# (label, mmap_size in bytes, cache_size in KiB): 0 keeps SQLite's default (no map; 2 MB cache).
SETTINGS: list[tuple[str, int, int]] = [
    ("defaults (as Phoenix runs it)", 0, 0),
    ("cache_size 8 MiB", 0, 8 * 1024),
    ("cache_size 16 MiB", 0, 16 * 1024),
    ("cache_size 32 MiB", 0, 32 * 1024),
    ("mmap_size 16 MiB", 16 * MIB, 0),
    ("mmap_size 16 MiB + cache_size 8 MiB", 16 * MIB, 8 * 1024),
    ("mmap_size whole file", 1 << 40, 0),
]

CHILD = r"""
import json, resource, sqlite3, sys, time
from pathlib import Path
path, mmap, cache = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
wall = time.monotonic()
con = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro&immutable=1", uri=True)
if mmap:
    con.execute(f"PRAGMA mmap_size={mmap}")
if cache:
    con.execute(f"PRAGMA cache_size=-{cache}")
rows = [str(r[0]) for r in con.execute("PRAGMA integrity_check")]
con.close()
wall = time.monotonic() - wall
ru = resource.getrusage(resource.RUSAGE_SELF)
io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
print(json.dumps({"result": "; ".join(rows[:5]), "wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime,
                  "rss": ru.ru_maxrss * 1024, "minflt": ru.ru_minflt, "syscr": int(io["syscr"]),
                  "rchar": int(io["rchar"])}))
"""


def measure(db: str, mmap: int, cache: int) -> dict[str, float | int | str]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, db, str(mmap), str(cache)], check=True, capture_output=True, text=True
    ).stdout
    doc: dict[str, float | int | str] = json.loads(out)
    return doc


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: bench/integrity_check.py DB [DB...]")
    for db in sys.argv[1:]:
        print(f"\n`{db}` ({os.path.getsize(db) / MIB:.0f} MiB)\n")
        print("| setting | result | wall s | user s | sys s | read calls | MiB read | peak RSS MB | minor faults |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, mmap, cache in SETTINGS:
            m = measure(db, mmap, cache)
            print(
                f"| {label} | {m['result']} | {m['wall']:.2f} | {m['user']:.2f} | {m['sys']:.2f} | {m['syscr']:,} "
                f"| {int(m['rchar']) / MIB:,.0f} | {int(m['rss']) / 1e6:.1f} | {m['minflt']:,} |"
            )


if __name__ == "__main__":
    main()
