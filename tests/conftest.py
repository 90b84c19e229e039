"""Every test's own cache: code that falls back on the user's cache folder (no PHX_CACHE_DIR; the
lock sightings, restore journals) writes below the session's temporary folder, never in the real
`~/.cache/phoenix` of whoever runs the suite. The longest test files run first (below)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest


def _ignored_signals_not_passed_on() -> None:
    """A signal ignored when the process starts stays ignored in the programs it runs, and phx keeps
    SIGINT and SIGHUP ignored then (`nohup`, a script's background job; cli/app.py): the tests that
    stop phx with them saw it finish with exit 0 when pytest itself ran under `nohup` or as a
    script's `&` job. Ignored here by a handler of Python's instead, which the programs pytest runs
    do not inherit (exec resets it), so pytest still ignores them and phx starts as from a terminal."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, lambda _signum, _frame: None)


_ignored_signals_not_passed_on()


@pytest.fixture(autouse=True, scope="session")
def _private_user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cache = tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        yield cache


# The longest files (junit times of a whole run on a quiet machine, summed per file: 2026-12-07
# 03:05, 1,000 s of pytest on three workers; the files that now run phx in process scaled by the
# wall time that saved, measured file by file), first: with `--dist loadfile` a worker takes a
# whole file, and a long one taken last leaves the other workers idle at the end (the load of a
# run fell to about one busy worker for its last minute). Every file of 24 s or more is listed, so
# the files a worker takes last are short. The order of the tests inside a file, and of every
# other file, is kept.
LONGEST_FIRST = (
    "e2e/test_fault_injection.py",
    "e2e/test_targets.py",
    "e2e/test_watch_adversary.py",
    "e2e/test_cli_conventions.py",
    "e2e/test_watch_slow_target.py",
    "e2e/test_kill_points.py",
    "e2e/test_write_only.py",
    "e2e/test_stop_child_processes.py",
    "e2e/test_key_attacks.py",
    "e2e/test_watch_bases.py",
    "e2e/test_stop_signals.py",
    "e2e/test_watch.py",
    "e2e/test_index_merge_kill.py",
    "e2e/test_watch_thinning.py",
    "e2e/test_watch_child_adversary.py",
    "e2e/test_concurrency.py",
    "e2e/test_safe_restore.py",
    "integration/test_hostile_network.py",
    "e2e/test_bad_input.py",
    "e2e/test_faulty_network.py",
    "e2e/test_hostile_input.py",
    "e2e/test_append_only.py",
    "e2e/test_watch_hashes_adversary.py",
    "e2e/test_lost_data.py",
    "e2e/test_restore_sync_adversary.py",
    "e2e/test_doctor.py",
    "e2e/test_restore_destination_errors.py",
    "e2e/test_defaults_adversary.py",
    "e2e/test_stream_proven_copy.py",
    "e2e/test_passphrase_sources.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    rank = {str(here / name): i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(str(item.path), len(rank)))
