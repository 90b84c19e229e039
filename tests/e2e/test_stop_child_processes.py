"""A stop signal that reaches `phx` alone (systemd's `stop` with `KillMode=mixed`, `kill PID`) while
a child runs in a session of its own: the child is ended and waited for, and what `phx` created for
the stopped step is undone (docs/cli.md, "Signals").

Before, `pg_restore` was left to run on (and commit) while `phx` said "interrupted", a database
`phx` had created for that restore stayed, and a second SIGTERM during the `postBackup` hook that
runs after a stopped backup left the hook running on, orphaned."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from e2e_support import PHX, Sandbox, process_state

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import services
from services import PgServer, db_state, make_memory_db, postgres_entry, reader_entry

# The sandboxes' helpers (backup, restore_to, verify, snapshots) run phx in this process
pytestmark = pytest.mark.phx_in_process

pg_server = services.pg_server  # the session's PostgreSQL server (a fixture)

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
SIGNALS = [signal.SIGTERM, signal.SIGHUP, signal.SIGINT] if HEAVY else [signal.SIGTERM]


def _children(pid: int) -> list[int]:
    """The children of every thread of `pid` (a worker thread may start one)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").split("\0")
    except OSError:
        return []


def _runs(pid: int) -> bool:
    """Whether `pid` is a process that has not ended (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def _start(sb: Sandbox, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PHX, *args],
        env=env,
        cwd=sb.root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _frozen_child(proc: subprocess.Popen[str], name: str = "pg_restore") -> int:
    """Wait for `proc`'s child `name` and freeze it (SIGSTOP) mid-work; its pid."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        for child in _children(proc.pid):
            # Not the `--version` probe that finds the tool (`sources.postgres.tool_version`):
            # frozen, it held the backup for its 30 s timeout and the test's wait ran out. Nor a
            # child that already ended (a zombie has no command line, and ignores SIGSTOP).
            if _name(child) != name or "--version" in _cmdline(child) or process_state(child) in ("Z", "X", ""):
                continue
            os.kill(child, signal.SIGSTOP)
            if process_state(child) == "Z":  # it ended between the look and the signal
                continue
            # `phx` goes on writing its input (into the pipe) or waiting: the stop comes
            # after Popen returned (a signal inside Popen itself: the test below).
            time.sleep(0.1)
            return child
        time.sleep(0.001)
    out, err = proc.communicate(timeout=60)
    raise AssertionError(f"{name} was never seen running: {out}{err}")


def _stop_during_pg_restore(sb: Sandbox, env: dict[str, str], sig: signal.Signals, *args: str) -> None:
    proc = _start(sb, env, "restore", "--latest", *args)
    child = _frozen_child(proc)
    try:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, (proc.returncode, out, err)
        assert "interrupted" in err and "Traceback" not in err, err
        assert not _runs(child), f"pg_restore was left running after phx stopped: {_cmdline(child)} {err}"
    finally:
        if _runs(child):  # the old code's orphan
            os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("sig", SIGNALS)
def test_a_stop_ends_pg_restore_and_drops_only_the_database_phx_created(
    sandbox: Sandbox, pg_server: PgServer, sig: signal.Signals
) -> None:
    pg, sb = pg_server, sandbox
    db = make_memory_db(pg, rows_per_agent=10, dims=8)
    sb.write_config(databases={"postgres": [postgres_entry(pg, db)]})
    env = sb.env_with(PHX_TEST_PGPASSWORD=pg.password)
    before = db_state(pg, db)
    sb.phx("backup", env=env)

    # A database this restore creates (--to-database): dropped again by the stop.
    copy = f"{db}_stopped"
    _stop_during_pg_restore(sb, env, sig, "--to-database", copy)
    left = pg.query("postgres", "SELECT datname FROM pg_database WHERE datname = %s", (copy,))
    assert left == [], f"database {copy}, created by the stopped restore, was left on the server"

    # A database that was there (in place): never dropped, and as it was (the transaction rolled back).
    pg.sql(db, "DELETE FROM memory_items WHERE ctid IN (SELECT ctid FROM memory_items LIMIT 3)")
    changed = db_state(pg, db)
    assert changed != before
    _stop_during_pg_restore(sb, env, sig, "--databases-only", "--yes", "--no-safety-snapshot")
    assert db_state(pg, db) == changed
    pg.drop_database(db)


def test_a_second_sigterm_during_the_post_backup_hook_ends_the_hook_too(sandbox: Sandbox, tmp_path: Path) -> None:
    """A backup stopped while `preBackup` runs runs `postBackup` (status failed) to undo it; a
    second SIGTERM then ends `phx` at once, and the hook's whole process group with it."""
    sb = sandbox
    pre_started, post_pids = tmp_path / "pre-started", tmp_path / "post-pids"
    sb.write_config(
        hooks={
            "preBackup": f"touch {pre_started}; sleep 120",
            # The hook and a process it started in the background, both in its process group.
            "postBackup": f"sleep 121 & echo $! $$ > {post_pids}.tmp; mv {post_pids}.tmp {post_pids}; wait",
            "timeoutSeconds": 600,
        }
    )
    proc = _start(sb, sb.env, "backup")
    deadline = time.monotonic() + 120
    while not pre_started.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    while not post_pids.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert post_pids.exists(), "postBackup did not run after the stop"
    pids = [int(p) for p in post_pids.read_text().split()]
    try:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, (proc.returncode, out, err)
        assert "stopped at once by a second signal" in err, err
        time.sleep(0.2)  # SIGKILL is delivered at once; let the kernel reap them
        assert [p for p in pids if _runs(p)] == [], "the postBackup hook was left running, orphaned"
    finally:
        for p in pids:
            if _runs(p):
                os.kill(p, signal.SIGKILL)


def test_a_stop_during_pg_dump_ends_it_and_makes_no_snapshot(
    sandbox: Sandbox, pg_server: PgServer, tmp_path: Path
) -> None:
    """pg_dump stuck (a server that stops answering; here frozen) and SIGTERM to `phx` alone:
    before, the stop waited for it for ever (the read of its pipe never ended), and the test,
    freezing the `--version` probe that finds the tool instead, hid it. Now pg_dump runs in a
    session of its own, which the stop kills."""
    pg, sb = pg_server, sandbox
    db = make_memory_db(pg, rows_per_agent=10, dims=8)
    # A pg_dump that takes its time before it dumps, so that it is frozen at work (a small dump
    # could end before the test sees it, and a zombie ignores SIGSTOP).
    slow = tmp_path / "bin" / "pg_dump"
    slow.parent.mkdir()
    real = pg.tool("pg_dump")
    slow.write_text(f'#!/bin/sh\n[ "$1" = --version ] || sleep 2\nexec {real} "$@"\n')
    slow.chmod(0o755)
    sb.write_config(databases={"postgres": [postgres_entry(pg, db, pgDump=str(slow))]})
    env = sb.env_with(PHX_TEST_PGPASSWORD=pg.password)
    before = sb.snapshots()
    proc = _start(sb, env, "backup")
    child = _frozen_child(proc, "pg_dump")
    try:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 143 and "interrupted" in err, (proc.returncode, out, err)
        assert not _runs(child), "pg_dump was left running after phx stopped"
    finally:
        if _runs(child):
            os.kill(child, signal.SIGKILL)
    assert sb.snapshots() == before
    sb.write_config(databases={"postgres": [postgres_entry(pg, db)]})
    sb.phx("backup", env=env)  # no lock left behind
    pg.drop_database(db)


class _SlowReplies:
    """A TCP relay to the server whose replies arrive `delay` seconds late (a slow link): a
    statement is done on the server well before `phx` hears so."""

    def __init__(self, host: str, port: int, delay: float) -> None:
        self.delay = delay
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, self.delay), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                time.sleep(delay)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def test_a_stop_while_the_server_creates_the_database_drops_it(sandbox: Sandbox, pg_server: PgServer) -> None:
    """The stop came once CREATE DATABASE was done on the server but before `phx` had its reply:
    the database it created stayed on the server (empty), as if someone else had made it."""
    pg, sb = pg_server, sandbox
    db = make_memory_db(pg, rows_per_agent=3, dims=8)
    sb.write_config(databases={"postgres": [postgres_entry(pg, db)]})
    env = sb.env_with(PHX_TEST_PGPASSWORD=pg.password)
    sb.phx("backup", env=env)
    relay = _SlowReplies(pg.host, pg.port, 0.3)
    copy = f"{db}_slow"
    try:
        sb.write_config(databases={"postgres": [postgres_entry(pg, db, host="127.0.0.1", port=relay.port)]})
        proc = _start(sb, env, "restore", "--latest", "--to-database", copy)
        deadline = time.monotonic() + 120
        query = "SELECT datname FROM pg_database WHERE datname = %s"
        while not pg.query("postgres", query, (copy,)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 143 and "interrupted" in err and "Traceback" not in err, (proc.returncode, out, err)
        left = pg.query("postgres", query, (copy,))
        assert left == [], f"database {copy}, created by the stopped restore, was left on the server: {err}"
    finally:
        relay.close()
        pg.drop_database(copy)
        pg.drop_database(db)


# In `phx` only: right after a child whose command holds SIGNAL_INSIDE_POPEN is forked and has
# exec'd (Popen waits for that), but before Popen returns, `phx` gets SIGNAL_INSIDE_POPEN_SIG; the
# child's pid goes to SIGNAL_INSIDE_POPEN_PID.
_INSIDE_POPEN = """
import os, subprocess
_real = subprocess.Popen._execute_child

def _execute_child(self, args, *rest, **kw):
    _real(self, args, *rest, **kw)
    if os.environ["SIGNAL_INSIDE_POPEN"] in str(args):
        with open(os.environ["SIGNAL_INSIDE_POPEN_PID"], "w") as f:
            f.write(str(self.pid))
        os.kill(os.getpid(), int(os.environ["SIGNAL_INSIDE_POPEN_SIG"]))

subprocess.Popen._execute_child = _execute_child
"""


def _signalled_inside_popen(
    sb: Sandbox, tmp_path: Path, sig: signal.Signals, marker: Path, *args: str, **env: str | None
) -> tuple[subprocess.Popen[str], str, str, int]:
    """Run `phx ARGS` with `_INSIDE_POPEN`: `sig` lands inside Popen as it starts the child whose
    command names `marker`. The process, its output and errors, and that child's pid."""
    site = tmp_path / "inside-popen-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_INSIDE_POPEN)
    started = tmp_path / "started-pid"
    run_env = sb.env_with(
        **env,
        PYTHONPATH=os.pathsep.join(filter(None, [str(site), sb.env.get("PYTHONPATH")])),
        SIGNAL_INSIDE_POPEN=str(marker),
        SIGNAL_INSIDE_POPEN_PID=str(started),
        SIGNAL_INSIDE_POPEN_SIG=str(int(sig)),
    )
    proc = _start(sb, run_env, *args)
    out, err = proc.communicate(timeout=120)
    return proc, out, err, int(started.read_text())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_inside_popen_ends_the_child_it_was_starting(
    sandbox: Sandbox, tmp_path: Path, sig: signal.Signals
) -> None:
    """A stop signal that lands inside `subprocess.Popen`, after the fork (the child, in a session
    of its own, runs) and before Popen returns its pid: `phx` still ends the child's group, which
    the terminal's signal never reaches. Before, the exception left Popen with the child unknown
    to `phx`: the hook ran on, orphaned, after `phx` said "interrupted"."""
    sb = sandbox
    pids_file = tmp_path / "hook-pids"
    sb.write_config(hooks={"preBackup": f"sleep 120 & echo $! $$ > {pids_file}; wait", "timeoutSeconds": 600})
    before = sb.snapshots()
    proc, out, err, started = _signalled_inside_popen(sb, tmp_path, sig, pids_file, "backup")
    pids = [started]
    try:
        assert proc.returncode == 128 + sig, (proc.returncode, out, err)
        assert "interrupted" in err and "Traceback" not in err, err
        time.sleep(0.5)  # an orphaned hook would have written its pids by now
        if pids_file.exists():
            pids += [int(p) for p in pids_file.read_text().split()]
        assert [p for p in pids if _runs(p)] == [], "the preBackup hook was left running, orphaned"
    finally:
        for p in pids:
            if _runs(p):
                os.kill(p, signal.SIGKILL)
    assert sb.snapshots() == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_while_the_passphrase_command_runs_ends_what_it_started(
    backed_up: Sandbox, tmp_path: Path, sig: signal.Signals
) -> None:
    """`encryption.passphraseCommand` stays in `phx`'s session (it may need the terminal), so a
    signal sent to `phx` alone (`kill PID`) does not reach what it started: the stop ends the
    command with every process below it. Before, only its shell was killed and its child (the
    `sleep` here, a `gpg` in life) ran on, orphaned."""
    sb = backed_up
    pid_file = tmp_path / "child-pid"
    command = f"sleep 121 & echo $! > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; wait; echo x"
    sb.write_config(encryption={"enabled": True, "method": "passphrase", "passphraseCommand": command})
    proc = _start(sb, sb.env_with(PHX_PASSPHRASE=None), "list")
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert pid_file.exists(), proc.communicate(timeout=60)
    child = int(pid_file.read_text())
    try:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, (proc.returncode, out, err)
        assert "interrupted" in err and "Traceback" not in err, err
        time.sleep(0.2)  # SIGKILL is delivered at once; let the kernel reap it
        assert not _runs(child), "what the passphrase command started was left running, orphaned"
    finally:
        if _runs(child):
            os.kill(child, signal.SIGKILL)


def test_a_stop_before_pg_dump_starts_ends_it_as_it_starts(
    sandbox: Sandbox, pg_server: PgServer, tmp_path: Path
) -> None:
    """SIGTERM to `phx` alone while the backup's worker is still finding pg_dump (its `--version`
    probe, here slow; in life a slow connection or snapshot): the stop ended the child groups that
    ran then, none, and the worker went on to start pg_dump and read it whole, so the stop waited
    for it (for ever, pg_dump stuck as here). A pg_dump started for a stopped backup is ended as it
    starts."""
    pg, sb = pg_server, sandbox
    db = make_memory_db(pg, rows_per_agent=10, dims=8)
    probing, dumping = tmp_path / "probing", tmp_path / "dumping"
    stuck = tmp_path / "bin" / "pg_dump"
    stuck.parent.mkdir()
    real = pg.tool("pg_dump")
    stuck.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = --version ]; then touch {probing}; sleep 3; exec {real} "$@"; fi\n'
        f"echo $$ > {dumping}; exec sleep 300\n"  # a pg_dump that never answers
    )
    stuck.chmod(0o755)
    sb.write_config(databases={"postgres": [postgres_entry(pg, db, pgDump=str(stuck))]})
    env = sb.env_with(PHX_TEST_PGPASSWORD=pg.password)
    before = sb.snapshots()
    proc = _start(sb, env, "backup")
    try:
        deadline = time.monotonic() + 120
        while not probing.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert probing.exists(), proc.communicate(timeout=60)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 143 and "interrupted" in err, (proc.returncode, out, err)
        assert "Traceback" not in err, err
        time.sleep(0.2)
        assert not (dumping.exists() and _runs(int(dumping.read_text()))), "pg_dump was left running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if dumping.exists() and _runs(int(dumping.read_text())):
            os.kill(int(dumping.read_text()), signal.SIGKILL)
    assert sb.snapshots() == before
    pg.drop_database(db)


class _FailsWhileReading:
    """A progress reporter (the Python API's `Environment(progress=...)`) that fails once the
    backup reads: its reading phase ends early, as a stop or an error in the main thread ends it."""

    def __init__(self) -> None:
        self.reading = False

    def phase(self, name: str, *, files: int = 0, size: int = 0, unit: str = "files") -> None:
        self.reading = name == "reading files"

    def working(self, what: str) -> None:
        pass

    def advance(self, *, files: int = 0, size: int = 0) -> None:
        if self.reading and threading.current_thread() is threading.main_thread():
            raise RuntimeError("the reporter failed")


def test_a_backup_that_ends_early_leaves_the_children_of_other_work_alone(sandbox: Sandbox, tmp_path: Path) -> None:
    """Python API: a backup and, in another thread of the same process, a gateway command (a
    restore's `gateway.start`, say). The backup's reading phase ends early: it ends its own
    children (pg_dump), not the gateway command, which runs to its end. Before, the backup killed
    every child group of the process: the command was killed mid-way (exit None, 'started' never
    printed)."""
    from phoenix_backup import Environment, backup, load_config
    from phoenix_backup.shell import ShellStep, run_shell

    sb = sandbox
    (sb.workspace / "a-link").symlink_to("nowhere")  # read by the main thread: the reporter fails
    running = tmp_path / "running"
    steps: list[ShellStep] = []
    beside = threading.Thread(
        target=lambda: steps.append(run_shell("gateway.start", f"touch {running}; sleep 2; echo started", 60, sb.env))
    )
    beside.start()
    try:
        deadline = time.monotonic() + 60
        while not running.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(RuntimeError, match="the reporter failed"):
            backup(load_config(sb.config_path, sb.env), Environment(env=dict(sb.env), progress=_FailsWhileReading()))
    finally:
        beside.join(timeout=60)
    [step] = steps
    assert step.ok and step.exit_code == 0 and "started" in step.output, step


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_inside_popen_ends_the_passphrase_command_it_was_starting(
    backed_up: Sandbox, tmp_path: Path, sig: signal.Signals
) -> None:
    """A stop signal to `phx` alone that lands inside `subprocess.Popen` as it starts
    `encryption.passphraseCommand` (after the fork and exec, before Popen returns): the command,
    in `phx`'s session, is ended with what it started. Before, the exception left Popen with the
    command unknown to `phx`: it ran on, orphaned, with its `sleep`."""
    sb = backed_up
    pid_file = tmp_path / "child-pid"
    command = f"sleep 121 & echo $! > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; wait; echo x"
    sb.write_config(encryption={"enabled": True, "method": "passphrase", "passphraseCommand": command})
    proc, out, err, started = _signalled_inside_popen(sb, tmp_path, sig, pid_file, "list", PHX_PASSPHRASE=None)
    pids = [started]
    try:
        assert proc.returncode == 128 + sig, (proc.returncode, out, err)
        assert "interrupted" in err and "Traceback" not in err, err
        time.sleep(0.5)  # an orphaned command would have written its child's pid by now
        if pid_file.exists():
            pids.append(int(pid_file.read_text()))
        assert [p for p in pids if _runs(p)] == [], "the passphrase command was left running, orphaned"
    finally:
        for p in pids:
            if _runs(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.parametrize("how", ["exception", "end_child_groups", "StopScope.end"])
def test_the_group_of_a_reaped_child_is_never_signalled(tmp_path: Path, how: str) -> None:
    """A child of `child_group` whose exit status was read (reaped) while its block still runs: a
    failed pg_dump, reaped by its stream's end long before its generator is closed, or a gateway
    command that ended. Its pid is free, and may lead another process's group by then: the
    clean-up of an exception in the block, `end_child_groups` (a second signal) and
    `StopScope.end` (a backup's stop) must not signal that group. The process it left running
    in its group (a daemon a gateway command started) stands for the process that reused the pid:
    before, it was killed."""
    from phoenix_backup.shell import StopScope, child_group, end_child_groups

    left = tmp_path / "left"
    mine = StopScope()

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["/bin/sh", "-c", f"sleep 60 & echo $! > {left}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )

    try:
        with contextlib.suppress(RuntimeError), child_group(start, mine) as proc:
            assert proc.wait(timeout=60) == 0
            if how == "end_child_groups":
                end_child_groups()
            elif how == "StopScope.end":
                mine.end()
            raise RuntimeError("the block ends early")
        time.sleep(0.2)
        assert _runs(int(left.read_text())), "the group of a reaped child was signalled"
    finally:
        if left.exists() and _runs(int(left.read_text())):
            os.kill(int(left.read_text()), signal.SIGKILL)


def _processes_running(argv: list[str]) -> list[int]:
    """The processes whose command line is `argv` exactly."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _cmdline(int(entry.name))[: len(argv)] == argv and _runs(int(entry.name)):
            found.append(int(entry.name))
    return found


def test_kill_with_descendants_misses_none_that_a_descendant_forks_meanwhile() -> None:
    """A passphraseCommand whose descendant keeps starting processes (`while :; do sleep N & done`
    in the background): `kill_with_descendants` (a stop, the command's timeout) ends every one.
    Before, the processes forked between the read of the tree and the kills ran on, orphaned
    (hundreds of `sleep`s in each run here); now each process is stopped before its children are
    read. Three rounds, each a chance to miss one."""
    from phoenix_backup.shell import kill_with_descendants

    mark = ["sleep", "123.4567"]  # this test's sleeps alone
    left: list[int] = []
    try:
        for _ in range(3):
            proc = subprocess.Popen(["/bin/sh", "-c", f"(while :; do {' '.join(mark)} & done) & wait"])
            time.sleep(0.3)
            kill_with_descendants(proc)
            time.sleep(0.3)  # an orphan reparented to init is still listed
            left += _processes_running(mark)
        assert left == [], f"{len(set(left))} processes forked by a descendant were left running"
    finally:
        for pid in left + _processes_running(mark):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("agent", [True, False], ids=["agent-rows", "pg_dump-row-counts"])
def test_a_stop_while_a_read_waits_for_a_lock_ends_at_once(sandbox: Sandbox, pg_server: PgServer, agent: bool) -> None:
    """A database read while another session holds a table locked (ALTER TABLE, LOCK TABLE): an
    agent's rows (`agentId`), or the row counts read beside pg_dump, wait for the lock over phx's
    own connection, and SIGTERM to `phx` must still end the backup at once: exit 143, one line,
    no snapshot. Before, the stop waited for the query as long as the lock was held (pg_dump
    itself, killed, was not the wait). Its session on the server ends too, the lock still held:
    before, it waited there until the lock was granted."""
    pg, sb = pg_server, sandbox
    db = make_memory_db(pg, rows_per_agent=10, dims=8)
    entry, env = reader_entry(pg, db, sb.env, agent=agent)
    sb.write_config(databases={"postgres": [entry]})
    before = sb.snapshots()
    locker = pg.connect(db)
    locker.execute("BEGIN")
    locker.execute("LOCK TABLE memory_items IN ACCESS EXCLUSIVE MODE")
    proc = _start(sb, env, "backup")
    try:
        deadline = time.monotonic() + 120
        waiting: list[tuple[object, ...]] = []
        while not waiting and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            waiting = pg.query(
                db,
                "SELECT pid FROM pg_stat_activity"
                " WHERE application_name = 'phoenix-backup' AND wait_event_type = 'Lock'",
            )
        assert waiting, proc.communicate(timeout=60)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 143 and "interrupted" in err and "Traceback" not in err, (proc.returncode, out, err)
        # The server's side ends too while the lock is still held (client_connection_check_interval):
        # a session left waiting would keep its snapshot and the locks it took, and queue others
        # behind it, until the holder lets go.
        gone = time.monotonic() + 20
        while waiting and time.monotonic() < gone:
            time.sleep(0.1)
            waiting = pg.query(
                db, "SELECT pid FROM pg_stat_activity WHERE application_name IN ('phoenix-backup', 'pg_dump')"
            )
        assert not waiting, "phx's session still waits on the server after the stop"
    finally:
        locker.execute("ROLLBACK")
        locker.close()
        if proc.poll() is None:
            proc.wait(timeout=60)
    assert sb.snapshots() == before
    pg.drop_database(db)


_SECOND_SIGNAL_IN_KILL = """
import os, signal, subprocess, sys, time
from phoenix_backup import shell
from phoenix_backup.cli import app

app.stop_on_signals()
app._STOPPING.started = True  # a stop is under way: the next signal is the second one
command = "trap '' HUP; %(sleep)s & %(sleep)s & wait"
proc = subprocess.Popen(["/bin/sh", "-c", command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(0.5)
first = shell._wait_stopped


def stopped_then_signal(pid, deadline):  # the second signal, once the command itself is stopped
    first(pid, deadline)
    shell._wait_stopped = first
    os.kill(os.getpid(), signal.SIGTERM)


shell._wait_stopped = stopped_then_signal
shell.kill_with_descendants(proc)
print("not stopped", flush=True)
"""


def test_a_second_signal_inside_kill_with_descendants_leaves_none_stopped() -> None:
    """A second SIGTERM (which ends `phx` at once, `os._exit`) that comes while
    `kill_with_descendants` has stopped (SIGSTOP) a passphraseCommand and not yet killed what it
    started: the kills are done first, then `phx` ends (143). Before, `phx` ended between the two
    and the command's processes stayed stopped for ever (or, ignoring SIGHUP, ran on once an
    orphaned group's SIGCONT came)."""
    mark = ["sleep", "234.5678"]  # this test's sleeps alone
    script = _SECOND_SIGNAL_IN_KILL % {"sleep": " ".join(mark)}
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert done.returncode == 143 and "not stopped" not in done.stdout, (done.returncode, done.stdout, done.stderr)
        time.sleep(0.3)  # an orphan reparented to init is still listed
        assert _processes_running(mark) == [], "the passphraseCommand's processes were left stopped or running"
    finally:
        for pid in _processes_running(mark):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
