"""Two restores in one process (the Python API) keep one journal each.

Both used to write `restore-journal/<pid>-<start>`: the first to finish deleted the other's record,
and when the process was then killed the other restore's temporary files stayed in the user's
folders for good. The journals of a process that is killed are found and obeyed by the next
command (tests/e2e/test_leftovers.py covers the rest of the journal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from phoenix_backup.sinks import leftovers

# A process that runs two restores' journals, as two FileWriters would: each notes its folder and
# puts a temporary file there; the first finishes (closes its journal), then the process is killed
# while the second is still writing.
_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from phoenix_backup.repo.locks import own_start_time
    from phoenix_backup.sinks.leftovers import Journal

    first, second = Path(sys.argv[1]), Path(sys.argv[2])
    tmp = f".phx-tmp-{os.getpid()}-{own_start_time()}-"
    a, b = Journal(), Journal()
    a.record(first)
    (first / (tmp + "aaaaaaaaaaaa")).write_bytes(b"a copy the first restore renames")
    b.record(second)
    (second / (tmp + "bbbbbbbbbbbb")).write_bytes(b"half of the second restore's copy")
    os.rename(first / (tmp + "aaaaaaaaaaaa"), first / "done.db")
    a.close()  # the first restore ends
    os.kill(os.getpid(), signal.SIGKILL)  # the second is killed mid-write
    """
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("PHX_CACHE_DIR", str(root))
    return root


def test_two_restores_in_one_process_keep_their_own_journals(tmp_path: Path, cache: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    a, b = leftovers.Journal(), leftovers.Journal()
    a.record(first)
    b.record(second)
    a.close()
    journals = list((cache / "restore-journal").iterdir())
    assert len(journals) == 1, f"the first restore's end removed the second's journal: {journals}"
    assert str(second) in journals[0].read_text()
    b.close()
    assert list((cache / "restore-journal").iterdir()) == []


def test_a_killed_process_leaves_nothing_of_its_second_restore(tmp_path: Path, cache: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    env = {**os.environ, "PHX_CACHE_DIR": str(cache)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(first), str(second)], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert [p.name for p in second.iterdir()] != [], "the child wrote no temporary file"

    removed = leftovers.clean()  # what the next command does

    assert [p.name for p in second.iterdir()] == [], f"the killed restore's temporary file stayed: {removed}"
    assert [p.name for p in first.iterdir()] == ["done.db"]
    assert list((cache / "restore-journal").iterdir()) == []
