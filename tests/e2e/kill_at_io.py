"""Run `phx ARGS` and SIGKILL it just before its Nth change: to a file system a rename (every
object, config and pin file write ends in one), a link (exclusive creation), an unlink or an
rmdir; to S3 a PUT, POST or DELETE request. Used as `python kill_at_io.py ARGS...` with

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
CHANGING_REQUESTS = (b"PUT ", b"POST ", b"DELETE ")


def _is_change(event: str, args: tuple[object, ...]) -> bool:
    if event in EVENTS:
        return True
    # The first send of an HTTP request holds its request line.
    data = args[1] if event == "http.client.send" and len(args) > 1 else None
    return isinstance(data, bytes | bytearray) and bytes(data[:7]).startswith(CHANGING_REQUESTS)


def main() -> None:
    target = int(os.environ.pop("PHX_TEST_KILL_AT", "0") or 0)
    log = os.environ.pop("PHX_TEST_KILL_LOG", None)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if log else None
    count = 0

    def hook(event: str, args: tuple[object, ...]) -> None:
        nonlocal count
        if not _is_change(event, args):
            return
        count += 1
        if fd is not None:
            what = bytes(args[1]).split(b"\r\n")[0].decode() if event == "http.client.send" else repr(args)  # type: ignore[arg-type]
            os.write(fd, f"{count} {event} {what}\n".encode())
        if count == target:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
    from phoenix_backup.cli.main import main as phx

    sys.argv[0] = "phx"
    sys.exit(phx())


if __name__ == "__main__":
    main()
