"""The child process `phx watch` takes its snapshots in (ops/watch_child.py), attacked: a
`phoenix_backup` planted in the directory the watch runs in, a module that prints to standard
output as it is imported, a database every base fails to read, the watch killed midway. The child
runs the watch's own code, its answer is never mixed with what else is printed, a failing database
does not make the watch start child after child, and the child ends with the watch."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from e2e_support import PHX, Sandbox
from test_watch_adversary import LOGICAL, _commit, _last_covered, _restored, _table
from test_watch_bases import _watcher

from phoenix_backup.ops import watch_child
from phoenix_backup.ops.watch import Watcher


def _bases_then_a_change(sb: Sandbox, w: Watcher, notices: list[str], tmp_path: Path) -> None:
    w.poll()  # the bases, in the child
    assert not any(d.need_base for d in w.dbs), notices
    _commit(sb.layout.dashboard_db, 1)
    w.poll()
    w.flush()
    assert not w.queue
    assert _restored(sb, _last_covered(sb), tmp_path / "at") == [0, 1]


def test_a_phoenix_backup_planted_in_the_working_directory_is_not_what_the_child_runs(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m` puts the working directory first on the import path: a `phoenix_backup` there
    (a shared /tmp, a checkout of another version) would be handed the repository's secrets."""
    sb = sandbox
    _table(sb.layout.dashboard_db)
    planted = tmp_path / "cwd" / "phoenix_backup"
    planted.mkdir(parents=True)
    stolen = tmp_path / "stolen"
    (planted / "__init__.py").write_text(
        f"import os\nopen({str(stolen)!r}, 'wb').write(os.read(0, 1 << 20))\nraise SystemExit(1)\n", encoding="utf-8"
    )
    (planted / "ops").mkdir()
    (planted / "ops" / "__init__.py").write_text("", encoding="utf-8")
    monkeypatch.chdir(planted.parent)
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        _bases_then_a_change(sb, w, notices, tmp_path)
    assert not stolen.exists()


def test_what_a_module_prints_to_standard_output_is_not_taken_for_the_answer(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module the child imports before it runs (here a `sitecustomize` on PYTHONPATH, as a
    library's banner or a deprecation print would) writes to standard output."""
    sb = sandbox
    _table(sb.layout.dashboard_db)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("print('hello from a library')\n", encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(site))
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        _bases_then_a_change(sb, w, notices, tmp_path)
    assert not [n for n in notices if "warning" in n], notices


def test_a_database_every_base_fails_to_read_does_not_start_a_child_at_every_poll(sandbox: Sandbox) -> None:
    """A base that the child took, but without one database (not a database any more): the watch
    tries again a heartbeat later, not at its next poll (half a second), which would start a
    process (0.5 s, 0.15 CPU-s) twice a second for as long as the file stays broken."""
    sb = sandbox
    _table(sb.layout.dashboard_db)
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        dash = next(d for d in w.dbs if d.logical == LOGICAL)
        Path(dash.entry.path).write_bytes(b"not a database at all " * 400)
        for suffix in ("-wal", "-shm"):
            Path(str(dash.entry.path) + suffix).unlink(missing_ok=True)
        w.poll()
        w.poll()
        w.poll()
        said = [n for n in notices if str(dash.entry.path) in n and "tried again" in n]
        assert dash.need_base and len(said) == 1, notices
        assert w.result.bases <= 1, notices


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(c) for c in (task / "children").read_text().split()]
                out += kids
                todo += kids
    return out


def _watch_and_its_child(
    sb: Sandbox, prefix: Sequence[str] = (), *, stopped: bool = False
) -> tuple[subprocess.Popen[bytes], int]:
    """`phx watch --no-files` started (log in ROOT/watch.log), and the pid of its snapshot child once
    there (`stopped`: once it is stopped, see HANG); the caller ends the watch."""
    with open(sb.root / "watch.log", "wb") as out:
        watch = subprocess.Popen(
            [*prefix, PHX, "watch", "--no-files"], env=sb.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for p in _descendants(watch.pid):
                with contextlib.suppress(OSError):
                    if b"watch_child" in Path(f"/proc/{p}/cmdline").read_bytes() and (
                        not stopped or Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
                    ):
                        return watch, p
            time.sleep(0.01)
        raise AssertionError((sb.root / "watch.log").read_text())
    except BaseException:
        watch.kill()
        watch.wait()
        raise


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the child in /proc")
def test_a_watch_killed_while_its_child_takes_the_base_takes_the_child_with_it(sandbox: Sandbox) -> None:
    """`kill -9` of `phx watch` midway through a base: its child ends too (no orphan holding the
    secrets and a lock), and the repository is left as a killed backup leaves it: `phx prune`
    gets its lock and `phx verify` passes."""
    sb = sandbox
    _table(sb.layout.dashboard_db)
    watch, child = _watch_and_its_child(sb)
    watch.kill()
    watch.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or " Z" in Path(f"/proc/{child}/stat").read_text()
    assert sb.phx("prune", check=None).code == 0
    assert sb.phx("verify", check=None).code == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the child in /proc")
def test_a_watch_killed_while_its_child_is_stopped_holding_the_lock_takes_the_child_with_it(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kill -9` of `phx watch` while its child is stopped (SIGSTOP) holding the repository's
    lock: the stopped child cannot see its pipe close, yet it ends too; `phx prune` then gets the
    lock (not "locked by" a process stopped for good) and `phx verify` passes."""
    sb = sandbox
    _table(sb.layout.dashboard_db)
    flag = _hang_children(sb, tmp_path, monkeypatch)
    flag.write_text("locked-stop")
    watch, child = _watch_and_its_child(sb, stopped=True)
    watch.kill()
    watch.wait()
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            if " Z" in Path(f"/proc/{child}/stat").read_text():
                break
            time.sleep(0.05)
        assert not Path(f"/proc/{child}").exists() or " Z" in Path(f"/proc/{child}/stat").read_text()
        flag.unlink()
        assert sb.phx("prune", check=None).code == 0
        assert sb.phx("verify", check=None).code == 0
    finally:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)  # on failure: no stopped process left behind


def test_a_phoenix_upgraded_while_the_watch_runs_is_said_not_run(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch runs for weeks; its child runs the Phoenix installed at that moment, which a
    `pip install -U` may have replaced: an old watch and new code do not mix in one chain."""
    from phoenix_backup.ops import watch_child

    sb = sandbox
    _table(sb.layout.dashboard_db)
    monkeypatch.setattr(watch_child, "__version__", "0.0.1", raising=False)  # what the watch was started with
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        w.poll()
        assert all(d.need_base for d in w.dbs) and w.result.bases == 0, notices
    said = [n for n in notices if "base snapshot failed" in n]
    assert len(said) == 1 and "upgraded" in said[0] and "start it again" in said[0], notices


# In the watch's child only (`python -c ... ROOT FD`), while the file PHX_TEST_HANG_CHILD names
# exists: once the child has read its request (it holds the secrets), it stops itself (as
# `kill -STOP` would) or deadlocks (a lock taken twice); with "working", it deadlocks once its
# heartbeat runs, as a snapshot deadlocked midway; with "locked", once it holds the repository's
# lock, which it refreshes (every 0.2 s here) all along; with "locked-stop", it stops then.
HANG = """
import os, pickle, signal, sys, threading
_flag = os.environ.get("PHX_TEST_HANG_CHILD", "")
_child = sys.argv[:1] == ["-c"] and len(sys.argv) == 3 and _flag and os.path.exists(_flag)
if _child and open(_flag).read() in ("working", "locked", "locked-stop"):
    _start = threading.Thread.start
    _how = open(_flag).read()
    _after = "phx-heartbeat" if _how == "working" else "phx-lock-refresh"
    def _start_then_hang(self):
        if self.name == "phx-lock-refresh":  # the lock refreshed often: all a deadlocked child does
            sys.modules["phoenix_backup.repo.locks"].REFRESH_SECONDS = 0.2
        _start(self)
        if self.name == _after:
            if _how == "locked-stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            _lock = threading.Lock()
            _lock.acquire()
            _lock.acquire()
    threading.Thread.start = _start_then_hang
elif _child:
    _loads = pickle.loads
    def _hang(*args, **kwargs):
        if open(_flag).read() == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        _lock = threading.Lock()
        _lock.acquire()
        _lock.acquire()
    pickle.loads = _hang
"""


def _hang_children(sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The flag file that makes the watch's next children hang (see HANG); absent for now."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HANG, encoding="utf-8")
    flag = tmp_path / "hang"
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("PHX_TEST_HANG_CHILD", str(flag))
    sb.env["PYTHONPATH"] = str(site)
    sb.env["PHX_TEST_HANG_CHILD"] = str(flag)
    return flag


@pytest.mark.parametrize("how", ["stop", "deadlock", "working", "locked"])
def test_a_hung_child_is_killed_and_the_watch_captures_commits_meanwhile(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A child stopped or deadlocked while it takes a base (before its heartbeat starts, or
    after: the heartbeat's own processor time is no sign of work): the databases already followed are
    still captured while it hangs, it is killed once silent for STALL_SECONDS (one warning naming
    why), and the base is taken again later."""
    sb = sandbox
    _table(sb.layout.dashboard_db)
    flag = _hang_children(sb, tmp_path, monkeypatch)
    monkeypatch.setattr(watch_child, "STALL_SECONDS", 4.0, raising=False)  # (none before: hangs)
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        w.poll()  # the bases
        assert not any(d.need_base for d in w.dbs), notices
        other = next(d for d in w.dbs if d.logical != LOGICAL)
        other.need_base = True  # a new base of another database (as after a checkpoint by another process)
        flag.write_text(how)
        stop_writing = threading.Event()

        def write() -> None:
            k = 1
            while not stop_writing.wait(0.3):
                _commit(sb.layout.dashboard_db, k)
                k += 1

        writer = threading.Thread(target=write)
        writer.start()
        started = time.monotonic()
        try:
            w.poll()  # the base in a child that hangs
        finally:
            stop_writing.set()
            writer.join()
        assert time.monotonic() - started < 60
        hung = [n for n in notices if "was killed" in n]  # not the test folder's name, in a path
        assert len(hung) == 1 and "no sign of work" in hung[0] and "tried again" in hung[0], notices
        assert other.need_base
        assert w.result.segments >= 2, notices  # segments written while the child hung
        w.poll()  # the last commits (the base is not tried again before its time)
        w.flush()
        con = sqlite3.connect(sb.layout.dashboard_db)
        rows = [r[0] for r in con.execute("SELECT k FROM log ORDER BY k")]
        con.close()
        assert len(rows) > 3
        assert _restored(sb, _last_covered(sb), tmp_path / "at") == rows
        flag.unlink()
        w.next_base = 0.0
        w.poll()  # tried again: taken
        assert not other.need_base, notices


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the child in /proc")
def test_ctrl_c_ends_a_watch_whose_child_hangs(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (SIGINT) while the base's child is stopped: the watch ends within seconds, not
    after STALL_SECONDS (or never), and takes the child with it."""
    sb = sandbox
    _table(sb.layout.dashboard_db)
    flag = _hang_children(sb, tmp_path, monkeypatch)
    flag.write_text("stop")
    watch, child = _watch_and_its_child(sb, stopped=True)
    try:
        watch.send_signal(signal.SIGINT)
        code = watch.wait(timeout=20)
    finally:
        watch.kill()
        watch.wait()
    log = (sb.root / "watch.log").read_text()
    assert code == 0, log
    assert "no sign of work" in log and "asked to stop" in log, log
    assert not Path(f"/proc/{child}").exists() or " Z" in Path(f"/proc/{child}/stat").read_text()


def _reads_memory(pid: int, prefix: list[str]) -> bool:
    """Whether a process of the same user, without CAP_SYS_PTRACE, may open /proc/PID/mem."""
    probe = f"import sys\ntry:\n    open('/proc/{pid}/mem', 'rb').close()\nexcept OSError:\n    sys.exit(1)"
    return subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True).returncode == 0


def _same_user_prefix() -> list[str]:
    """What starts a program as a process of one ordinary user; skipped where such a process
    could not read another's memory anyway."""
    # As root, the watch and the reader both drop every capability (same uid 0, same capabilities,
    # none of them CAP_SYS_PTRACE), as two processes of one ordinary user.
    prefix = [] if os.geteuid() != 0 else ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]
    control = subprocess.Popen([*prefix, "sleep", "60"])
    try:
        if not _reads_memory(control.pid, prefix):
            pytest.skip("this machine forbids reading another process's memory anyway (Yama ptrace_scope)")
    finally:
        control.kill()
        control.wait()
    return prefix


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_DUMPABLE) is Linux's")
def test_the_watch_and_its_child_keep_their_memory_from_other_processes(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both hold the master secrets for as long as they run: another process of the same user
    (without CAP_SYS_PTRACE) cannot read their memory, nor would a crash leave a core dump."""
    prefix = _same_user_prefix()
    sb = sandbox
    _table(sb.layout.dashboard_db)
    flag = _hang_children(sb, tmp_path, monkeypatch)
    flag.write_text("stop")  # the child waits, stopped, to be looked at
    watch, child = _watch_and_its_child(sb, prefix, stopped=True)
    try:
        assert "watch" in Path(f"/proc/{watch.pid}/cmdline").read_text()  # the watch itself (setpriv execs it)
        assert not _reads_memory(watch.pid, prefix)
        assert not _reads_memory(child, prefix)
    finally:
        watch.kill()
        watch.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_DUMPABLE) is Linux's")
def test_a_backup_keeps_its_memory_and_environment_from_other_processes(sandbox: Sandbox, tmp_path: Path) -> None:
    """`phx backup` holds the passphrase (its environment) and the master secrets too, for hours
    when the workspace is large: what its hook (another process of the same user) tries to read
    of it, its environment, is refused."""
    prefix = _same_user_prefix()
    sb = sandbox
    seen = tmp_path / "seen"
    probe = f"if cat /proc/$PPID/environ > /dev/null 2>&1; then echo readable > {seen}; else echo hidden > {seen}; fi"
    sb.write_config(hooks={"preBackup": probe})
    res = subprocess.run([*prefix, PHX, "backup"], env=sb.env, capture_output=True, text=True)
    assert res.returncode == 0, res
    assert seen.read_text().strip() == "hidden"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_CORE and prctl are Linux's here")
def test_a_backup_runs_with_no_core_size_whatever_it_was_started_with(sandbox: Sandbox, tmp_path: Path) -> None:
    """Not dumpable alone still writes a core where `fs.suid_dumpable` is 1 or 2: `phx` started
    with an unlimited core size (`ulimit -c unlimited`) holds its secrets with a core size of 0,
    which its hook inherits and shows."""
    import resource

    sb = sandbox
    seen = tmp_path / "seen"
    sb.write_config(hooks={"preBackup": f"ulimit -c > {seen}"})
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    if hard == 0:
        pytest.skip("the hard core size limit is 0 here: nothing to lower")

    def raise_core_limit() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))

    res = subprocess.run([PHX, "backup"], env=sb.env, capture_output=True, text=True, preexec_fn=raise_core_limit)
    assert res.returncode == 0, res
    assert seen.read_text().strip() == "0"
