"""`phx watch`."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

import click

from phoenix_backup.cli.app import Out, cli, common, load_config
from phoenix_backup.errors import ExitStatus
from phoenix_backup.ops import watch as watch_op
from phoenix_backup.ops import watch_child
from phoenix_backup.ops.context import Environment


@cli.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Stop after this many seconds (default: run until SIGTERM or Ctrl-C).",
)
@click.option("--no-files", "no_files", is_flag=True, help="Capture the SQLite databases only, not the files.")
@common
def watch(out: Out, envx: Environment, config_path: str | None, duration: float | None, no_files: bool) -> ExitStatus:
    """Capture every configured SQLite database within about a second of each commit, and the files
    within seconds of a change, until stopped.

    Each second in which something was committed becomes one sealed capture segment in every
    target; a burst of file changes becomes a snapshot of the files (scope watch-files) that reads only
    what changed; `phx restore --at TIME` restores any second covered (see `phx list --timeline`).
    SIGTERM or Ctrl-C ends it after a last segment. `phx schedule install --watch` runs it as a
    user service.

    Example: phx watch
    """
    cfg = load_config(out, envx, config_path)
    stop, abandon = threading.Event(), threading.Event()

    handler = stop_handler(stop, abandon)

    def hangup(signum: int, _frame: FrameType | None) -> None:
        # The terminal hung up (or SIGQUIT, Ctrl-\ ): the watch ends at once, as it always did; the
        # snapshot's child and its git push, in a process group of their own, end with it.
        watch_child.kill_children()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    old |= {sig: signal.signal(sig, hangup) for sig in (signal.SIGHUP, signal.SIGQUIT)}
    try:
        # Said once the watch holds its lock: a second watch is refused with no "watching" before it.
        result = watch_op.watch(
            cfg,
            envx,
            stop,
            duration=duration,
            files=not no_files,
            abandon=abandon,
            started_watching=lambda: out.notice("watching; SIGTERM or Ctrl-C stops after a last segment"),
        )
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    text = (
        f"watched for {result.duration:.0f} s: {result.commits} states captured, {result.segments} segments "
        f"({result.bytes} bytes), {result.bases} base snapshot(s), {result.file_snapshots} snapshot(s) of the files"
    )
    out.result(result.to_json(), text)
    return ExitStatus.OK


def stop_handler(stop: threading.Event, abandon: threading.Event) -> Callable[[int, FrameType | None], None]:
    """The watch's SIGTERM and SIGINT handler: the first signal sets `stop` (the watch ends after the
    snapshot in progress, its git push too), a second one `abandon` too (that snapshot's push is
    abandoned; ops/watch_child.py `Stopping`). The events are set from a thread of their own:
    `Event.set` takes the event's lock, which the main thread, where Python runs a signal handler,
    may hold at that very instant (inside `stop.wait`), and a SIGTERM landing there hung the watch
    for good (seen in CI: a watch still alive minutes after its SIGTERM)."""
    signals = [0]

    def handler(_signum: int, _frame: FrameType | None) -> None:
        signals[0] += 1
        second = signals[0] > 1
        threading.Thread(target=_set_events, args=(stop, abandon, second), name="phx-stop", daemon=True).start()

    return handler


def _set_events(stop: threading.Event, abandon: threading.Event, second: bool) -> None:
    if second:
        abandon.set()
    stop.set()
