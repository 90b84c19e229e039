"""A configured shell command (the gateway around a restore, the hooks around a backup): run with
`/bin/sh -c` in a session of its own, killed with everything it started after a timeout.

Its output goes to a temporary file, never to a pipe: a start command typically leaves a daemon
running that inherits its output, and waiting for a pipe to close would wait for that daemon.

Every child in a session of its own (these commands, pg_restore) is in `child_group` while it
runs: a stop (Ctrl-C, SIGTERM, SIGHUP: an exception in the main thread) kills its process group
and waits for it, and a second stop signal, which ends `phx` at once (`os._exit`, cli/app.py),
kills every such group first (`end_child_groups`), so none is left running on its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

# Output kept for the report: the end of what the command printed.
OUTPUT_TAIL = 2000

# The process groups of the children running now in a session of their own (`child_group`).
_GROUPS: set[int] = set()
_GROUPS_LOCK = threading.RLock()  # re-entered by a signal handler in the thread that holds it


@contextlib.contextmanager
def child_group(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """While the block runs, `proc` (started with `start_new_session=True`) is one of the groups
    `end_child_groups` ends; an exception in the block (a stop) kills its group and waits for it."""
    with _GROUPS_LOCK:
        _GROUPS.add(proc.pid)
    try:
        yield
    except BaseException:
        _kill_group(proc.pid)  # in a session of its own, it did not get the terminal's signal
        proc.wait()
        raise
    finally:
        with _GROUPS_LOCK:
            _GROUPS.discard(proc.pid)


@contextlib.contextmanager
def stops_deferred() -> Iterator[None]:
    """A stop signal (SIGINT, SIGTERM, SIGHUP) that comes while the block runs takes effect as it
    ends: for a step whose effect on a server must be known to be undone (a database created, the
    reply still on its way). In the main thread only (where Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for sig, handler in before.items():
        if callable(handler):
            signal.signal(sig, lambda signum, _frame: held.append(signum))
    try:
        yield
    finally:
        for sig, handler in before.items():
            if callable(handler):
                signal.signal(sig, handler)
        for signum in held[:1]:
            signal.raise_signal(signum)


def end_child_groups() -> None:
    """SIGKILL to every child group that runs (the process is about to end at once)."""
    with _GROUPS_LOCK:
        groups = list(_GROUPS)
    for pgid in groups:
        _kill_group(pgid)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of `proc`'s process group (it was started with
    `start_new_session=True`), then reap `proc`: what it started in the background and left holding
    its output ends with it. `proc` must not be reaped yet (wait with `exited` and `wait_exited`,
    not `poll` or `wait`): until then its pid, the group's id, cannot be given to another process,
    so the kill reaches no stranger's group."""
    if proc.returncode is None:
        _kill_group(proc.pid)
    proc.wait()


def exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether `proc` has exited, leaving it unreaped (a zombie keeps its pid: `end_group`)."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def wait_exited(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait up to `timeout` seconds for `proc` to exit, leaving it unreaped (`exited`);
    subprocess.TimeoutExpired when it still runs."""
    deadline = time.monotonic() + timeout
    while not exited(proc):
        if time.monotonic() >= deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        time.sleep(0.01)


@dataclass(frozen=True)
class ShellStep:
    """One run of a configured command (`label` names it as the config does: `gateway.stop`)."""

    label: str
    command: str
    ok: bool
    exit_code: int | None  # None when it was killed or could not be run
    timed_out: bool
    duration: float
    output: str  # the last lines it printed (stdout and stderr together)

    def describe(self) -> str:
        """Why it failed, in a few words."""
        if self.timed_out:
            why = "did not finish in time and was killed"
        elif self.exit_code is None:
            why = "could not be run"
        else:
            why = f"exited with {self.exit_code}"
        last = self.output.strip().splitlines()[-1:] if self.output.strip() else []
        return f"{self.label} {why}" + (f" ({last[0].strip()})" if last else "")

    def to_json(self) -> dict[str, object]:
        return {
            "command": self.command,
            "ok": self.ok,
            "exitCode": self.exit_code,
            "timedOut": self.timed_out,
            "duration": round(self.duration, 3),
            "output": self.output,
        }


def run_shell(label: str, command: str, timeout: float, env: Mapping[str, str]) -> ShellStep:
    """Run one configured command; never raises (the caller decides what a failure means)."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,  # its own process group, so a timeout kills all of it
            )
        except OSError as exc:
            return ShellStep(label, command, False, None, False, time.monotonic() - started, str(exc))
        with child_group(proc):
            timed_out = False
            try:
                code: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid)
                proc.wait()
                code = None
        # Only the tail is kept, so only the tail is read (a hook may write gigabytes).
        out.seek(max(0, out.seek(0, os.SEEK_END) - OUTPUT_TAIL))
        data = out.read()
    text = data.decode("utf-8", "replace")
    ok = not timed_out and code == 0
    return ShellStep(label, command, ok, code, timed_out, time.monotonic() - started, text)
