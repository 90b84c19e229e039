"""`phx watch`'s stop signal and the main thread's wait on the same event: Python runs a signal
handler in the main thread between two bytecodes, and the watch's main thread spends its idle time
in `stop.wait(...)`, holding the event's lock for a few instructions at a time. A handler that set
the event itself blocked on that lock for ever when the signal landed there (a watch alive minutes
after its SIGTERM, in CI)."""

from __future__ import annotations

import threading

from phoenix_backup.cli.cmd_watch import stop_handler


def _while_holding_the_events_lock(stop: threading.Event, call: object) -> threading.Thread:
    """`call()` in a thread that holds `stop`'s lock meanwhile, as the main thread does inside
    `stop.wait` (the lock is `Event._cond`, a Condition over a non-reentrant Lock)."""

    def run() -> None:
        with stop._cond:  # type: ignore[attr-defined]
            call()  # type: ignore[operator]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_stop_signal_landing_while_the_main_thread_holds_the_events_lock_still_stops() -> None:
    stop, abandon = threading.Event(), threading.Event()
    handler = stop_handler(stop, abandon)
    thread = _while_holding_the_events_lock(stop, lambda: handler(15, None))
    thread.join(5)
    assert not thread.is_alive(), "the handler blocked on the event's lock: the watch would hang"
    assert stop.wait(5) and not abandon.is_set()
    thread = _while_holding_the_events_lock(stop, lambda: handler(15, None))
    thread.join(5)
    assert not thread.is_alive()
    assert abandon.wait(5), "a second signal abandons the push in progress"
