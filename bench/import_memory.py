"""Memory and CPU of `phx import`'s read-ahead and merge of N small rows (docs/benchmarks.md,
"Memory of an import's read-ahead").

    .venv/bin/python bench/import_memory.py 1000000          # CPU seconds and peak RSS
    .venv/bin/python bench/import_memory.py 1000000 --trace  # peak of Python memory (tracemalloc)

One table `notes (id INTEGER PRIMARY KEY, body TEXT)` of N rows written in the export's
one-row-a-line form to a temporary folder, read ahead (`ExportRowSource.check_rows`) and merged
into a new store (`merge_database`): the import without the checksums and the config.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

from phoenix_backup.ops.import_ import ExportRowSource
from phoenix_backup.sinks.sqlite_merge import merge_database


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rows", type=int)
    parser.add_argument("--trace", action="store_true", help="measure Python's peak with tracemalloc (slower)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="phx-bench-import-"))
    try:
        folder = work / "export"
        (folder / "db").mkdir(parents=True)
        with open(folder / "db" / "notes.json", "w") as f:
            f.write("[\n")
            for i in range(args.rows):
                f.write(json.dumps({"id": i, "body": f"note {i}"}) + ("," if i < args.rows - 1 else "") + "\n")
            f.write("]\n")
        sql = "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"
        table = {"name": "notes", "columns": ["id", "body"], "primaryKey": ["id"], "sql": sql}
        db = {
            "path": "home/.argentos/memory.db",
            "schema": [{"type": "table", "name": "notes", "table": "notes", "sql": sql}],
            "tableFiles": [{**table, "file": "db/notes.json", "rows": args.rows}],
        }
        source = ExportRowSource(folder, db)
        if args.trace:
            tracemalloc.start()
        c0 = time.process_time()
        for t in source.tables:
            source.check_rows(t)
        c1 = time.process_time()
        read_peak = tracemalloc.get_traced_memory()[1] if args.trace else 0
        if args.trace:
            tracemalloc.reset_peak()
        result = merge_database(source, "home/.argentos/memory.db", work / "live.db", mode="skip", dry_run=False)
        c2 = time.process_time()
        merge_peak = tracemalloc.get_traced_memory()[1] if args.trace else 0
        out = {
            "rows": args.rows,
            "restored": result.total("restored"),
            "readAheadCpuS": round(c1 - c0, 2),
            "mergeCpuS": round(c2 - c1, 2),
            "peakRssMiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
        if args.trace:
            out |= {"readAheadPeakMiB": round(read_peak / 2**20, 1), "mergePeakMiB": round(merge_peak / 2**20, 1)}
        print(json.dumps(out))
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
