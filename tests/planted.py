"""For the tests of what an agent plants where Phoenix reads (a FIFO, a folder, a link in a file's
place): `bounded(call, fifo)` runs a call that must not block on a FIFO so that a regression fails
its test instead of hanging the suite; `backup_run(tmp_path)` is a real backup run (`_Run`) on a
new repository, whose reads are called directly."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from phoenix_backup.ops.backup import _Run
from phoenix_backup.ops.context import Environment, cache_for
from phoenix_backup.repo import keys
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend

BOUND = 5.0


def bounded(call: Callable[[], Any], fifo: Path) -> tuple[Any, BaseException | None]:
    """`call()`'s result or exception, failing the test when it is still blocked after BOUND s."""
    out: list[Any] = [None, None]

    def run() -> None:
        try:
            out[0] = call()
        except BaseException as exc:  # handed to the test
            out[1] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND)
    blocked = thread.is_alive()
    if blocked:  # release it: a writer opens the FIFO, then closes it (the reader sees its end)
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(BOUND)
    assert not blocked, f"blocked on the FIFO {fifo.name} for {BOUND} s"
    return out[0], out[1]


def backup_run(tmp_path: Path) -> _Run:
    """A backup run with no parent on a new repository in `tmp_path` (cheap key derivation)."""
    fast = {"n": 2**10, "r": 8, "p": 1}
    repo = Repository.init(
        LocalBackend(tmp_path / "repo"), lambda m: keys.wrap_passphrase(m, "pw", kdf_params=fast), True
    )
    repo.load_index()
    envx = Environment(env={"HOME": str(tmp_path), "PHX_CACHE_DIR": str(tmp_path / "cache")})
    return _Run(repo, cache_for(repo, envx), None, envx)
