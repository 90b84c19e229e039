"""The snapshots `phx watch` takes (ops/watch.py), each in a child process: the bases of the
databases, and the snapshots of the files (ops/watch_files.py).

A snapshot loads the repository's index and the parent snapshot's trees, and a base reads every
page of the databases through the chunker, compression, sealing and pack threads: tens to
hundreds of MB through malloc, whose high-water mark (and the arenas' holes) would otherwise stay
in the watch, which runs for weeks. So the watch starts a Python process running this module
(the watch's own copy of the package, never one in the working directory), hands it what it
needs through a pipe (the config, the environment, the entries, and the repository's secrets,
never on the command line or in the environment), and reads back through a pipe of its own (never
standard output, where a module may print) what the snapshot gave: its id, the SHA-256 of each
database's copy, what could not be read, the integrity checks, the replicas' outcome, and the
notices. The child's memory goes back to the system when
it ends, and the watch never imports the backup's code.

- **Errors.** A Phoenix error in the child comes back as that error (the watch says it as it
  said an in-process one); a child that ends otherwise (killed, out of memory) is one SourceError
  naming how it ended.
- **Hangs.** While it works, the child sends a heartbeat (a byte before its answer) each second
  in which it showed a sign of work: its threads used processor time or were woken from a wait
  (a slow upload's socket), or a process it started (git) is still running and not stopped (that
  wait has its own timeout). The threads that run whatever the snapshot does (the heartbeat, the
  lock's refresh) do not count. A large honest base, or a
  push over a slow link, beats all along, however long it takes; a child stopped (SIGSTOP) or
  deadlocked falls silent. The watch meanwhile goes on capturing
  the databases it follows (`between`); a child silent for STALL_SECONDS is killed and its
  snapshot is one SourceError saying so (the watch tries it again later).
- **Kills.** The child holds a shared lock of its own while it writes, like any backup: a kill of
  either process leaves at most packs no snapshot names (what a killed backup leaves; `phx prune`
  removes them). The child ends when the watch does (its end of the pipe closes; and on Linux a
  SIGKILL from the kernel, which ends it even stopped); SIGINT and
  SIGTERM are the watch's to handle (it lets a snapshot that beats finish, then stops; one that
  has been silent STOP_GRACE_SECONDS is killed at once, so a hung child cannot hold a Ctrl-C up).
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from phoenix_backup._version import __version__
from phoenix_backup.config import Config
from phoenix_backup.errors import PhoenixError, SourceError
from phoenix_backup.process import hide_process_memory, limit_malloc_arenas, set_process_option
from phoenix_backup.repo.keys import MasterSecrets
from phoenix_backup.repo.repository import Repository
from phoenix_backup.shell import kill_group
from phoenix_backup.sources.files import Entry

_LENGTH = struct.Struct(">Q")
_PR_SET_PDEATHSIG = 1
# On the answer pipe: heartbeats, then ANSWER and the pickled outcome.
BEAT = b"."
WAIT = b","  # a heartbeat of a child that only waits on a process it started (git pushing)
ANSWER = b"!"
BEAT_SECONDS = 1.0
# A child that showed no sign of work this long (`_beat`) is hung (stopped, deadlocked): even a slow
# target's retries and a large database's integrity check keep it busy more often than that.
STALL_SECONDS = 300.0
# After a stop (Ctrl-C, SIGTERM): a child silent this long is killed rather than waited for.
STOP_GRACE_SECONDS = 2.0
# The child's program: this package from where the watch loaded it (argv[1]: on the path after
# the standard library, as in the watch, so that nothing there shadows it), its answer to the
# descriptor argv[2].
_START = (
    "import sys; sys.argv[1] in sys.path or sys.path.append(sys.argv[1]); "
    "from phoenix_backup.ops.watch_child import main; main(int(sys.argv[2]))"
)


def _package_root() -> str:
    """The directory `phoenix_backup` was imported from (site-packages, a source tree, a zipapp)."""
    import phoenix_backup

    return os.path.dirname(os.path.dirname(os.path.abspath(phoenix_backup.__file__)))


@dataclass
class SnapshotRequest:
    """What the child needs to take a snapshot: `secrets` None for a machine that backs up a
    write-only repository (the child loads the write key from this user's store, as the watch did)."""

    cfg: Config
    env: dict[str, str]
    target: str  # the first target's name (the repository the watch writes)
    config_raw: bytes  # the repository's config as the watch opened it: the child writes only under it
    secrets: MasterSecrets | None = field(repr=False)
    identities: tuple[str, ...] = field(repr=False)
    entries: list[Entry] | None  # None: every file the config selects, databases aside (the files' snapshot)
    scope: str
    tags: tuple[str, ...]
    parent_scopes: tuple[str, ...]
    replicas: tuple[str, ...]  # enabled targets the snapshot is copied to afterwards
    base: bool = False  # a base: its own page state, integrity checks recorded, each database's SHA-256
    # The watch's Phoenix: the child runs what is installed now, which an upgrade may have replaced.
    version: str = field(default_factory=lambda: __version__)


@dataclass
class SnapshotOutcome:
    id: str | None = None
    sha256: dict[str, str] = field(default_factory=dict)  # logical path -> SHA-256 of the copy in the base
    failed: dict[str, str] = field(default_factory=dict)  # logical path -> why it is not in the base
    integrity_checked: dict[str, str] = field(default_factory=dict)  # as BackupResult's
    replicas: dict[str, str | None] = field(default_factory=dict)  # target -> None (caught up) or the error
    notices: list[str] = field(default_factory=list)
    error: PhoenixError | None = None


def secrets_of(repo: Repository) -> tuple[MasterSecrets | None, tuple[str, ...]]:
    """What opens `repo` again in the child: its master secrets (None on a machine that backs up a
    write-only repository: the write key is in this user's store), and its age identities."""
    from phoenix_backup.repo.writer import WriterRepository

    secrets = None if isinstance(repo, WriterRepository) else repo.secrets
    return secrets, repo.keyring.identities if repo.keyring is not None else ()


@dataclass
class Stopping:
    """How the watch asks a snapshot to end: `asked()` once it is stopping (a Ctrl-C, SIGTERM): a
    child that still works is waited for, saying so once through `say`; `abandon()` at a second
    one: the child (and the git it waits on) is killed at once."""

    asked: Callable[[], bool] = lambda: False
    abandon: Callable[[], bool] = lambda: False
    say: Callable[[str], None] = lambda _m: None


def take_snapshot(
    request: SnapshotRequest, between: Callable[[], None] = lambda: None, stopping: Stopping | None = None
) -> SnapshotOutcome:
    """Run the child and return what it gave; SourceError when it ended without saying, was
    killed for falling silent (STALL_SECONDS, or STOP_GRACE_SECONDS once the watch is stopping),
    or was abandoned (`Stopping`). `between` is called about every BEAT_SECONDS while the child
    works."""
    stopping = stopping or Stopping()
    payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
    with tempfile.TemporaryFile() as err:
        # The answer comes through a pipe of its own: what a module prints to standard output
        # (a library's banner, a `sitecustomize`) goes with the errors, never into the answer.
        # `-P` and the directory this package was loaded from: the child runs this code, never a
        # `phoenix_backup` in the working directory (`-m` would import that one).
        answer_r, answer_w = os.pipe()
        try:
            # A process group of its own: a Ctrl-C at the terminal is the watch's (a git push the
            # child waits on is not cut by it), and a kill reaches the git it started too.
            proc = subprocess.Popen(
                [sys.executable, "-P", "-c", _START, _package_root(), str(answer_w)],
                stdin=subprocess.PIPE,
                stdout=err,
                stderr=err,
                close_fds=True,
                pass_fds=(answer_w,),
                process_group=0,
            )
        except OSError as exc:
            os.close(answer_r)
            raise SourceError(
                f"cannot start a process for the snapshot ({exc.strerror or exc}); free memory, then start "
                "`phx watch` again"
            ) from exc
        finally:
            os.close(answer_w)
        assert proc.stdin is not None
        _RUNNING.add(proc.pid)
        hung: str | None = None
        try:
            try:
                proc.stdin.write(_LENGTH.pack(len(payload)) + payload)
                proc.stdin.flush()
            except OSError:
                pass  # it ended at once: said below
            raw, hung = _answer(answer_r, proc, between, stopping)
        finally:
            os.close(answer_r)
            # The child ends when this end closes (`_end_with_parent`): after its answer, or now.
            proc.stdin.close()
            if hung is not None:
                kill_group(proc.pid)  # the child and what it started (git): its process group
            code = proc.wait()
            _RUNNING.discard(proc.pid)
        if hung == _ABANDONED:
            raise SourceError(
                "its git push was abandoned at a second Ctrl-C; the snapshot is in the first target and `phx sync` "
                "pushes it"
            )
        if hung is not None:
            raise SourceError(f"the process taking the snapshot {hung}; it was killed and nothing of it is used")
        if code == 0 and raw:
            try:
                outcome = pickle.loads(raw)
            except Exception:  # whatever it was, it is not an answer
                outcome = None
            if isinstance(outcome, SnapshotOutcome):
                return outcome
            code = 1
        err.seek(0)
        lines = [line.strip() for line in err.read().decode(errors="replace").splitlines() if line.strip()]
    how = f"was killed by signal {-code}" if code < 0 else f"ended with exit code {code}"
    said = f": {lines[-1]}" if lines else ""
    raise SourceError(f"the process taking the snapshot {how}{said}; nothing of it is used")


_ABANDONED = "was abandoned"
# The children running now (each the leader of its process group): see `kill_children`.
_RUNNING: set[int] = set()


def kill_children() -> None:
    """SIGKILL to every snapshot child running now and what it started (git): for a watch about to
    end at once (its terminal hung up). In process groups of their own, they get no signal the
    terminal sends, and a child's end (PR_SET_PDEATHSIG) would leave its git pushing on its own."""
    for pid in list(_RUNNING):
        kill_group(pid)


_SAY_AFTER = 3 * BEAT_SECONDS


def _answer(
    fd: int, proc: subprocess.Popen[bytes], between: Callable[[], None], stopping: Stopping
) -> tuple[bytes, str | None]:
    """The child's answer (empty when it ended without one), read while calling `between`; or
    why it is taken for hung or abandoned (then the answer is empty)."""
    beat = time.monotonic()
    buf = bytearray()
    answering = False
    waiting = False  # the last heartbeat was the child's wait on a process it started (git)
    said: set[bool] = set()
    asked_at: float | None = None
    while True:
        if stopping.asked() and not answering:
            if stopping.abandon():
                return b"", _ABANDONED
            now = time.monotonic()
            asked_at = now if asked_at is None else asked_at
            # A child still working (it beats): said once what it is waited for, a wait on git at
            # once, other work after a few beats (the push may be about to start).
            if waiting not in said and now - beat < STOP_GRACE_SECONDS and (waiting or now - asked_at >= _SAY_AFTER):
                said.add(waiting)
                stopping.say(
                    f"waiting for the snapshot's git push (pid {proc.pid}) to end, at most git's own 30-minute "
                    "timeout; the snapshot is already in the first target; Ctrl-C again abandons the push "
                    "(`phx sync` pushes it later)"
                    if waiting
                    else f"waiting for the snapshot in progress (pid {proc.pid}) to end; Ctrl-C again abandons it"
                )
        ready, _w, _x = select.select([fd], [], [], BEAT_SECONDS)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return (bytes(buf) if answering else b""), None
            beat = time.monotonic()
            if answering:
                buf += chunk
            elif ANSWER in chunk:
                answering = True
                buf += chunk[chunk.index(ANSWER) + 1 :]
            else:
                waiting = chunk.endswith(WAIT)
            continue
        silent = time.monotonic() - beat
        if answering:
            pass  # the answer is on its way: the child is writing it
        elif silent >= STALL_SECONDS:
            return b"", (
                f"gave no sign of work for {silent:.0f} s (stopped or deadlocked: pid {proc.pid} used no processor "
                "time, no thread of it was woken, it waited on no running process)"
            )
        elif stopping.asked() and silent >= STOP_GRACE_SECONDS:
            return b"", f"gave no sign of work for {silent:.0f} s when the watch was asked to stop"
        between()


# -- the child -------------------------------------------------------------------------------


def _open(request: SnapshotRequest, notices: list[str]) -> Repository:
    """The watch's repository, opened with the secrets it was given (no passphrase asked again):
    only while its config is still the one the watch opened (else a `phx key rotate` ran)."""
    from phoenix_backup.ops.context import Environment, compressor_for, target_backend
    from phoenix_backup.repo.writeonly import store_root
    from phoenix_backup.repo.writer import WriterRepository

    envx = Environment(env=request.env, notice=notices.append)
    backend = target_backend(request.cfg, envx, request.target)
    try:
        config = Repository.read_config(backend)
        if request.config_raw and config.raw != request.config_raw:
            raise SourceError(
                f"the repository at {backend.location} changed its config while the watch ran (`phx key rotate`, "
                "an upgrade); stop `phx watch` and start it again"
            )
        kwargs = {"compression": compressor_for(request.cfg), "notice": notices.append}
        if request.secrets is None:
            return WriterRepository.open_writer(backend, config, store_root(request.env), **kwargs)
        return Repository(backend, config, request.secrets, identities=request.identities, **kwargs)  # type: ignore[arg-type]
    except BaseException:
        backend.close()
        raise


def _snapshot(request: SnapshotRequest) -> SnapshotOutcome:
    import time

    from phoenix_backup.ops.backup import record_checks, snapshot_entries
    from phoenix_backup.ops.context import Environment
    from phoenix_backup.ops.selection import select_sources
    from phoenix_backup.ops.sync import replicate_all
    from phoenix_backup.repo import checks
    from phoenix_backup.repo.walker import walk_tree

    out = SnapshotOutcome()
    if getattr(request, "version", None) != __version__:
        out.error = SourceError(
            f"Phoenix was upgraded to {__version__} while `phx watch` "
            f"({getattr(request, 'version', 'an older version')}) ran; stop `phx watch` and start it again "
            "(it goes on where it stopped)"
        )
        return out
    envx = Environment(env=request.env, notice=out.notices.append)
    try:
        entries = request.entries
        if entries is None:
            _layout, sel = select_sources(request.cfg, "full", envx)
            entries = [e for e in sel.entries.values() if e.kind != "sqlite"]
        repo = _open(request, out.notices)
        try:
            started = time.time()
            with repo.lock(exclusive=False, command="watch"):
                result = snapshot_entries(
                    repo,
                    request.cfg,
                    envx,
                    entries,
                    absent=(),
                    scope=request.scope,
                    tags=request.tags,
                    parent_scopes=request.parent_scopes,
                    keep_page_state=request.base,
                )
            assert result.id is not None
            out.id = result.id
            out.failed = {i["path"]: i["error"] for i in result.incomplete}
            if request.base:
                # A full integrity check the base ran (its cadence was due) counts as a backup's would.
                record_checks(envx, result, started, "watch")
                checks.record_snapshot(repo, result.id, result.integrity_checked, "watch")
                out.integrity_checked = dict(result.integrity_checked)
                wanted = {e.logical for e in entries}
                for logical, node in walk_tree(repo, repo.load_snapshot(result.id).tree):
                    if logical in wanted and node.sha256:
                        out.sha256[logical] = node.sha256
            # The snapshot on every replica (a base before any segment names it).
            for name in request.replicas:
                report = replicate_all(repo, request.cfg, envx, ran="watch", only=name).get(name)
                out.replicas[name] = None if report is not None and report.ok else (report.error if report else "")
        finally:
            repo.close()
    except PhoenixError as exc:
        out.error = exc
    return out


def _read(fd: int, n: int) -> bytes:
    """`n` bytes from `fd` (fewer at its end). The pipe is read unbuffered: a buffered reader's lock,
    held by `_end_with_parent`'s thread, would abort the interpreter's shutdown."""
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _end_with_parent(fd: int, done: threading.Event) -> None:
    """End this process when the watch's end of the pipe closes before the answer (it was killed)."""
    while os.read(fd, 4096):
        pass
    if not done.is_set():
        if os.getpgid(0) == os.getpid():  # the leader of its own group (`take_snapshot`): git with it
            os.killpg(0, signal.SIGKILL)
        os._exit(1)


def _beat(fd: int, lock: threading.Lock, done: threading.Event) -> None:
    """Send a heartbeat each second in which this process showed a sign of work (see the
    module's docstring and `_work`): a stopped or deadlocked process shows none."""
    seen = _work()
    while not done.wait(BEAT_SECONDS):
        now = _work()
        kind = BEAT
        if now == seen:
            if not _waits_on_a_process():
                continue
            kind = WAIT
        seen = now
        with lock:
            if done.is_set():
                return
            try:
                os.write(fd, kind)
            except OSError:
                return


# Threads that run however the snapshot fares: the heartbeat (it uses a little processor time and
# reads /proc each second, even in a deadlocked process), the repository lock's refresh (every
# REFRESH_SECONDS, as long as the lock is held), and the wait for the watch's end of the pipe.
_KEEPALIVE = ("phx-heartbeat", "phx-lock-refresh", "phx-parent")


def _work() -> tuple[int, ...]:
    """What this process's threads did so far, those of _KEEPALIVE left out: processor
    clock ticks, and the times a thread waited and was woken (a slow upload's socket takes a few
    bytes, a lock wait polls: little processor time, but a thread that runs; a deadlocked one is
    never woken). Not the bytes of /proc/PID/io: a non-dumpable process of an ordinary user may
    not read its own. Where there is no /proc: the process's processor time."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return (time.process_time_ns(),)
    skip = {str(t.native_id) for t in threading.enumerate() if t.name in _KEEPALIVE}
    ticks = switches = 0
    for task in tasks:
        if task in skip:
            continue
        try:
            with open(f"/proc/self/task/{task}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
            with open(f"/proc/self/task/{task}/status", "rb") as f:
                for line in f:
                    if line.startswith((b"voluntary_ctxt_switches:", b"nonvoluntary_ctxt_switches:")):
                        switches += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return (ticks, switches)


def _waits_on_a_process() -> bool:
    """Whether a process this one started (git pushing to a slow remote) is
    still running: this process then waits on it, honestly, using nothing itself; such a wait
    has a timeout of its own (git's). A stopped one (SIGSTOP) does not count."""
    parents: dict[int, list[tuple[int, bytes]]] = {}
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
            parents.setdefault(int(fields[1]), []).append((pid, fields[0]))
        except (OSError, ValueError, IndexError):
            continue
    todo = [os.getpid()]
    while todo:
        for pid, state in parents.get(todo.pop(), []):
            if state not in (b"T", b"t", b"Z", b"X", b"x"):
                return True
            todo.append(pid)
    return False


def _die_with_parent() -> None:
    """SIGKILL to this process when the watch ends, however it ends: a child stopped (SIGSTOP) when
    the watch is killed cannot see its pipe close, and would stay, stopped, for good, holding the
    secrets and the repository's lock (which no one could then take as stale)."""
    set_process_option(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # A watch that ended before that is seen at the request (its pipe is closed: no request).


def main(answer_fd: int) -> None:
    limit_malloc_arenas()  # a snapshot's threads as `phx backup`'s: two arenas, the mmap threshold fixed
    _die_with_parent()
    hide_process_memory()  # before the secrets arrive
    # The watch decides when to stop: a Ctrl-C or SIGTERM to the group lets the snapshot finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.set_inheritable(answer_fd, False)  # a process this one starts (git) must not hold the answer open
    head = _read(0, _LENGTH.size)
    if len(head) != _LENGTH.size:
        raise SystemExit("phx: error: this program is run by `phx watch`, which hands it its request")
    request = pickle.loads(_read(0, _LENGTH.unpack(head)[0]))
    assert isinstance(request, SnapshotRequest)
    done = threading.Event()
    answer_lock = threading.Lock()
    threading.Thread(target=_end_with_parent, args=(0, done), name="phx-parent", daemon=True).start()
    threading.Thread(target=_beat, args=(answer_fd, answer_lock, done), name="phx-heartbeat", daemon=True).start()
    outcome = _snapshot(request)
    try:
        raw = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(raw)
    except Exception:  # an error that does not survive the trip: its sentence does
        assert outcome.error is not None
        outcome.error = SourceError(str(outcome.error))
        raw = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    with answer_lock:
        done.set()
    with os.fdopen(answer_fd, "wb") as answer:
        answer.write(ANSWER + raw)
