"""Restore's reader over a fragmented database: CPU-s to read memory.db of a bench/daily_peak.py
repository whole through `NodeReader`, as stored and cut one extent a 4096-byte page (the same
bytes and SHA-256); docs/benchmarks.md, "The parent's extents in memory". Run each version in
turn (PYTHONPATH names its src) and alternate:

    cd bench && PYTHONPATH=/tmp/ext-old/src ../.venv/bin/python extents_reader.py --repo /tmp/ext-dpm-new/phoenix-repo
    cd bench && PYTHONPATH=../src ../.venv/bin/python extents_reader.py --repo /tmp/ext-dpm-new/phoenix-repo

Prints one JSON line: for each form, its extents, the bytes read and the CPU seconds (all threads).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from extents_memory import stored_node
from run import PASSPHRASE

from phoenix_backup.repo import keys
from phoenix_backup.repo.reader import NodeReader
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Extent, Node, decode_tree, encode_tree
from phoenix_backup.storage.local import LocalBackend

PAGE = 4096


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", required=True, help="a bench/daily_peak.py repository")
    args = parser.parse_args()
    repo = Repository.open(LocalBackend(Path(args.repo)), keys.Credentials(passphrase=PASSPHRASE))
    repo.load_index()
    node = stored_node(Path(args.repo), "memory.db")
    pages = [
        Extent(e.blob, e.offset + at, min(PAGE, e.length - at)) for e in node.content for at in range(0, e.length, PAGE)
    ]
    split = Node(node.name, "sqlite", size=node.size, content=pages, sha256=node.sha256)
    split = decode_tree(encode_tree([split]))[0]  # held as a restore holds it: decoded
    out: dict[str, object] = {}
    for label, n in (("stored", node), ("onePage", split)):
        started = time.process_time()
        reader = NodeReader(repo, node.name, n)
        read = sum(end - start for _blob, start, end in reader.ranges())
        reader.finish()
        out[label] = {"extents": len(n.content), "bytes": read, "cpu": round(time.process_time() - started, 3)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
