"""Progress on stderr: a counter line on a terminal, or JSON lines for `--json`.

The terminal line is rewritten in place and must never run into other output: everything the CLI
prints (a notice, the result, an error, a prompt, the message after Ctrl-C) first calls `clear`,
which erases the line and puts the cursor back at its start.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

# Seconds between two updates: often enough to look alive, rarely enough to cost nothing.
_TERMINAL_EVERY = 0.1
_JSON_EVERY = 0.5
# Erase the whole line and return to its start (VT100, understood by every terminal in use).
_ERASE = "\r\x1b[2K"


class Progress:
    """One progress display on `stream`: `terminal` rewrites a line, `json_lines` writes
    `{"type": "progress", ...}` documents, one per line; neither: nothing is shown."""

    def __init__(self, stream: TextIO | None = None, *, terminal: bool = False, json_lines: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = terminal
        self.json_lines = json_lines
        self._tty = _isatty(self.stream)
        self._open = False  # a terminal line is on screen
        self._last = 0.0
        self._started = time.monotonic()

    @property
    def active(self) -> bool:
        return self.terminal or self.json_lines

    def update(self, phase: str, done: int, total: int) -> None:
        if not total or not self.active:
            return
        now = time.monotonic()
        final = done >= total
        if not final and now - self._last < (_TERMINAL_EVERY if self.terminal else _JSON_EVERY):
            return
        self._last = now
        if self.json_lines:
            doc = {
                "type": "progress",
                "phase": phase,
                "done": done,
                "total": total,
                "percent": round(100 * done / total, 1),
                "seconds": round(now - self._started, 1),
            }
            self.stream.write(json.dumps(doc) + "\n")
        elif final:
            self.clear()  # the summary that follows says what was done
            return
        else:
            self.stream.write(f"{_ERASE}{phase}: {done}/{total} ({100 * done // total}%)")
            self._open = True
        self.stream.flush()

    def clear(self) -> None:
        """Erase the progress line, if one is on screen."""
        if self._open:
            self.stream.write(_ERASE)
            self.stream.flush()
            self._open = False

    def interrupted(self) -> None:
        """After Ctrl-C: the terminal echoed `^C` where the cursor was; erase that line whole."""
        if self._tty:
            self.stream.write(_ERASE)
            self.stream.flush()
            self._open = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
