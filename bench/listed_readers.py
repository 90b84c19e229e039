"""A listed database (format 6) read back by the restore's reader and proved by `verify
--read-data`: the peak of each (tracemalloc) and its process CPU (docs/benchmarks.md, "Extent
lists (format 6)").

One database node of `--extents` extents of 4 KiB, over `--blobs` data blobs of 64 KiB each named
again in every list blob (a fragmented database after many days: blob k holds page k of each
day's region), in a format 6 repository with the real list cut (64 MiB, 65,536 extents).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import random
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from phoenix_backup.repo import keys
from phoenix_backup.repo.checker import verify_repository
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.reader import NodeReader
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.snapshot import Snapshot, SnapshotStats
from phoenix_backup.repo.tree import ExtentsBuilder, Node
from phoenix_backup.storage.local import LocalBackend

PAGE = 4096
MB = 1024 * 1024


def _repository(path: Path, extents: int, blobs: int) -> Repository:
    repo = Repository.init(LocalBackend(path), keys.wrap_none, False)
    rng = random.Random(1)
    datas = [rng.randbytes(16 * PAGE) for _ in range(blobs)]
    ids = [repo.save_blob(BlobType.DATA, d)[0] for d in datas]
    out = ExtentsBuilder(merge=False)
    digest = hashlib.sha256()
    for i in range(extents):
        k, at = i % blobs, (i // blobs) % 16 * PAGE
        out.add(ids[k], at, PAGE)
        digest.update(datas[k][at : at + PAGE])
    content = out.build()
    node = Node("memory.db", "sqlite", size=content.size, content=content, sha256=digest.hexdigest())
    sub, _ = repo.save_tree([node])
    root, _ = repo.save_tree([Node("workspace", "dir", mode=0o755, subtree=sub)])
    repo.flush()
    stats = SnapshotStats(files=1)
    when = "2026-01-01T00:00:00+00:00"
    snap = Snapshot(when, when[:16], "h", "u", "full", (), root, None, {}, (), stats)
    repo.save_snapshot(snap)
    return repo


def _measure(label: str, work: Callable[[], object]) -> None:
    gc.collect()
    t0 = time.process_time()
    work()
    cpu = time.process_time() - t0
    gc.collect()
    tracemalloc.start()
    try:
        work()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"{label}: peak {peak / MB:.2f} MB (tracemalloc), {cpu:.2f} CPU-s (untraced)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--extents", type=int, default=200_000)
    ap.add_argument("--blobs", type=int, default=2_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="phx-listed-") as tmp:
        repo = _repository(Path(tmp), args.extents, args.blobs)
        root = repo.list_snapshots()[0].tree
        [workspace] = repo.load_tree(root)
        assert workspace.subtree is not None
        sub = workspace.subtree

        def restore() -> None:
            [node] = repo.load_tree(sub)
            reader = NodeReader(repo, "memory.db", node)
            for _chunk in reader.chunks():
                pass
            reader.finish()

        def verify() -> None:
            assert verify_repository(repo, read_data=True).ok

        print(f"{args.extents:,} extents over {args.blobs:,} blobs")
        _measure("restore's reader", restore)
        _measure("verify --read-data", verify)
        repo.close()


if __name__ == "__main__":
    main()
