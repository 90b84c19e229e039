"""The CLI's progress display (cli/progress.py): restic's line, JSON lines, and a line that never
runs into other output even while worker threads keep reporting."""

from __future__ import annotations

import io
import json
import threading
import time

from phoenix_backup.cli.progress import Figures, Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_line_has_restics_shape() -> None:
    mib = 1 << 20
    fig = Figures("reading files", None, "files", 5, 298, int(278.1 * mib), int(563.5 * mib), 4.2, 69.5 * mib, 5.3)
    assert fig.line() == "[0:04] 49.4% reading files: 5 of 298 files, 278.1 MiB of 563.5 MiB, 69.5 MiB/s, ETA 0:05"
    busy = Figures("reading files", "capturing memory.db (48.0 MiB)", "files", 0, 3, 0, 0, 3725, None, None)
    assert busy.line() == "[1:02:05] 0.0% capturing memory.db (48.0 MiB): 0 of 3 files"
    assert Figures("scanning", None, "files", 0, 0, 0, 0, 1.0, None, None).line() == "[0:01] scanning"


def test_json_lines_say_each_phase_and_end_at_its_totals() -> None:
    out = io.StringIO()
    p = Progress(out, json_lines=True)
    p.phase("reading files", files=3, size=300)
    p.working("capturing memory.db")
    for _ in range(3):
        p.advance(files=1, size=100)
    p.phase("writing trees and index")
    p.clear()
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert docs[0]["phase"] == "reading files" and docs[0]["done"] == 0 and docs[0]["bytesTotal"] == 300
    assert any(d["doing"] == "capturing memory.db" for d in docs)
    last = [d for d in docs if d["phase"] == "reading files"][-1]
    assert (last["done"], last["total"], last["bytesDone"], last["bytesTotal"], last["percent"]) == (
        3,
        3,
        300,
        300,
        100,
    )
    assert last["unit"] == "files" and {"rate", "eta", "seconds"} <= last.keys()
    assert docs[-1]["phase"] == "writing trees and index"


def test_nothing_is_shown_when_neither_mode_is_on() -> None:
    out = _Terminal()
    p = Progress(out)
    p.phase("reading files", files=1, size=1)
    p.advance(files=1, size=1)
    p.clear()
    assert out.getvalue() == ""


def test_what_is_printed_aside_never_shares_a_line_with_the_progress() -> None:
    out = _Terminal()
    p = Progress(out, terminal=True)
    p.phase("reading files", files=10**9, size=10**12)
    stop = threading.Event()

    def worker() -> None:  # a reader thread reporting as fast as it can
        while not stop.is_set():
            p.advance(size=4096)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        for n in range(40):
            with p.aside():
                before = len(out.getvalue())
                out.write(f"phx: notice {n}\n")
                time.sleep(0.002)  # the worker reports meanwhile
                assert out.getvalue()[before:] == f"phx: notice {n}\n"
    finally:
        stop.set()
        thread.join()
        p.clear()
    # Each notice starts on a fresh line: whatever the line showed was erased first.
    for n in range(40):
        at = out.getvalue().index(f"phx: notice {n}\n")
        assert at == 0 or out.getvalue()[at - 1] == "\n" or out.getvalue()[:at].endswith("\x1b[2K"), repr(
            out.getvalue()[max(0, at - 40) : at]
        )
