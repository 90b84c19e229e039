"""Repository size before and after thinning a synthetic day of `phx watch` capture segments.

    .venv/bin/python bench/thin.py --every 10 --pages 5

It initialises an encrypted local repository in --workdir (emptied first) and seals, with the
capture module's API at injected times, one segment every --every seconds over one day that
ended --age hours ago: each holds one commit of --pages changed 4 KiB pages of a --db-pages page
database (page 1 every time, the others drawn with a skew towards a hot set, as an agent's
inserts and updates rewrite the same b-tree pages; each page a quarter random bytes, the rest
zeros, about as compressible as a SQLite page). Then it thins them as `phx forget` does
(ops/forget.py `thin_captures`) with the default policy (every state for a day, hourly up to
seven days) and prints segment counts, bytes and times as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from phoenix_backup.ops.forget import thin_captures
from phoenix_backup.repo import captures, keys
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.retention import Plan, Policy
from phoenix_backup.storage.local import LocalBackend

PS = 4096
S = 1_000_000


def _page(rng: random.Random) -> bytes:
    return rng.randbytes(PS // 4) + bytes(PS - PS // 4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/phx-bench-thin"))
    ap.add_argument("--every", type=int, default=10, help="seconds between segments")
    ap.add_argument("--pages", type=int, default=5, help="changed pages per segment")
    ap.add_argument("--db-pages", type=int, default=25_000)
    ap.add_argument("--age", type=float, default=26, help="hours since the day of segments ended")
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    fast = {"n": 2**10, "r": 8, "p": 1}
    repo = Repository.init(LocalBackend(args.workdir), lambda m: keys.wrap_passphrase(m, "pw", kdf_params=fast), True)
    base = "a" * 64
    repo.backend.write("snapshots/" + base, b"a stand-in for the base snapshot")
    rng = random.Random(19)
    now = captures.to_us(datetime.now(UTC))
    end_of_day = now - int(args.age * 3600 * S)
    start = end_of_day - 24 * 3600 * S
    count = 24 * 3600 // args.every
    chain, previous, since = rng.randbytes(16).hex(), None, start
    started = time.perf_counter()
    for k in range(count):
        until = start + (k + 1) * args.every * S
        at = until - args.every * S // 2
        hot = {1} | {min(args.db_pages, int(rng.paretovariate(1.2))) for _ in range(args.pages - 1)}
        pages = sorted(hot)
        commit = captures.Commit(at, args.db_pages, tuple(pages))
        part = captures.Part(
            "home/.argentos/memory.db",
            PS,
            at if k == 0 else since,
            until,
            (commit,),
            captures.Base(base, "b" * 64) if k == 0 else None,
        )
        seg = captures.build(chain, k, previous, "host", [(part, [_page(rng) for _ in pages])])
        name, raw = captures.seal(repo, seg)
        repo.backend.write(name, raw)
        os.utime(args.workdir / name, (until / S, until / S))  # written when sealed, as by the watch
        previous, since = name.removeprefix(captures.PREFIX), until
    written = time.perf_counter() - started

    def size() -> int:
        return sum(f.stat().st_size for f in (args.workdir / "captures").iterdir())

    before, n_before = size(), len(os.listdir(args.workdir / "captures"))
    started = time.perf_counter()
    policy = Policy(last=1)
    result = thin_captures(repo, policy, Plan(policy), datetime.now(UTC), dry_run=False)
    thinned = time.perf_counter() - started
    assert result is not None
    after, n_after = size(), len(os.listdir(args.workdir / "captures"))
    print(
        json.dumps(
            {
                "segmentsBefore": n_before,
                "bytesBefore": before,
                "segmentsAfter": n_after,
                "bytesAfter": after,
                "ratio": round(after / before, 4),
                "merges": len(result.merges),
                "writeSeconds": round(written, 1),
                "thinSeconds": round(thinned, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
