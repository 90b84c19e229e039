"""The timeline of `phx watch`'s capture segments with and without the header cache.

    .venv/bin/python bench/timeline.py --segments 600 --pages 20

It initialises an encrypted local repository in --workdir (emptied first) and seals --segments
segments of one chain, each with one commit of --pages changed 4 KiB pages (a quarter random
bytes, as in bench/thin.py; 20 pages is about what the medium workspace's load seals a second).
Then it builds the timeline (repo/captures.py `timeline`, what `phx list --timeline`, `restore
--at` and thinning start from) alternately without the cache (every segment read and opened, as
before the cache) and with a warm cache, --rounds times each, and prints the times as JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from pathlib import Path

from phoenix_backup.repo import captures, keys
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend

PS = 4096
S = 1_000_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/phx-bench-timeline"))
    ap.add_argument("--segments", type=int, default=600)
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    fast = {"n": 2**10, "r": 8, "p": 1}
    repo = Repository.init(
        LocalBackend(args.workdir / "repo"), lambda m: keys.wrap_passphrase(m, "pw", kdf_params=fast), True
    )
    repo.backend.write("snapshots/" + "a" * 64, b"a stand-in for the base snapshot")
    rng = random.Random(3)
    chain, previous, start = rng.randbytes(16).hex(), None, 1_700_000_000 * S
    for k in range(args.segments):
        since, until = start + k * S, start + (k + 1) * S
        pages = sorted(rng.sample(range(1, 25_000), args.pages))
        commit = captures.Commit(until - S // 2, 25_000, tuple(pages))
        base = captures.Base("a" * 64, "b" * 64) if k == 0 else None
        part = captures.Part("home/.argentos/memory.db", PS, commit.at if k == 0 else since, until, (commit,), base)
        data = [rng.randbytes(PS // 4) + bytes(PS - PS // 4) for _ in pages]
        name, raw = captures.seal(repo, captures.build(chain, k, previous, "host", [(part, data)]))
        repo.backend.write(name, raw)
        previous = name.removeprefix(captures.PREFIX)
    stored = sum(f.stat().st_size for f in (args.workdir / "repo" / "captures").iterdir())
    cache = args.workdir / "cache"
    started = time.perf_counter()
    captures.timeline(repo, cache)  # fills the cache
    filling = time.perf_counter() - started
    cold: list[float] = []
    warm: list[float] = []
    for _ in range(args.rounds):
        for folder, out in ((None, cold), (cache, warm)):
            started = time.perf_counter()
            tl = captures.timeline(repo, folder)
            out.append(time.perf_counter() - started)
            assert len(tl.ranges) == 1 and len(tl.segments) == args.segments
    print(
        json.dumps(
            {
                "segments": args.segments,
                "segmentBytes": stored,
                "withoutCacheSeconds": round(statistics.median(cold), 3),
                "firstRunFillingTheCacheSeconds": round(filling, 3),
                "warmCacheSeconds": round(statistics.median(warm), 3),
                "ratio": round(statistics.median(warm) / statistics.median(cold), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
