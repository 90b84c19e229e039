"""SIGTERM (systemd's `stop`, a shutdown, a container runtime, `kill`) and SIGHUP (a terminal
closed) stop a `phx` command as Ctrl-C does (docs/cli.md, "Exit codes"): the same clean stop and
one line, exit 128 + the signal's number. Before, Python's default ended the process at once
(exit -15, -1): a backup's lock stayed in the repository, a prune stopped wherever it was.

Each command runs as a real process slowed by a `sitecustomize` module on its PYTHONPATH (each
fsync and unlink below the repository sleeps), and gets the signal once it has started writing
or deleting packs (the module touches a file at its first such call in `data/`). A restore's signals are tested in
tests/e2e/test_restore_sync_adversary.py, the watch's temporary cache folders here too."""

from __future__ import annotations

import contextlib
import json as jsonlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from e2e_support import PHX, Sandbox, numbered_notes

from phoenix_backup.storage.base import TEMP_MARKER

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from moto_support import bare_repo, git

import services
from services import PgServer, make_memory_db, postgres_entry

# Ctrl-C's SIGINT and systemd's SIGTERM go through one stop handler: where a test checks both, the
# default run takes SIGTERM and PHX_TEST_HEAVY=1 SIGINT too (the default run's time budget).
HEAVY_ONLY = pytest.mark.skipif(os.environ.get("PHX_TEST_HEAVY") != "1", reason="PHX_TEST_HEAVY=1: the budget")
pg_server = services.pg_server  # the session's PostgreSQL server (a fixture)

# The sandboxes' helpers (the backups that set a test up, the checks after) run phx in this process;
# the commands under test stay real `phx` processes (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

SLOW = """
import os, time
_below = os.environ["SLOW_BELOW"]
_started, _from = os.environ["SLOW_STARTED"], os.environ["SLOW_MARK_BELOW"]
_at, _calls = int(os.environ.get("SLOW_AT", "1")), [0]  # the mark at the SLOW_AT-th call below it
_real_fsync, _real_unlink = os.fsync, os.unlink

def _mark(path):
    if path.startswith(_from):
        _calls[0] += 1
        if _calls[0] == _at and not os.path.exists(_started):
            open(_started, "w").close()
    time.sleep(float(os.environ["SLOW_SECONDS"]))

def _fsync(fd):
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        path = ""
    if path.startswith(_below):
        _mark(path)
    return _real_fsync(fd)

def _unlink(path, *, dir_fd=None):
    if dir_fd is None and os.path.abspath(path).startswith(_below):
        _mark(os.path.abspath(path))
    return _real_unlink(path, dir_fd=dir_fd)

os.fsync, os.unlink = _fsync, _unlink
"""


def _stop_midway(
    sb: Sandbox,
    tmp_path: Path,
    sig: signal.Signals,
    *args: str,
    again: float | None = None,
    then: signal.Signals | None = None,
    hung_up: bool = False,
    site_extra: str = "",
    slow_below: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `phx ARGS` with every fsync and unlink in the repository (or in `slow_below`, a Git
    target's clones) slowed, send `sig` once the first one in its `data/` (or in `slow_below`)
    happened (and `then`, or `sig` again, `again` seconds later), and return how it ended.
    `hung_up`: its stdout and stderr are a terminal, gone (closed, every write answered EIO)
    before the signal; what it said is then lost."""
    site = tmp_path / "slow-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SLOW + site_extra)
    started = tmp_path / "slow-started"
    started.unlink(missing_ok=True)
    env = dict(sb.env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    below = slow_below or sb.repo
    env |= {"SLOW_BELOW": str(below), "SLOW_SECONDS": "0.05"}
    env |= {"SLOW_STARTED": str(started), "SLOW_MARK_BELOW": str(below if slow_below else below / "data")}
    cmd = [PHX, *args]
    terminal, output = os.openpty() if hung_up else (-1, subprocess.PIPE)
    proc = subprocess.Popen(
        cmd, env=env, cwd=sb.root, stdin=subprocess.DEVNULL, stdout=output, stderr=output, text=True
    )
    if hung_up:
        os.close(output)
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    if hung_up:
        os.close(terminal)
    assert proc.poll() is None, ("it ended before writing to the repository", proc.communicate())
    proc.send_signal(sig)
    if again is not None:
        time.sleep(again)
        proc.send_signal(then or sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _assert_stopped(res: subprocess.CompletedProcess[str], sig: signal.Signals) -> None:
    assert res.returncode == 128 + sig, (res.returncode, res.stderr)
    assert res.stderr.splitlines()[-1] == (
        "phx: interrupted; the repository is unchanged unless a snapshot was reported"
    ), res.stderr
    assert "Traceback" not in res.stderr, res.stderr


def _assert_repository_clean(sb: Sandbox) -> None:
    assert list((sb.repo / "locks").iterdir()) == [], "the lock is removed"
    assert [p for p in sb.repo.rglob(f"{TEMP_MARKER}*")] == [], "no temporary object is left"
    res = sb.phx("verify", "--json", check=False)
    assert res.code == 0 and res.json()["ok"], res


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_backup_stopped_by_a_signal_removes_its_lock_and_the_next_backup_succeeds(
    sandbox: Sandbox, tmp_path: Path, sig: signal.Signals
) -> None:
    sb = sandbox
    before = sb.snapshots()
    packs = sorted(p.name for p in (sb.repo / "data").rglob("*") if p.is_file())
    numbered_notes(sb, 120)
    # Full packs, written by the pack writer threads, which go on after the stop and complete them.
    (sb.workspace / "recording.bin").write_bytes(os.urandom(20_000_000))
    res = _stop_midway(sb, tmp_path, sig, "backup")
    _assert_stopped(res, sig)
    assert sb.snapshots() == before, "an interrupted backup is no snapshot"
    # The packs the stopped run wrote, which no index names, went with it (docs/reliability.md).
    assert sorted(p.name for p in (sb.repo / "data").rglob("*") if p.is_file()) == packs, res.stderr
    _assert_repository_clean(sb)
    sb.backup()  # exit 0 (checked)
    assert len(sb.snapshots()) == len(before) + 1


@pytest.mark.parametrize(
    ("first", "then"),
    [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGINT), (signal.SIGINT, signal.SIGTERM)],
)
def test_a_second_sigterm_ends_a_backup_at_once_and_the_next_backup_succeeds(
    sandbox: Sandbox, tmp_path: Path, first: signal.Signals, then: signal.Signals
) -> None:
    """The second SIGTERM (or Ctrl-C) while the backup stops ends it at once, as a kill would: its
    lock, a dead process's, is removed by the next backup, which succeeds; the repository verifies."""
    sb = sandbox
    before = sb.snapshots()
    numbered_notes(sb, 120)
    res = _stop_midway(sb, tmp_path, first, "backup", again=0.02, then=then)
    assert res.returncode in (128 + first, 128 + then), (res.returncode, res.stderr)
    # The stop takes 50 ms at least (the lock's removal is slowed): the second signal lands in it,
    # unless a loaded machine ran neither handler before both had arrived (then one is seen).
    last = res.stderr.splitlines()[-1]
    assert last.startswith(("phx: stopped at once by a second signal", "phx: interrupted")), res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert sb.snapshots() == before, "an interrupted backup is no snapshot"
    sb.backup()  # exit 0 (checked)
    assert len(sb.snapshots()) == len(before) + 1
    assert list((sb.repo / "locks").iterdir()) == [], "no lock is left"
    res = sb.phx("verify", "--json", check=False)
    assert res.code == 0 and res.json()["ok"], res


def test_a_prune_stopped_by_sigterm_leaves_a_repository_that_verifies(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    notes = numbered_notes(sb, 120)
    first = sb.backup()
    for name in list(notes)[::2]:  # half the packs' blobs go out of use with the first snapshot
        (sb.workspace / "notes" / name).write_bytes(os.urandom(len(notes[name])))
    sb.backup()
    sb.phx("forget", first["id"])
    when = time.time() - 2 * 3600  # packs this young are kept (a running backup may commit them)
    for pack in (sb.repo / "data").rglob("*"):
        os.utime(pack, (when, when))
    res = _stop_midway(sb, tmp_path, signal.SIGTERM, "prune")
    _assert_stopped(res, signal.SIGTERM)
    _assert_repository_clean(sb)
    done = sb.phx("prune", "--json").json()
    assert done["ok"], done
    _assert_repository_clean(sb)


def test_a_killed_watchs_temporary_cache_folder_is_removed_by_the_next(sandbox: Sandbox, tmp_path: Path) -> None:
    """A watch whose cache folder takes no file makes one in TMPDIR; killed (SIGKILL), it cannot
    remove it. The next watch removes the folders of this user's dead watches, never a live one's."""
    from phoenix_backup.ops.watch import temp_cache_prefix

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    # A process that made its folder as a watch does and was killed: its pid is gone (or, if
    # reused since, names a process started at another time).
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, tempfile; from phoenix_backup.ops.watch import temp_cache_prefix; "
            "d = tempfile.mkdtemp(prefix=temp_cache_prefix(), dir=sys.argv[1]); "
            "open(os.path.join(d, 'cache'), 'w').write('x'); os.kill(os.getpid(), 9)",
            str(tmp),
        ]
    )
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    (dead,) = tmp.iterdir()
    live = tmp / (temp_cache_prefix() + "mine")  # this process's: alive
    live.mkdir(mode=0o700)
    other = tmp / "phx-watch-cache-notours"  # not the shape: never touched
    other.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = Path(str(dead) + "x")
    link.symlink_to(elsewhere)  # a symlink of that shape: not followed, not removed
    kept = [live.name, other.name, link.name]
    if os.geteuid() == 0:  # another user's, of that dead process: not ours to remove
        theirs = Path(str(dead) + "theirs")
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
        kept.append(theirs.name)
    res = sandbox.phx("watch", "--duration", "0", env=sandbox.env_with(TMPDIR=str(tmp)))
    assert sorted(p.name for p in tmp.iterdir()) == sorted(kept), res
    assert elsewhere.is_dir()


@pytest.mark.parametrize("first", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_a_sighup_while_stopping_does_not_cut_the_stop_short(
    sandbox: Sandbox, tmp_path: Path, first: signal.Signals
) -> None:
    """A closed terminal hangs up a foreground command twice (the shell forwards its SIGHUP to its
    jobs, then the kernel sends one to the foreground group as the shell exits), and systemd's
    `SendSIGHUP=yes` follows its SIGTERM with a SIGHUP, and a user who pressed Ctrl-C may close the
    terminal while the stop runs: none is a user insisting. The stop runs to its end: the first
    signal's exit code, one `interrupted` line, no lock, no temporary object (before, the SIGHUP
    ended it at once, exit 129, its lock left; after Ctrl-C it raised inside the stop)."""
    sb = sandbox
    before = sb.snapshots()
    numbered_notes(sb, 120)
    # 20 ms later the stop has begun (the lock's removal alone takes 50 ms here).
    res = _stop_midway(sb, tmp_path, first, "backup", again=0.02, then=signal.SIGHUP)
    _assert_stopped(res, first)
    assert sb.snapshots() == before, "an interrupted backup is no snapshot"
    _assert_repository_clean(sb)


@pytest.mark.parametrize("json", [False, True])
def test_a_hang_up_whose_terminal_is_gone_still_exits_129(sandbox: Sandbox, tmp_path: Path, json: bool) -> None:
    """A terminal closed: stdout and stderr answer every write with EIO. The stop still runs to
    its end and the exit code is SIGHUP's 129 (before: Python's last flush of the output failed
    and made it 120, which no script or unit reads as a hang-up)."""
    sb = sandbox
    before = sb.snapshots()
    numbered_notes(sb, 120)
    res = _stop_midway(sb, tmp_path, signal.SIGHUP, "backup", *(["--json"] if json else []), hung_up=True)
    assert res.returncode == 129, res.returncode
    assert sb.snapshots() == before, "an interrupted backup is no snapshot"
    _assert_repository_clean(sb)


def test_a_watch_keeps_the_temporary_cache_folder_of_a_watch_on_another_machine(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """TMPDIR on a home folder that several machines share (NFS): a live watch on another machine
    (another host name, another boot id) has its temporary cache folder there. Its other boot id
    proves no reboot here: the folder is kept (before, it was removed as a rebooted machine's)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("making another machine's process (another host name and boot id) takes root and unshare")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    boot = tmp_path / "boot_id"
    boot.write_text("11111111-2222-3333-4444-555555555555\n")
    made = tmp_path / "made"
    code = (
        "import os, sys, tempfile, time; from phoenix_backup.ops.watch import temp_cache_prefix; "
        "d = tempfile.mkdtemp(prefix=temp_cache_prefix(), dir=sys.argv[1]); "
        "open(os.path.join(d, 'cache'), 'w').write('x'); open(sys.argv[2], 'w').close(); time.sleep(120)"
    )
    script = (
        'mount --bind "$1" /proc/sys/kernel/random/boot_id && hostname phx-elsewhere && exec "$2" -c "$3" "$4" "$5"'
    )
    other = subprocess.Popen(
        ["unshare", "--uts", "--mount", "--fork", "sh", "-c", script, "sh", boot, sys.executable, code, tmp, made]
    )
    try:
        deadline = time.monotonic() + 60
        while not made.exists() and time.monotonic() < deadline and other.poll() is None:
            time.sleep(0.02)
        assert made.exists(), other.poll()
        (theirs,) = tmp.iterdir()
        res = sandbox.phx("watch", "--duration", "0", env=sandbox.env_with(TMPDIR=str(tmp)))
        assert [p.name for p in tmp.iterdir()] == [theirs.name], res
        assert (theirs / "cache").read_text() == "x"
    finally:
        other.kill()
        other.wait()


class _SilentServer:
    """A TCP server that accepts every connection and never answers (a PostgreSQL or Redis that
    hangs): `accepted` is set once a client connected, `closed` once every client hung up."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.clients: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                con, _ = self.sock.accept()
            except OSError:
                return
            self.clients.append(con)
            self.accepted.set()
            self._serve_client(con)

    def _serve_client(self, con: socket.socket) -> None:
        """Nothing: the client's connection is left unanswered."""

    def hung_up(self) -> bool:
        """Every client has closed its end (a read on it gives end of file at once)."""
        for con in self.clients:
            con.settimeout(0.01)
            try:
                while con.recv(65536):
                    pass
            except TimeoutError:
                return False
            except OSError:
                pass
        return True

    def close(self) -> None:
        self.sock.close()
        for con in self.clients:
            con.close()


@pytest.mark.parametrize(
    ("engine", "sig"),
    [
        ("postgres", signal.SIGTERM),
        pytest.param("postgres", signal.SIGINT, marks=HEAVY_ONLY),
        ("redis", signal.SIGTERM),
        pytest.param("redis", signal.SIGINT, marks=HEAVY_ONLY),
    ],
)
def test_a_stop_does_not_wait_for_a_database_server_that_never_answers(
    sandbox: Sandbox, engine: str, sig: signal.Signals
) -> None:
    # The server accepts the connection and says nothing: PostgreSQL's connect waits for its 10 s
    # timeout, a Redis read for 120 s. A stop ends them at once (each is ended from the stopping
    # thread), with the signal's exit code, no snapshot and no lock; the connection is closed.
    sb = sandbox
    before = sb.snapshots()
    server = _SilentServer()
    proc: subprocess.Popen[str] | None = None
    try:
        if engine == "postgres":
            entry = {"name": "silent", "host": "127.0.0.1", "port": server.port, "database": "x", "user": "x"}
        else:
            entry = {"name": "silent", "url": f"redis://127.0.0.1:{server.port}/0"}
        sb.write_config(databases={engine: [entry]})
        proc = subprocess.Popen(
            [PHX, "backup"], env=sb.env, cwd=sb.root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert server.accepted.wait(60), proc.communicate()
        time.sleep(0.3)  # its connect (or first read) is waiting now
        proc.send_signal(sig)
        # Well inside the server's timeouts (10 s to connect, 120 s to read): the old code waited
        # for them (the stop had no way to end them).
        out, err = proc.communicate(timeout=8)
        res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        _assert_stopped(res, sig)
        assert sb.snapshots() == before, "a stopped backup is no snapshot"
        assert list((sb.repo / "locks").iterdir()) == [], "the lock is removed"
        assert server.hung_up(), "phx closed its connections to the server"
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()  # it did not stop: not left running
            proc.communicate()
        server.close()


# A stop signal while `phx` imports its commands, before `main` installs its stop handlers: sent
# by phx itself as it imports click (after the `phoenix_backup.cli` package, before the commands).
_SIGNAL_WHILE_IMPORTING = """
import importlib.abc, os, signal, sys

class _Signal(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "click":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), int(os.environ["EARLY_SIGNAL"]))
        return None

sys.meta_path.insert(0, _Signal())
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
@pytest.mark.parametrize("json", [False, True])
def test_a_stop_while_phx_starts_exits_with_the_signals_code_and_line(
    sandbox: Sandbox, tmp_path: Path, sig: signal.Signals, json: bool
) -> None:
    # Before, the signal's default action ended phx silently (exit -15, -2 with a traceback of
    # KeyboardInterrupt, -1): a service manager or a script saw no stop, only a killed process.
    site = tmp_path / "early-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SIGNAL_WHILE_IMPORTING)
    env = dict(sandbox.env, PYTHONPATH=str(site), EARLY_SIGNAL=str(int(sig)))
    before = sandbox.snapshots()
    args = [PHX, "backup", *(["--json"] if json else [])]
    res = subprocess.run(args, env=env, cwd=sandbox.root, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    message = "interrupted; the repository is unchanged unless a snapshot was reported"
    assert res.returncode == 128 + sig, (res.returncode, res.stderr)
    if json:
        assert [jsonlib.loads(line) for line in res.stderr.splitlines()] == [
            {"type": "notice", "level": "problem", "message": message}
        ], res.stderr
        assert jsonlib.loads(res.stdout) == {"ok": False, "error": message, "errorType": "Interrupted"}
    else:
        assert res.stderr == f"phx: {message}\n" and res.stdout == ""
    assert sandbox.snapshots() == before


# A stop signal while Python tears `phx` down (after every thread and exit handler): sent by an
# object that module teardown destroys, after Python put its signal handlers back to the default.
_SIGNAL_WHILE_TEARING_DOWN = """
import os

class _SignalWhenDestroyed:
    def __del__(self):
        os.kill(os.getpid(), {signum})

_keep = _SignalWhenDestroyed()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_while_phx_tears_down_keeps_the_exit_code(
    sandbox: Sandbox, tmp_path: Path, sig: signal.Signals
) -> None:
    # A command stopped by a first signal (or one that ended by itself: `phx version` here, exit
    # 0) has said its line and chosen its exit code; a second Ctrl-C that lands while Python tears
    # itself down changes nothing. Before, Python's default action killed it there: exit -2 or -15
    # (a second Ctrl-C 50 ms after the first during `phx export` gave -2 after the stop's line).
    late = _SIGNAL_WHILE_TEARING_DOWN.replace("{signum}", str(int(sig)))
    site = tmp_path / "late-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(late)
    env = dict(sandbox.env, PYTHONPATH=str(site))
    res = subprocess.run([PHX, "--version"], env=env, cwd=sandbox.root, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("phx, version"), (res.returncode, res.stderr)
    numbered_notes(sandbox, 120)
    res = _stop_midway(sandbox, tmp_path, sig, "backup", site_extra=late)
    _assert_stopped(res, sig)
    _assert_repository_clean(sandbox)


class _FreezingProxy(_SilentServer):
    """A TCP proxy to a real PostgreSQL that lets the connection be made (startup, password, the
    server's ReadyForQuery) and then holds everything the client sends: its first query is never
    answered (a server that stops answering just after the connect). `held` is set once it holds
    a client's query."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.held = threading.Event()
        super().__init__()

    def _serve_client(self, con: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.target))
        ready = threading.Event()
        threading.Thread(target=self._down, args=(server, con, ready), daemon=True).start()
        threading.Thread(target=self._up, args=(con, server, ready), daemon=True).start()

    def _down(self, server: socket.socket, client: socket.socket, ready: threading.Event) -> None:
        seen = b""
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                client.sendall(data)
                seen = (seen + data)[-64:]
                if b"Z\x00\x00\x00\x05" in seen:  # ReadyForQuery: the connect is done
                    ready.set()

    def _up(self, client: socket.socket, server: socket.socket, ready: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if ready.is_set():
                    self.held.set()
                    continue  # held: never reaches the server
                server.sendall(data)


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=HEAVY_ONLY)])
def test_a_stop_does_not_wait_for_a_postgresql_server_that_stops_answering_after_the_connect(
    sandbox: Sandbox, pg_server: PgServer, sig: signal.Signals
) -> None:
    # The connect succeeds; the server never answers the session's first statement (the settings
    # phx gives its session). A stop ends that wait at once, as it ends the connect's. Before, that
    # statement ran before the stop could end it (the hang-up was registered after): the stop
    # waited for ever.
    sb = sandbox
    before = sb.snapshots()
    db = make_memory_db(pg_server, rows_per_agent=1, dims=8)
    proxy = _FreezingProxy(pg_server.port)
    proc: subprocess.Popen[str] | None = None
    try:
        sb.write_config(databases={"postgres": [postgres_entry(pg_server, db, port=proxy.port)]})
        env = dict(sb.env, PHX_TEST_PGPASSWORD=pg_server.password)
        proc = subprocess.Popen(
            [PHX, "backup"], env=env, cwd=sb.root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proxy.held.wait(60), proc.communicate()
        time.sleep(0.3)  # its statement is waiting now
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
        res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        _assert_stopped(res, sig)
        assert sb.snapshots() == before, "a stopped backup is no snapshot"
        assert list((sb.repo / "locks").iterdir()) == [], "the lock is removed"
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()  # it did not stop: not left running
            proc.communicate()
        proxy.close()
        pg_server.drop_database(db)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed (scripts/test.sh installs it)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=HEAVY_ONLY)])
def test_a_sync_stopped_by_a_signal_ends_after_the_uploads_under_way(
    sandbox: Sandbox, tmp_path: Path, sig: signal.Signals
) -> None:
    # `phx sync` to a Git target, its writes into the clone slowed, stopped as it starts writing
    # there: it ends after the objects under way, publishing nothing (no snapshot reaches the
    # remote, whose every snapshot would need all its packs), and the next sync copies it all.
    # Before, the stop waited for the whole copy (every replica's every object and the push),
    # then said "interrupted": a SIGTERM did not stop a sync of hours.
    sb = sandbox
    remote = bare_repo(sb.root / "remote.git")
    targets: dict[str, dict[str, object]] = {
        "local": {"enabled": True},
        "git": {"enabled": False, "repo": str(remote), "branch": "main", "autoCommit": True},
    }
    sb.write_config(targets=targets)
    numbered_notes(sb, 40)
    for i in range(3):
        (sb.workspace / "notes" / f"extra{i}.md").write_bytes(os.urandom(300_000))
        sb.backup()
    targets["git"]["enabled"] = True
    sb.write_config(targets=targets)
    res = _stop_midway(sb, tmp_path, sig, "sync", slow_below=sb.root / "xdg-data" / "phoenix" / "git")
    _assert_stopped(res, sig)
    pushed = git("for-each-ref", "--format=%(refname)", cwd=remote).split()
    if pushed:
        names = git("ls-tree", "-r", "--name-only", "main", cwd=remote).split()
        assert [n for n in names if n.startswith("snapshots/")] == [], "the stop published no snapshot"
    _assert_repository_clean(sb)
    sb.phx("sync")  # exit 0 (checked)
    assert len(sb.phx("list", "--target", "git", "--json").json()) == 3
    assert sb.phx("verify", "--read-data", "--target", "git", "--json").json()["ok"] is True
