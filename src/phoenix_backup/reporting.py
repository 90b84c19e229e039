"""How a long operation tells its progress: phases, files and bytes done (docs/cli.md#progress).

A leaf, so that every layer that does the work (ops, the repository engines, the sources) reports
through the same small interface, and only the CLI draws it (cli/progress.py).
"""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    """What a long use case tells of its progress, for the CLI to draw (docs/cli.md#progress).

    A run is a sequence of phases ("scanning", "reading files", "writing index"); each phase has
    totals (0 when unknown) that `advance` counts towards, and `working` names what the phase is
    busy with now ("capturing memory.db"). Every method may be called from any thread, often (once
    per chunk read): an implementation keeps each call cheap."""

    def phase(self, name: str, *, files: int = 0, size: int = 0, unit: str = "files") -> None:
        """A new phase of `files` items (named `unit`: files, packs, snapshots) and `size` bytes;
        its counters start at 0. Called again
        with the name of the phase under way: its totals grow (a database dump's files, known
        once dumped), its counters are kept."""

    def working(self, what: str | None) -> None:
        """What the phase is doing now; None: nothing in particular."""

    def advance(self, *, files: int = 0, size: int = 0) -> None:
        """`files` more items and `size` more bytes of the phase are done."""


class Silent:
    """A Reporter that shows nothing (the Python API's default, scheduled runs)."""

    def phase(self, name: str, *, files: int = 0, size: int = 0, unit: str = "files") -> None:
        pass

    def working(self, what: str | None) -> None:
        pass

    def advance(self, *, files: int = 0, size: int = 0) -> None:
        pass
