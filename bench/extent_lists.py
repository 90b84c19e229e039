"""A fragmented database's node inline (format 5) and in extent lists (format 6): what a walk of
the trees holds, what a daily change rewrites, and the CPU of writing and reading the node
(docs/benchmarks.md, "Extent lists (format 6)").

One node of `--extents` extents (one a 4 KiB page, each of another blob: the bound after many
days), saved in a fresh repository of each format; then a day that changes `--changed` pages
spread over the database. Memory with tracemalloc, CPU with process time (medians of --rounds).
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from phoenix_backup.repo import keys
from phoenix_backup.repo.chunker import ExtentMap
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Extents, ExtentsBuilder, Node, encode_tree
from phoenix_backup.repo.walker import Trees
from phoenix_backup.storage.local import LocalBackend

PAGE = 4096
MB = 1024 * 1024


def _node(count: int, changed: set[int], day: int) -> Node:
    out = ExtentsBuilder(merge=False)
    for i in range(count):
        blob = hashlib.sha256(f"{i}:{day if i in changed else 0}".encode()).digest()
        out.add(blob, 0, PAGE)
    content = out.build()
    return Node(name="memory.db", type="sqlite", size=content.size, content=content, sha256="0" * 64)


def _encode(repo: Repository, node: Node) -> bytes:
    return encode_tree(repo.listed([node]))


def _cpu(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def measure(root: Path, lists: bool, count: int, changed: int, rounds: int, spread: bool) -> dict[str, float]:
    repo = Repository.init(
        LocalBackend(root),
        lambda m: keys.wrap_passphrase(m, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1}),
        encrypted=True,
        extent_lists=lists,
    )
    day1 = _node(count, set(), 1)
    tree1, _added = repo.save_tree([day1])
    repo.flush()
    added1 = repo.stats.bytes_added
    if spread:
        pages = set(range(0, count, max(count // max(changed, 1), 1)))
    else:  # one region changed, as a day's inserts into one table's pages
        pages = set(range(count // 2, count // 2 + changed))
    day2 = _node(count, pages, 2)
    before = repo.stats.bytes_added
    repo.save_tree([day2])
    repo.flush()
    added2 = repo.stats.bytes_added - before
    save_cpu = _cpu(functools.partial(_encode, repo, day2), rounds)
    del day1, day2
    gc.collect()
    tracemalloc.start()
    trees = Trees(repo)
    trees.load(tree1)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    [node] = trees.nodes[tree1]
    del trees
    gc.collect()
    # A daily backup's comparison with this parent: its tree loaded, then every region of 256
    # pages resolved to the parent's extents, in order (repo/chunker.py `ExtentMap`).
    tracemalloc.start()
    [parent] = repo.load_tree(tree1)
    prev = ExtentMap(parent.content)
    for start in range(0, prev.size, 256 * PAGE):
        prev.slice(start, 256 * PAGE)
    _now, compare_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del prev, parent
    read_cpu = _cpu(lambda: Extents.of(node.content), rounds)
    load_cpu = _cpu(lambda: repo.load_tree(tree1), rounds)
    repo.close()
    return {
        "held_mb": held / MB,
        "peak_mb": peak / MB,
        "compare_peak_mb": compare_peak / MB,
        "day2_added_kb": added2 / 1024,
        "full_added_kb": added1 / 1024,
        "cut_cpu": save_cpu,
        "load_tree_cpu": load_cpu,
        "read_extents_cpu": read_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extents", type=int, default=440_199)
    parser.add_argument("--changed", type=int, default=2000, help="pages a day changes, a day changes")
    parser.add_argument("--spread", action="store_true", help="the changed pages spread evenly, not one region")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(
        "| memory.db node | walk holds MB | walk peak MB | comparison peak MB | tree+lists of day 1 KiB "
        "| day 2 adds KiB | encode node CPU-s | load tree CPU-s | read extents CPU-s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for lists in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            m = measure(Path(tmp) / "repo", lists, args.extents, args.changed, args.rounds, args.spread)
        name = "format 6, lists" if lists else "format 4/5, inline"
        print(
            f"| {name} | {m['held_mb']:.2f} | {m['peak_mb']:.2f} | {m['compare_peak_mb']:.2f} | "
            f"{m['full_added_kb']:,.0f} | "
            f"{m['day2_added_kb']:,.0f} | {m['cut_cpu']:.3f} | {m['load_tree_cpu']:.3f} | {m['read_extents_cpu']:.3f} |"
        )


if __name__ == "__main__":
    main()
