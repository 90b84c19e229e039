"""Progress on stderr: a live line drawn by Rich on a terminal, or JSON lines for `--json`.

`Progress` is the CLI's `Reporter` (ops/context.py): the use cases say which phase they are in,
its totals, what they are working on and how much is done; this class draws it. On a terminal the
line looks like restic's:

    [0:04] 49.3% reading files: 5 of 298 files, 278.1 MiB of 563.5 MiB, 69.5 MiB/s, ETA 0:05

The line must never run into other output: everything the CLI prints (a notice, the result, an
error, a prompt, the message after Ctrl-C) first calls `clear`, which stops the live display and
erases its line; the next report draws it again. Rich is imported only when a terminal shows the
line, so a scheduled run does not pay for loading it.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from phoenix_backup import jsontext
from phoenix_backup.errors import shown
from phoenix_backup.units import human_size

# Redraws a second on a terminal: often enough to look alive, rarely enough to cost nothing.
_REFRESH_PER_SECOND = 8
# Seconds between two JSON lines of one phase (a phase's first line is written at once).
_JSON_EVERY = 0.5
# The rate is measured over this many seconds, so that the ETA follows the recent pace.
_RATE_WINDOW = 5.0
# Erase the whole line and return to its start (VT100, understood by every terminal in use).
_ERASE = "\r\x1b[2K"


@dataclass(frozen=True)
class Figures:
    """One reading of a phase: what is done of what, how fast, and how long it has left."""

    phase: str
    doing: str | None
    unit: str
    files: int
    files_total: int
    size: int
    size_total: int
    seconds: float  # since the command started
    rate: float | None  # bytes a second (files a second in a phase with no byte total)
    eta: float | None  # seconds left, when a total and a rate are known

    @property
    def percent(self) -> float | None:
        if self.size_total:
            return min(100.0, 100 * self.size / self.size_total)
        if self.files_total:
            return min(100.0, 100 * self.files / self.files_total)
        return None

    def to_json(self) -> dict[str, object]:
        percent = self.percent
        return {
            "type": "progress",
            "phase": self.phase,
            "doing": self.doing,
            "unit": self.unit,
            "done": self.files,
            "total": self.files_total,
            "bytesDone": self.size,
            "bytesTotal": self.size_total,
            "percent": None if percent is None else round(percent, 1),
            "rate": None if self.rate is None else round(self.rate),
            "eta": None if self.eta is None else round(self.eta, 1),
            "seconds": round(self.seconds, 1),
        }

    def line(self) -> str:
        """The terminal line, restic's shape."""
        head = f"[{_clock(self.seconds)}]"
        percent = self.percent
        if percent is not None:
            head += f" {percent:.1f}%"
        head += f" {self.doing or self.phase}"
        parts = []
        if self.files_total:
            parts.append(f"{self.files} of {self.files_total} {self.unit}")
        elif self.files:
            parts.append(f"{self.files} {self.unit}")
        if self.size_total:
            parts.append(f"{human_size(self.size)} of {human_size(self.size_total)}")
        elif self.size:
            parts.append(human_size(self.size))
        if self.rate is not None and self.size_total:
            parts.append(f"{human_size(int(self.rate))}/s")
        if self.eta is not None:
            parts.append(f"ETA {_clock(self.eta)}")
        return f"{head}: {', '.join(parts)}" if parts else head


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """The progress display on `stream`: `terminal` draws a live line, `json_lines` writes
    `{"type": "progress", ...}` documents (docs/cli.md#progress), one per line; neither: nothing
    is shown. Thread-safe: the use cases report from their worker threads."""

    def __init__(self, stream: TextIO | None = None, *, terminal: bool = False, json_lines: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = terminal
        self.json_lines = json_lines
        self._tty = _isatty(self.stream)
        self._lock = threading.Lock()  # the figures below
        self._live_lock = threading.Lock()  # starting and stopping the live display
        self._started = time.monotonic()
        self._phase = ""
        # What each reporting thread is doing, the latest last: the line shows the latest, and a
        # thread that is done hands the line back to another one still busy.
        self._doing: dict[int, str] = {}
        self._unit = "files"
        self._files = self._files_total = self._size = self._size_total = 0
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._last_json = 0.0
        self._json_pending = False
        self._live: Any = None  # a rich.live.Live while the line is on screen
        self._held = 0  # callers of `aside` under way: the line is not drawn

    @property
    def active(self) -> bool:
        return self.terminal or self.json_lines

    # -- Reporter -------------------------------------------------------------------------------

    def phase(self, name: str, *, files: int = 0, size: int = 0, unit: str = "files") -> None:
        if not self.active:
            return
        with self._lock:
            if name == self._phase:
                self._files_total, self._size_total, self._unit = files, size, unit
                return
            self._flush_json()  # the last reading of the phase that ends
            self._phase, self._unit = name, unit
            self._doing.clear()
            self._files, self._files_total, self._size, self._size_total = 0, files, 0, size
            self._samples.clear()
            self._samples.append((time.monotonic(), 0))
            self._json_pending = True
            self._emit_json(force=True)
        self._show(redraw=True)

    def working(self, what: str | None) -> None:
        if not self.active:
            return
        with self._lock:
            thread = threading.get_ident()
            self._doing.pop(thread, None)
            if what is not None:
                self._doing[thread] = what
            self._json_pending = True
            self._emit_json(force=what is not None)
        self._show(redraw=True)

    def advance(self, *, files: int = 0, size: int = 0) -> None:
        if not self.active:
            return
        with self._lock:
            self._files += files
            self._size += size
            self._json_pending = True
            final = (self._files_total and self._files >= self._files_total) or (
                self._size_total and self._size >= self._size_total and not self._files_total
            )
            self._emit_json(force=bool(final))
        if self._live is None and not self._held:
            self._show()

    # -- the rest of the CLI's output -----------------------------------------------------------

    def clear(self) -> None:
        """Erase the progress line, if one is on screen (JSON lines: write the last reading)."""
        with self._lock:
            self._flush_json()
        self._stop()

    @contextlib.contextmanager
    def aside(self) -> Iterator[None]:
        """Erase the progress line and keep it off the screen while the caller prints or asks:
        a report from another thread meanwhile does not draw it between the two."""
        with self._live_lock:
            self._held += 1
        self.clear()
        try:
            yield
        finally:
            with self._live_lock:
                self._held -= 1

    def interrupted(self) -> None:
        """After Ctrl-C: the terminal echoed `^C` where the cursor was; erase that line whole.
        The line is not drawn again: the threads still reporting are being stopped."""
        with self._live_lock:
            self._held += 1
        self._stop()
        if self._tty:
            self.stream.write(_ERASE)
            self.stream.flush()

    def figures(self) -> Figures:
        with self._lock:
            return self._figures(time.monotonic())

    # -- inside -----------------------------------------------------------------------------------

    def _figures(self, now: float) -> Figures:
        by_size = bool(self._size_total) or not self._files_total
        measure = self._size if by_size else self._files
        total = self._size_total if by_size else self._files_total
        samples = self._samples
        if not samples or now - samples[-1][0] >= 0.2:
            samples.append((now, measure))
        while len(samples) > 2 and now - samples[0][0] > _RATE_WINDOW:
            samples.popleft()
        rate: float | None = None
        eta: float | None = None
        if samples and now - samples[0][0] >= 0.5:
            rate = max(0.0, (measure - samples[0][1]) / (now - samples[0][0]))
            if total and rate > 0:
                eta = max(0.0, (total - measure) / rate)
        return Figures(
            phase=self._phase,
            doing=next(reversed(self._doing.values()), None),
            unit=self._unit,
            files=self._files,
            files_total=self._files_total,
            size=self._size,
            size_total=self._size_total,
            seconds=now - self._started,
            rate=rate,
            eta=eta,
        )

    def _emit_json(self, *, force: bool) -> None:
        if not self.json_lines or not self._phase:
            return
        now = time.monotonic()
        if not force and now - self._last_json < _JSON_EVERY:
            return
        self._last_json = now
        self._json_pending = False
        # jsontext: a name that is not UTF-8 (a database's) is valid Unicode there, its bytes beside it.
        self.stream.write(jsontext.dumps(self._figures(now).to_json()) + "\n")
        self.stream.flush()

    def _flush_json(self) -> None:
        if self._json_pending:
            self._emit_json(force=True)

    def _show(self, *, redraw: bool = False) -> None:
        """Start the live line on a terminal (again, after `clear`); `redraw`: now (a new phase is
        shown even when it lasts less than a redraw's interval)."""
        if not self.terminal or not self._phase:  # nothing to say before a phase starts
            return
        with self._live_lock:
            if self._live is not None:
                if redraw:
                    self._live.refresh()
                return
            if self._held:
                return
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, force_terminal=True, highlight=False, soft_wrap=False)
            live = Live(
                _Line(self),
                console=console,
                refresh_per_second=_REFRESH_PER_SECOND,
                transient=True,  # stopping erases the line
                redirect_stdout=False,
                redirect_stderr=False,
            )
            live.start(refresh=True)
            self._live = live

    def _stop(self) -> None:
        with self._live_lock:
            live, self._live = self._live, None
            if live is not None:
                live.stop()


class _Line:
    """The live line: read afresh at every redraw."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __rich__(self) -> Any:
        from rich.text import Text

        # What the line names (a database's file name) with its control characters escaped.
        return Text(shown(self.progress.figures().line()), no_wrap=True, overflow="ellipsis")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
