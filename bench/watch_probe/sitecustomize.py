"""A probe of a running `phx watch` (docs/benchmarks.md, "What the steady state of `phx watch`
adds after its imports"): put this folder on PYTHONPATH and name an output file in PHX_PROBE, e.g.

    PYTHONPATH=bench/watch_probe PHX_PROBE=/tmp/probe.jsonl .venv/bin/python bench/watch.py ...

Every PHX_PROBE_EVERY seconds (5) the watch appends one JSON line: its /proc/self/smaps summed by
mapping (Rss, Anonymous, in KiB), glibc's mallinfo2(), SQLite's memory in use, its threads and
/proc/self/status. PHX_PROBE_TM=60,180 also dumps tracemalloc snapshots (PHX_PROBE_TM_FRAMES frames)
at those seconds, to PHX_PROBE.tmN. Other processes (the bench, `phx backup`, the watch's child) are
left alone. A measuring tool only: the probe's thread and its reads add a little of both memory and CPU.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time
from typing import Any


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _smaps() -> dict[str, dict[str, int]]:
    groups: dict[str, dict[str, int]] = {}
    name = None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                path = parts[5] if len(parts) > 5 else "[anon]"
                name = os.path.basename(path) if path.startswith("/") else path
                groups.setdefault(name, {"Rss": 0, "Anonymous": 0, "n": 0})["n"] += 1
            elif parts[0] in ("Rss:", "Anonymous:") and name is not None:
                groups[name][parts[0][:-1]] += int(parts[1])
    return groups


def _sample(libc: Any, sqlite: Any) -> dict[str, Any]:
    info = libc.mallinfo2()
    rec: dict[str, Any] = {
        "smaps": _smaps(),
        "mallinfo": {name: getattr(info, name) for name, _ in _Mallinfo2._fields_},
        "threads": [t.name for t in threading.enumerate()],
        "blocks": sys.getallocatedblocks(),
    }
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "RssAnon", "RssFile", "Threads")):
                key, value = line.split(":", 1)
                rec[key] = value.strip()
    if sqlite is not None:
        cur, high = ctypes.c_int64(), ctypes.c_int64()
        sqlite.sqlite3_status64(0, ctypes.byref(cur), ctypes.byref(high), 0)  # SQLITE_STATUS_MEMORY_USED
        rec["sqlite_mem"], rec["sqlite_hi"] = cur.value, high.value
    return rec


def _run(out_path: str) -> None:
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _Mallinfo2
    try:
        sqlite: Any = ctypes.CDLL("libsqlite3.so.0")
    except OSError:
        sqlite = None
    at = [float(x) for x in os.environ.get("PHX_PROBE_TM", "").split(",") if x]
    taken: set[float] = set()
    if at:
        import tracemalloc

        tracemalloc.start(int(os.environ.get("PHX_PROBE_TM_FRAMES", "1")))
    started = time.monotonic()
    with open(out_path, "a") as out:
        while True:
            time.sleep(float(os.environ.get("PHX_PROBE_EVERY", "5")))
            elapsed = time.monotonic() - started
            rec = {"t": round(elapsed, 1), **_sample(libc, sqlite)}
            for second in at:
                if elapsed >= second and second not in taken:
                    taken.add(second)
                    tracemalloc.take_snapshot().dump(f"{out_path}.tm{int(second)}")
            out.write(json.dumps(rec) + "\n")
            out.flush()


if os.environ.get("PHX_PROBE") and sys.argv[1:2] == ["watch"] and os.path.basename(sys.argv[0]) == "phx":
    threading.Thread(target=_run, args=(os.environ["PHX_PROBE"],), name="probe", daemon=True).start()
