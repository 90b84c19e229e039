"""Pack writes to a store far away: wall time and peak memory of storing MIB MiB of incompressible
1 MiB blobs through a backup's sealing and pack writer threads (`Repository.save_blob_async`),
into a local repository whose every pack write first waits LATENCY seconds (an S3 or R2 PUT).

    .venv/bin/python bench/slow_store.py [MIB] [LATENCY]      # default 100 MiB, 0.5 s

Malloc is set up as `phx` sets it (cli/main.py), so the peak is the one a backup would show.
Prints one line: seconds, peak RSS, and how many pack writes were under way at most.
"""

from __future__ import annotations

import random
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

from phoenix_backup.cli.main import _limit_malloc_arenas
from phoenix_backup.repo import keys
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend


class FarStore(LocalBackend):
    def __init__(self, root: Path, latency: float) -> None:
        super().__init__(root)
        self.latency = latency
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        if name.startswith("data/"):
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            time.sleep(self.latency)
        try:
            super().write(name, data, exclusive=exclusive, cold=cold)
        finally:
            if name.startswith("data/"):
                with self.lock:
                    self.now -= 1


def main() -> None:
    _limit_malloc_arenas()
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    latency = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
    with tempfile.TemporaryDirectory(prefix="phx-slow-store-") as tmp:
        root = Path(tmp) / "repo"
        Repository.init(
            LocalBackend(root),
            lambda m: keys.wrap_passphrase(m, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1}),
            encrypted=True,
        )
        store = FarStore(root, latency)
        repo = Repository.open(store, keys.Credentials(passphrase="pw"))
        repo.load_index()
        rnd = random.Random(1)
        started = time.monotonic()
        for _ in range(mib):
            repo.save_blob_async(BlobType.DATA, rnd.randbytes(1024 * 1024))
        repo.flush()
        repo.close()
        took = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{mib} MiB, pack writes of {latency} s: {took:.1f} s, peak RSS {peak:.1f} MiB, {store.most} writes at once")


if __name__ == "__main__":
    main()
