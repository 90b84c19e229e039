"""Writing one database of a benchmark repository as a restore writes it (`write_content`: read
ahead, opened on the decode pool, hashed on its own thread, written): wall, CPU-seconds of the
whole process and its context switches, for issue 20's A/B of how the extents are written. Run
each version in turn (PYTHONPATH names its src) and alternate:

    cd bench && PYTHONPATH=/tmp/old/src ../.venv/bin/python restore_writes.py --repo /tmp/rmedium-work/phoenix-repo
    cd bench && PYTHONPATH=../src ../.venv/bin/python restore_writes.py --repo /tmp/rmedium-work/phoenix-repo

`--views N` overrides PENDING_VIEWS (when the version has it). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from extents_memory import stored_node
from run import PASSPHRASE

import phoenix_backup
from phoenix_backup.repo import keys
from phoenix_backup.repo.repository import Repository
from phoenix_backup.sinks import files
from phoenix_backup.storage.local import LocalBackend


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", required=True, help="a bench/run.py --keep repository (phoenix-repo)")
    parser.add_argument("--name", default="memory.db", help="the database's file name (default memory.db)")
    parser.add_argument("--views", type=int, help="PENDING_VIEWS for this run")
    args = parser.parse_args()
    if args.views is not None:
        files.PENDING_VIEWS = args.views  # type: ignore[attr-defined]
    repo = Repository.open(LocalBackend(Path(args.repo)), keys.Credentials(passphrase=PASSPHRASE))
    repo.load_index()
    node = stored_node(Path(args.repo), args.name)
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="restore-writes-") as scratch:
        fd = os.open(Path(scratch) / args.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            files.write_content(repo, fd, args.name, node)
        finally:
            os.close(fd)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "src": str(Path(phoenix_backup.__file__).parent),
                "views": getattr(files, "PENDING_VIEWS", None),
                "wall": round(wall, 3),
                "user": round(after.ru_utime - before.ru_utime, 3),
                "sys": round(after.ru_stime - before.ru_stime, 3),
                "voluntarySwitches": after.ru_nvcsw - before.ru_nvcsw,
                "involuntarySwitches": after.ru_nivcsw - before.ru_nivcsw,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
