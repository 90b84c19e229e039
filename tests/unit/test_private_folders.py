"""The folders Phoenix makes for its own files (the cache, the run log's) are 0700 with every
missing parent, whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from phoenix_backup.repo.cache import Cache
from phoenix_backup.schedule.runlog import RunLog, log_dir


def test_the_cache_and_log_folders_and_their_parents_are_private_under_umask_000(tmp_path: Path) -> None:
    """`mkdir(parents=True, mode=0o700)` gives the missing parents the umask's mode: under umask
    000 a fresh home's ~/.cache and ~/.argentos were made 0777, where any user could rename
    Phoenix's 0700 folder away and put their own in its place (a cache of page hashes that makes
    a backup skip changed pages, a data folder with a state file of theirs). Every folder made is
    0700."""
    home = tmp_path / "home"
    old = os.umask(0)
    try:
        Cache("0123abcd", root=home / ".cache" / "phoenix")
        RunLog(log_dir(home))
    finally:
        os.umask(old)
    made = [p for p in home.rglob("*") if p.is_dir()]
    assert len(made) == 6, made  # .cache, phoenix, the repository's; .argentos, backup, logs
    assert {
        str(p.relative_to(home)): oct(stat.S_IMODE(p.stat().st_mode)) for p in made if p.stat().st_mode & 0o077
    } == {}
