"""What `Repository.load_index` costs on a repository: process CPU-s, RSS growth and (with
`trace`) tracemalloc's kept and peak bytes, per blob (docs/benchmarks.md, issues 19 and 20).

    PHX_PASSPHRASE=... python bench/index_load.py REPO_PATH [cpu|trace]

It only reads (the index objects are read once first, into the page cache).
"""

from __future__ import annotations

import gc
import os
import sys
import time
import tracemalloc

from phoenix_backup.repo import keys
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    path, mode = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "cpu")
    repo = Repository.open(LocalBackend(path), keys.Credentials(passphrase=os.environ.get("PHX_PASSPHRASE")))
    names = [info.name for info in repo.backend.list("index/")]
    for name in names:
        repo.backend.read(name)
    gc.collect()
    before = rss()
    if mode == "trace":
        tracemalloc.start()
    start = time.process_time()
    repo.load_index()
    cpu = time.process_time() - start
    kept, peak = tracemalloc.get_traced_memory() if mode == "trace" else (0, 0)
    tracemalloc.stop()
    gc.collect()
    grown = rss() - before
    n = max(len(repo.index), 1)
    print(
        f"objects={len(names)} blobs={len(repo.index)} cpu={cpu:.4f}s rss+={grown / 1e6:.2f}MB ({grown / n:.0f} B/blob)"
        + (f" traced kept {kept / n:.0f} B/blob, peak {peak / n:.0f} B/blob" if mode == "trace" else "")
    )


if __name__ == "__main__":
    main()
