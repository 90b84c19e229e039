"""Run `phx ARGS` and SIGKILL it just before its Nth change to a file system: a rename (every
object, config and pin file write ends in one), a link (exclusive creation), an unlink or an
rmdir. Used as `python kill_at_io.py ARGS...` with

    PHX_TEST_KILL_AT=N    the change to die before (0: never)
    PHX_TEST_KILL_LOG=F   append one line per change to F ("N event args"), to count them

Nothing in Phoenix is replaced: the process is the real `phx`, and Python's audit hooks
(`sys.addaudithook`) see each call before the kernel does, so the kill lands between two
changes exactly, as a power cut or the OOM killer would.
"""

from __future__ import annotations

import os
import signal
import sys

EVENTS = frozenset({"os.rename", "os.link", "os.remove", "os.rmdir", "shutil.rmtree"})


def main() -> None:
    target = int(os.environ.pop("PHX_TEST_KILL_AT", "0") or 0)
    log = os.environ.pop("PHX_TEST_KILL_LOG", None)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if log else None
    count = 0

    def hook(event: str, args: tuple[object, ...]) -> None:
        nonlocal count
        if event not in EVENTS:
            return
        count += 1
        if fd is not None:
            os.write(fd, f"{count} {event} {args!r}\n".encode())
        if count == target:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
    from phoenix_backup.cli.main import main as phx

    sys.argv[0] = "phx"
    sys.exit(phx())


if __name__ == "__main__":
    main()
