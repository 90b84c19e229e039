"""The `phx` command. Imported first when `phx` starts (before click and the commands, 0.2 to 0.6 s
of imports on a loaded machine): a stop signal in that time ends `phx` at once with the usual
line and exit code (`stop_while_starting`), instead of killing it silently (exit -15)."""

from __future__ import annotations

import itertools
import os
import signal
import sys
from types import FrameType

# What a stopped command says (cli/app.py), on its own line of stderr.
INTERRUPTED_MESSAGE = "interrupted; the repository is unchanged unless a snapshot was reported"


def _is_phx() -> bool:
    """The `phx` program: its script, or `python -m phoenix_backup.cli.main` (a scheduled run)."""
    if sys.argv and os.path.basename(sys.argv[0]) == "phx":
        return True
    argv = sys.orig_argv
    return any(pair == ("-m", "phoenix_backup.cli.main") for pair in itertools.pairwise(argv))


def stop_while_starting() -> None:
    """Until `cli.app.stop_on_signals` installs the stop handlers (`phx`'s first step), SIGTERM,
    SIGHUP and SIGINT end the process at once, as they did, but with the line and the exit code of
    a stop (143, 129, 130): nothing is open or written yet. For the `phx` program only: a program
    importing the package (the Python API, tests, `python -m phoenix_backup.cli.reference`) keeps
    its handlers. Signals ignored when the process started (`nohup`) stay ignored."""
    if not _is_phx():
        return
    if "--json" in sys.argv:
        import json

        lines = (
            json.dumps({"type": "notice", "level": "problem", "message": INTERRUPTED_MESSAGE}) + "\n",
            json.dumps({"ok": False, "error": INTERRUPTED_MESSAGE, "errorType": "Interrupted"}) + "\n",
        )
    else:
        lines = (f"phx: {INTERRUPTED_MESSAGE}\n", "")
    said = (lines[0].encode(), lines[1].encode())

    def stop(signum: int, _frame: FrameType | None) -> None:
        try:
            os.write(2, said[0])
            if said[1]:
                os.write(1, said[1])
        finally:
            os._exit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, stop)


stop_while_starting()
