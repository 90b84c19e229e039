"""A configured shell command (the gateway around a restore, the hooks around a backup): run with
`/bin/sh -c` in a session of its own, killed with everything it started after a timeout.

Its output goes to a temporary file, never to a pipe: a start command typically leaves a daemon
running that inherits its output, and waiting for a pipe to close would wait for that daemon.

Every child in a session of its own (these commands, pg_restore, pg_dump) is in `child_group`
while it runs: a stop (Ctrl-C, SIGTERM, SIGHUP: an exception in the main thread) kills its
process group and waits for it. Two ways end such groups from elsewhere, for two purposes:

- `end_child_groups`: every group of the whole process, for a second stop signal, which ends
  `phx` at once (`os._exit`, cli/app.py): none is left running on its own.
- `StopScope.end`: the children and waits of one piece of work (a backup's pg_dumps, its server
  connections and their connects), for that work's early end (its stop, its failure); other work
  in the same process (the Python API) keeps its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

# Output kept for the report: the end of what the command printed.
OUTPUT_TAIL = 2000

# The children running now in a session of their own (`child_group`), by the group each leads.
_GROUPS: dict[int, subprocess.Popen[bytes]] = {}
_GROUPS_LOCK = threading.RLock()  # re-entered by a signal handler in the thread that holds it


class StopScope:
    """What one piece of work starts or waits on in its threads (a backup's pg_dumps, its reads
    over a server connection), so that an early end of that work ends them (`end`) and no other:
    another backup or a restore run beside it in the same process (the Python API) keeps its
    pg_dump, pg_restore or gateway command. Once ended, a child started in it (by a worker still
    connecting when the stop came) is killed as it starts, and a wait registered in it is ended as
    it is registered: the stop would otherwise wait for them, for ever if they hang."""

    def __init__(self) -> None:
        self._groups: dict[int, subprocess.Popen[bytes]] = {}
        self._waits: dict[int, Callable[[], None]] = {}
        self._ended = False
        self._lock = threading.Lock()

    def _add(self, proc: subprocess.Popen[bytes]) -> bool:
        """Count `proc`'s group in; False when the work has already ended (the caller kills it)."""
        with self._lock:
            if not self._ended:
                self._groups[proc.pid] = proc
            return not self._ended

    def _discard(self, pgid: int) -> None:
        with self._lock:
            self._groups.pop(pgid, None)

    @contextlib.contextmanager
    def ending(self, end_wait: Callable[[], None]) -> Iterator[None]:
        """While the block runs, `end` calls `end_wait` (quick, from another thread: it makes a
        wait on a server end, a query waiting for a lock); at once when the work has ended. It is
        never called once the block is over (what it ends may be closed by then)."""
        key = id(end_wait)
        with self._lock:
            if self._ended:
                end_wait()
            else:
                self._waits[key] = end_wait
        try:
            yield
        finally:
            with self._lock:
                self._waits.pop(key, None)

    def connecting(self, connect: Callable[[], T], close: Callable[[T], None]) -> T:
        """What `connect` returns (a connection to a server), run in a thread of its own: nothing
        can end its wait from another thread (psycopg's and redis-py's connects hold their socket
        to themselves until they return), and a server that accepts the connection and never
        answers would keep a stop waiting for the connect's timeout. Once the work has ended this
        returns at once, raising ConnectionAbortedError; what the connect gives later is closed
        with `close` as it comes. The thread is a daemon: a process that ends does not wait."""
        done = threading.Event()
        lock = threading.Lock()
        outcome: list[tuple[bool, object]] = []
        abandoned = False

        def run() -> None:
            result: tuple[bool, object]
            try:
                result = (True, connect())
            except BaseException as exc:  # handed to the caller
                result = (False, exc)
            with lock:
                if abandoned:
                    if result[0]:
                        with contextlib.suppress(Exception):
                            close(result[1])  # type: ignore[arg-type]
                    return
                outcome.append(result)
            done.set()

        threading.Thread(target=run, name="phx-connect", daemon=True).start()
        with self.ending(done.set):
            done.wait()
        with lock:
            if not outcome:
                abandoned = True
                raise ConnectionAbortedError("the work was stopped while connecting")
        ok, value = outcome[0]
        if not ok:
            assert isinstance(value, BaseException)
            raise value
        return value  # type: ignore[return-value]

    def end(self) -> None:
        """SIGKILL to every child group of this work that runs, and to any it starts from now on;
        every wait registered ended, now and from now on."""
        with self._lock:
            self._ended = True
            groups = list(self._groups.values())
            for end_wait in self._waits.values():  # under the lock: none is over meanwhile
                end_wait()
        for proc in groups:
            _end_group(proc)


@contextlib.contextmanager
def child_group(
    start: Callable[[], subprocess.Popen[bytes]], groups: StopScope | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a child with `start` (a Popen with `start_new_session=True`); while the block runs it
    is one of the groups `end_child_groups` ends (and `groups.end`, when given), and an exception
    in the block (a stop) kills its group and waits for it. A stop signal that comes while it
    starts is held until its group is known (`stops_deferred`): raised inside Popen, after the
    fork, it left the child running on its own with nothing to end it. An error starting it
    (OSError) is raised as it is."""
    proc: subprocess.Popen[bytes] | None = None
    try:
        with stops_deferred():
            proc = start()
            with _GROUPS_LOCK:
                _GROUPS[proc.pid] = proc
            if groups is not None and not groups._add(proc):
                kill_group(proc.pid)  # its work has ended: the block finds it killed
        yield proc
    except BaseException:
        if proc is not None:
            _end_group(proc)  # in a session of its own, it did not get the terminal's signal
            proc.wait()
        raise
    finally:
        if proc is not None:
            with _GROUPS_LOCK:
                _GROUPS.pop(proc.pid, None)
            if groups is not None:
                groups._discard(proc.pid)


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
        groups = list(_GROUPS.values())
    for proc in groups:
        _end_group(proc)


def kill_with_descendants(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL to `proc` and to every process below it that still runs (found through Linux's
    /proc/PID/task/TID/children; elsewhere `proc` alone), then wait for it: for a child left in
    `phx`'s own session, which may need the terminal, so that it has no group of its own to kill.
    What it started would otherwise run on, orphaned (a `sleep`, a `gpg` a command waits for).

    Each process is stopped (SIGSTOP) before its children are read, so that none it forks
    meanwhile is missed (a loop starting `sleep`s in the background); and each one below `proc` is
    signalled through a pidfd opened while it was still the child of the process above it, so one
    that ended meanwhile, its pid reused by another process, is never signalled. A stop signal
    between the stops and the kills is held until the kills are done: a second one ends `phx` at
    once (`os._exit`), which left the processes stopped already stopped for ever."""
    with stops_deferred():
        below = _stop_descendants(proc.pid)
        try:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, signal.SIGKILL)  # not yet reaped (waited for): its pid is its own
            for pid, fd in below:
                _signal(pid, fd, signal.SIGKILL)
        finally:
            for _, fd in below:
                if fd is not None:
                    os.close(fd)
    proc.wait()


# How long `_stop_descendants` waits, in all, for the processes it stops to be stopped.
STOP_WAIT = 1.0


def _stop_descendants(root: int) -> list[tuple[int, int | None]]:
    """Stop `root` and every process below it, top down: (pid, pidfd) of each one below (no pidfd
    on a kernel without pidfd_open, before Linux 5.3)."""
    deadline = time.monotonic() + STOP_WAIT
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(root, signal.SIGSTOP)
    _wait_stopped(root, deadline)
    found: list[tuple[int, int | None]] = []
    todo = [root]
    while todo:
        parent = todo.pop()
        for child in _children(parent):
            fd: int | None
            try:
                fd = os.pidfd_open(child)
            except ProcessLookupError:
                continue  # ended since
            except OSError:
                fd = None
            if _parent(child) != parent:  # ended since, and its pid taken by another process
                if fd is not None:
                    os.close(fd)
                continue
            found.append((child, fd))
            _signal(child, fd, signal.SIGSTOP)
            _wait_stopped(child, deadline)
            todo.append(child)
    return found


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                found += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return found


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command's name (state, ppid, ...); [] when gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _parent(pid: int) -> int | None:
    fields = proc_stat(pid)
    return int(fields[1]) if len(fields) > 1 else None


def _wait_stopped(pid: int, deadline: float) -> None:
    """Until `pid` is stopped (a fork under way when SIGSTOP came has given its child by then),
    has ended, or `deadline` passed."""
    while time.monotonic() < deadline:
        fields = proc_stat(pid)
        if not fields or fields[0] in ("T", "t", "Z", "X"):
            return
        time.sleep(0.0005)


def _signal(pid: int, fd: int | None, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the group `proc` leads, unless `proc` has been reaped (its exit status read, as
    a failed pg_dump's is long before its block ends): its pid is free then, and may lead another
    process's group by now; what it left running in its group (a daemon a gateway command
    started) is left alone, as when it ends before a stop."""
    if proc.returncode is None:  # not reaped: its pid cannot have been reused
        kill_group(proc.pid)


def kill_group(pgid: int) -> None:
    """SIGKILL to the process group `pgid` (a stopped process ends too); nothing when it is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass(frozen=True)
class ShellStep:
    """One run of a configured command (`label` names it as the config does: `gateway.stop`)."""

    label: str
    command: str
    ok: bool
    exit_code: int | None  # None when it timed out or could not be run; -N when signal N ended it
    timed_out: bool
    duration: float
    output: str  # the last lines it printed (stdout and stderr together)

    def describe(self) -> str:
        """Why it failed, in a few words."""
        if self.timed_out:
            why = "did not finish in time and was killed"
        elif self.exit_code is None:
            why = "could not be run"
        elif self.exit_code < 0:  # Popen's word for a command ended by a signal
            why = f"was killed by {_signal_name(-self.exit_code)}"
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


def _signal_name(signum: int) -> str:
    """SIGKILL for 9; the number itself for one Python does not name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def run_shell(label: str, command: str, timeout: float, env: Mapping[str, str]) -> ShellStep:
    """Run one configured command; never raises (the caller decides what a failure means)."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        start = lambda: subprocess.Popen(  # noqa: E731
            ["/bin/sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,  # its own process group, so a timeout kills all of it
        )
        try:
            with child_group(start) as proc:
                timed_out = False
                try:
                    code: int | None = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    kill_group(proc.pid)
                    proc.wait()
                    code = None
        except OSError as exc:  # it could not be started (waiting and killing raise none)
            return ShellStep(label, command, False, None, False, time.monotonic() - started, str(exc))
        # Only the tail is kept, so only the tail is read (a hook may write gigabytes).
        out.seek(max(0, out.seek(0, os.SEEK_END) - OUTPUT_TAIL))
        data = out.read()
    text = data.decode("utf-8", "replace")
    ok = not timed_out and code == 0
    return ShellStep(label, command, ok, code, timed_out, time.monotonic() - started, text)
