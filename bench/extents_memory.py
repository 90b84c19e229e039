"""What a parent's database node costs in memory and CPU (docs/benchmarks.md, "The parent's
extents in memory").

    PYTHONPATH=src .venv/bin/python bench/extents_memory.py --repo /tmp/daily-peak/phoenix-repo

Takes the newest snapshot's `memory.db` node from a repository bench/daily_peak.py left (its
extents as stored), and a node of one extent a page of the same database (the bound: a region
rewritten page by page). For each: the bytes `tracemalloc` counts held by the decoded node and
then by its `ExtentMap` too (and the peak while decoding), and the median process CPU of
decoding, building the map, slicing it whole and encoding the node again. Uses only what the
versions before and after packed extents share, so the same command measures either
(PYTHONPATH picks the version).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from run import PASSPHRASE

from phoenix_backup.repo import keys
from phoenix_backup.repo.chunker import ExtentMap
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Extent, Node, decode_tree, encode_tree
from phoenix_backup.storage.local import LocalBackend

PAGE = 4096


def stored_node(repo_path: Path, name: str) -> Node:
    repo = Repository.open(LocalBackend(repo_path), keys.Credentials(passphrase=PASSPHRASE))
    repo.load_index()
    stack = [repo.list_snapshots()[-1].tree]
    while stack:
        for node in repo.load_tree(stack.pop()):
            if node.name == name:
                return node
            if node.subtree is not None:
                stack.append(node.subtree)
    raise SystemExit(f"no {name} in the newest snapshot")


def one_a_page(node: Node) -> Node:
    """The same database cut into one extent a page, into as many blobs as it has now."""
    ids = sorted({e.blob for e in node.content})
    rng = random.Random(1)
    pages = node.size // PAGE
    content = [Extent(ids[rng.randrange(len(ids))], PAGE * rng.randrange(64), PAGE) for _ in range(pages)]
    return Node(node.name, "sqlite", size=pages * PAGE, content=content, sha256="0" * 64)


def held(tree: bytes) -> dict[str, int]:
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        (node,) = decode_tree(tree)
        after_decode, decode_peak = tracemalloc.get_traced_memory()
        emap = ExtentMap(node.content)
        after_map, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert emap.size == node.size
    return {
        "extents": len(node.content),
        "heldNode": after_decode - base,
        "peakDecoding": decode_peak - base,
        "heldNodeAndMap": after_map - base,
    }


def cpu(fn: Callable[[], object], runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return round(statistics.median(times), 4)


def timings(tree: bytes) -> dict[str, float]:
    (node,) = decode_tree(tree)
    emap = ExtentMap(node.content)
    return {
        "decodeCpu": cpu(lambda: decode_tree(tree)),
        "mapCpu": cpu(lambda: ExtentMap(node.content)),
        "sliceWholeCpu": cpu(lambda: emap.slice(0, emap.size)),
        "encodeCpu": cpu(lambda: encode_tree([node])),
        "iterateCpu": cpu(lambda: [e.blob for e in node.content]),
        "blobIdsCpu": cpu(lambda: {e.blob for e in node.content} if not hasattr(node, "blobs") else set(node.blobs())),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", required=True, type=Path)
    parser.add_argument("--name", default="memory.db")
    args = parser.parse_args()
    node = stored_node(args.repo, args.name)
    for label, n in (("stored", node), ("onePerPage", one_a_page(node))):
        tree = encode_tree([n])
        print(json.dumps({"node": label, **held(tree), **timings(tree)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
