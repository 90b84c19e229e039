"""`verify --read-data` past the cap of nodes waiting in the pack pass (repo/prover.py MAX_WAITING):
CPU, peak RSS, pack reads and blob opens of two versions of Phoenix, alternated (docs/proving.md).

    .venv/bin/python bench/verify_cliff.py --workdir /tmp/vcliff-cliff --old /tmp/old/src \\
        --nodes 20000 --cap 10000 --rounds 3

The repository (made once in `--workdir`, kept): a tiny workspace backed up with `phx`, then a
snapshot of `--nodes` distinct file nodes of two extents each, bytes of blob A then 64 of blob Z
(`--blob-kib` each, 64 by default), A in the first pack and Z in the last, 8 MiB of random blobs
between them (every node waits the whole pass for Z). Each round runs
`verify_repository(read_data=True)` with `prover.MAX_WAITING` set to `--cap`, in a process of its
own per version (`--old`: the other version's `src` folder; the installed one is the new), in
alternating order, and prints per version the median of user+system CPU seconds, the peak RSS (of
a run of its own), and the counts of one run: data blobs opened, pack reads (whole packs and
ranges), `checked.files`, `ok`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from run import PASSPHRASE, Phoenix

from phoenix_backup.repo import keys
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Extent, Node
from phoenix_backup.storage.local import LocalBackend

RUN = """
import json, sys
sys.path.insert(0, sys.argv[1]) if sys.argv[1] else None
from phoenix_backup.repo import keys, prover
from phoenix_backup.repo.checker import verify_repository
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend
prover.MAX_WAITING = int(sys.argv[4])
backend = LocalBackend(sys.argv[2])
repo = Repository.open(backend, keys.Credentials(passphrase=sys.argv[3]))
repo.load_index()
counts = {"opened": 0, "packReads": 0, "rangeReads": 0}
real_open, real_read, real_range = repo.open_blob, backend.read, backend.read_range
real_into = backend.read_range_into
def into(name, *args, **kwargs):
    counts["rangeReads"] += name.startswith("data/")
    return real_into(name, *args, **kwargs)
backend.read_range_into = into
def opening(kind, *args, **kwargs):
    counts["opened"] += kind == BlobType.DATA
    return real_open(kind, *args, **kwargs)
def reading(name, *args, **kwargs):
    counts["packReads"] += name.startswith("data/")
    return real_read(name, *args, **kwargs)
def ranging(name, *args, **kwargs):
    counts["rangeReads"] += name.startswith("data/")
    return real_range(name, *args, **kwargs)
repo.open_blob, backend.read, backend.read_range = opening, reading, ranging
result = verify_repository(repo, read_data=True)
print(json.dumps({"ok": result.ok, "files": result.checked["files"], **counts}))
"""


def make(work: Path, nodes: int, blob: int, env: dict[str, str]) -> Phoenix:
    """The repository below `work`: a tiny backup, then the planted snapshot of `nodes` nodes."""
    root = work / "sample"
    main = "import sys; sys.argv[0] = 'phx'; from phoenix_backup.cli.main import main; main()"
    tool = Phoenix(root, work, env, [sys.executable, "-c", main])
    done = work / f"done-{nodes}-{blob}"
    if done.exists():
        return tool
    if work.exists():
        shutil.rmtree(work)
    (root / "home").mkdir(parents=True)
    (root / "workspace").mkdir()
    (root / "workspace" / "a.txt").write_text("a\n")
    tool.init()
    subprocess.run(tool.backup_cmd("full"), env=tool.env, check=True, capture_output=True)
    repo = Repository.open(LocalBackend(str(tool.repo)), keys.Credentials(passphrase=PASSPHRASE))
    try:
        repo.load_index()
        base = repo.list_snapshots()[0]
        a = os.urandom(blob)
        z = os.urandom(blob)
        blob_a = repo.save_blob(BlobType.DATA, a)[0]
        repo.flush()
        for _ in range(8 * 1024 * 1024 // blob):
            repo.save_blob(BlobType.DATA, os.urandom(blob))
        repo.flush()
        blob_z = repo.save_blob(BlobType.DATA, z)[0]
        repo.flush()
        dirs = []
        for d in range(0, nodes, 1000):
            files = []
            for i in range(d, min(nodes, d + 1000)):
                offset = i % (blob - 64)
                length = 1 + i // (blob - 64)  # distinct nodes however many
                data = a[offset : offset + length] + z[offset : offset + 64]
                content = [Extent(blob_a, offset, length), Extent(blob_z, offset, 64)]
                files.append(
                    Node(f"f{i:06}", "file", size=len(data), content=content, sha256=hashlib.sha256(data).hexdigest())
                )
            dirs.append(Node(f"d{d // 1000:03}", "dir", mode=0o755, subtree=repo.save_tree(files)[0]))
        root_tree = repo.save_tree(dirs)[0]
        repo.flush()
        repo.save_snapshot(dataclasses.replace(base, tree=root_tree, parent=None))
    finally:
        repo.close()
    done.write_text("")
    return tool


def run(src: str, tool: Phoenix, cap: int) -> tuple[float, int, dict[str, object]]:
    """One verify in a child process: its CPU seconds, its peak RSS in KiB and its counts."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-c", RUN, src, str(tool.repo), PASSPHRASE, str(cap)],
        env=tool.env,
        check=True,
        capture_output=True,
        text=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return cpu, after.ru_maxrss, json.loads(proc.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="where the repository is made and kept")
    parser.add_argument("--old", required=True, help="the src folder of the version to compare with")
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument("--cap", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--blob-kib", type=int, default=64, help="the size of blobs A and Z")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHX_", "RESTIC_", "BORG_"))}
    env["LC_ALL"] = "C.UTF-8"
    tool = make(Path(args.workdir).absolute(), args.nodes, args.blob_kib * 1024, env)
    versions = {"old": str(Path(args.old).absolute()), "new": ""}
    figures: dict[str, list[float]] = {v: [] for v in versions}
    counts: dict[str, dict[str, object]] = {}
    peaks: dict[str, int] = {}
    for r in range(args.rounds):
        # A separate parent per measurement would be cleaner; ru_maxrss of RUSAGE_CHILDREN is the
        # largest child so far, so each version's peak is taken from a run of its own below.
        for v in list(versions) if r % 2 == 0 else list(reversed(versions)):
            cpu, _rss, counted = run(versions[v], tool, args.cap)
            figures[v].append(cpu)
            counts[v] = counted
    for v, src in versions.items():
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
                sys.executable,
                "-c",
                RUN,
                src,
                str(tool.repo),
                PASSPHRASE,
                str(args.cap),
            ],
            env=tool.env,
            check=True,
            capture_output=True,
            text=True,
        )
        peaks[v] = int(child.stdout)
    for v in versions:
        cpus = figures[v]
        line = {"version": v, "nodes": args.nodes, "cap": args.cap, "cpuMedian": round(statistics.median(cpus), 2)}
        line |= {"cpu": [round(c, 2) for c in cpus], "peakRssMB": round(peaks[v] / 1024, 1), **counts[v]}
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
