"""What only the Git backend does, against real `git` and bare repositories on disk: a commit per
checkpoint, pushes, `.gitattributes`, locks kept out of history, an empty remote, a fresh clone
reading what was pushed, and clear errors for a missing remote and a rejected push."""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto_support import bare_repo, git
from storage_support import require_git

from phoenix_backup.errors import StorageError, TargetAuthError, TargetUnreachable
from phoenix_backup.storage.git import GITATTRIBUTES, GitBackend, clone_dir

PACK = "data/ab/" + "ab" * 32
SNAP = "snapshots/" + "22" * 32
LOCK = "locks/" + "44" * 16

pytestmark = pytest.mark.usefixtures("_git")


@pytest.fixture
def _git() -> None:
    require_git()


def _backend(tmp_path: Path, remote: Path, name: str = "clone", auto_commit: bool = True) -> GitBackend:
    return GitBackend(
        str(remote), "main", auto_commit, tmp_path / name, {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    )


def _published_once(tmp_path: Path) -> tuple[Path, GitBackend]:
    """A bare remote and a Git target that created it and published one commit ("first", SNAP)."""
    remote = bare_repo(tmp_path / "remote.git")
    b = _backend(tmp_path, remote)
    b.create()
    b.write(SNAP, b"one")
    b.checkpoint("first")
    b.publish()
    return remote, b


def _remote_files(remote: Path) -> list[str]:
    return sorted(git("ls-tree", "-r", "--name-only", "main", cwd=remote).split())


def test_empty_remote_then_one_commit_per_checkpoint_pushed(tmp_path: Path) -> None:
    remote = bare_repo(tmp_path / "remote.git")
    b = _backend(tmp_path, remote)
    b.create()
    b.write("config", b"{}", exclusive=True)
    b.write(PACK, b"pack", cold=True)
    b.write(LOCK, b"lock")
    b.write(SNAP, b"snap")
    assert b.checkpoint("phoenix snapshot 2026-03-15-14-30 (abcd1234)")
    b.publish()
    log = git("log", "--format=%s", "main", cwd=remote).splitlines()
    assert log == ["phoenix snapshot 2026-03-15-14-30 (abcd1234)"]
    files = _remote_files(remote)
    assert files == sorted([".gitattributes", ".gitignore", "config", PACK, SNAP]), "locks are never committed"
    attrs = git("show", "main:.gitattributes", cwd=remote)
    assert attrs == GITATTRIBUTES and "data/** binary -delta" in attrs
    assert git("check-attr", "delta", "--", PACK, cwd=b.workdir).strip().endswith("delta: unset")


def test_git_lock_files_a_killed_git_left_stop_no_later_commit(tmp_path: Path) -> None:
    """A backup killed (SIGKILL, with its git) during `git add` left `.git/index.lock` in the clone:
    every later backup and sync to the target failed ("index.lock: File exists"). The clone's lock,
    which every git run there holds, is taken first; git's lock files found then are stale."""
    remote = bare_repo(tmp_path / "remote.git")
    b = _backend(tmp_path, remote)
    b.create()
    b.write("config", b"{}", exclusive=True)
    assert b.checkpoint("first")
    for stale in (".git/index.lock", ".git/HEAD.lock", ".git/refs/heads/main.lock"):
        (b.workdir / stale).write_bytes(b"")
    b.write(SNAP, b"snap")
    assert b.checkpoint("second")
    b.publish()
    assert git("log", "--format=%s", "main", cwd=remote).splitlines() == ["second", "first"]


def test_a_git_lock_file_a_running_git_of_another_process_holds_is_left(tmp_path: Path) -> None:
    """A git someone else runs in the clone (`git commit -a` waiting in its editor holds
    `.git/index.lock`) does not hold Phoenix's lock: its lock file is no stale one. It was deleted,
    Phoenix's commit went ahead under it and the other git then renamed its index over Phoenix's.
    Now the checkpoint fails naming the lock file and leaves it; the other git finishes."""
    remote = bare_repo(tmp_path / "remote.git")
    b = _backend(tmp_path, remote)
    b.create()
    b.write("config", b"{}", exclusive=True)
    assert b.checkpoint("first")
    (b.workdir / "config").write_bytes(b'{"a": 1}')
    stop = tmp_path / "stop"
    editor = f"sh -c 'while [ ! -e {stop} ]; do sleep 0.02; done; echo theirs > \"$1\"' -"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_EDITOR": editor}
    theirs = subprocess.Popen(["git", "commit", "-qa"], cwd=b.workdir, env=env)
    try:
        lock = b.workdir / ".git/index.lock"
        for _ in range(250):
            if lock.exists():
                break
            time.sleep(0.02)
        assert lock.exists()
        b.write(SNAP, b"snap")
        with pytest.raises(StorageError, match=r"index\.lock"):
            b.checkpoint("second")
        assert lock.exists()
    finally:
        stop.touch()
        assert theirs.wait(10) == 0
    assert git("log", "--format=%s", cwd=b.workdir).splitlines() == ["theirs", "first"]


def test_a_git_run_outside_the_clone_lock_does_not_take_it_on(tmp_path: Path) -> None:
    """Only a git run under the clone's lock inherits it: `unpublished` runs its git without it,
    and while another thread's commit held it that git got the holder's descriptor, so a process
    it left (as a detached `git gc`) kept the clone locked after the commit, and every later
    backup waited for it (or git got a descriptor closed meanwhile, or reused for another file)."""
    remote = bare_repo(tmp_path / "remote.git")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stop, inside, left = tmp_path / "stop", tmp_path / "inside", tmp_path / "left.pid"
    (bin_dir / "git").write_text(
        "#!/bin/sh\n"
        f'case "$*" in *rev-list*) sleep 3 </dev/null >/dev/null 2>&1 & echo $! > {left};; esac\n'
        f'case "$*" in "commit -q"*) touch {inside}; while [ ! -e {stop} ]; do sleep 0.02; done;; esac\n'
        'exec /usr/bin/git "$@"\n'
    )
    (bin_dir / "git").chmod(0o755)
    b = GitBackend(
        str(remote), "main", True, tmp_path / "clone", {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    )
    b.create()
    b.write("config", b"{}", exclusive=True)
    commit = threading.Thread(target=b.checkpoint, args=("first",))
    commit.start()
    try:
        for _ in range(250):
            if inside.exists():
                break
            time.sleep(0.02)
        assert b.unpublished() >= 0
    finally:
        stop.touch()
        commit.join(10)
    fd = os.open(b.workdir.parent / f"{b.workdir.name}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: the process left holds it
    finally:
        os.close(fd)
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(left.read_text()), signal.SIGKILL)


def test_create_again_in_a_clone_where_init_was_killed_while_it_wrote_the_config(tmp_path: Path) -> None:
    """`phx init` of a Git first target killed before the config's temporary file was renamed:
    init again starts over in that clone (its key slot unused), as after a kill at any other point."""
    remote = bare_repo(tmp_path / "remote.git")
    b = _backend(tmp_path, remote)
    b.create()
    b.write("keys/0123456789abcdef", b"slot of secrets never used", exclusive=True)
    (b.workdir / ".tmp-config.c7a82c8b").write_bytes(b'{"half": ')
    again = _backend(tmp_path, remote)
    again.create()
    again.write("config", b"{}", exclusive=True)
    assert not (b.workdir / ".tmp-config.c7a82c8b").exists()
    assert list(again.list("keys/")) == []


def test_a_fresh_clone_reads_what_was_pushed(tmp_path: Path) -> None:
    remote = bare_repo(tmp_path / "remote.git")
    first = _backend(tmp_path, remote, "one")
    first.create()
    first.write("config", b"cfg")
    first.write(PACK, b"0123456789")
    first.checkpoint("phoenix snapshot a")
    first.publish()
    second = _backend(tmp_path, remote, "two")  # another machine, or the data dir lost
    assert second.exists()
    assert second.read_range(PACK, 2, 3) == b"234"
    assert [i.name for i in second.list("data/")] == [PACK]


def test_history_is_only_appended(tmp_path: Path) -> None:
    remote, b = _published_once(tmp_path)
    b.delete(SNAP)  # what prune does: the file goes, its history stays
    b.checkpoint("second")
    b.publish()
    assert git("log", "--format=%s", "main", cwd=remote).splitlines() == ["second", "first"]
    assert git("show", f"main~1:{SNAP}", cwd=remote) == "one"


def test_without_auto_commit_commits_stay_in_the_clone(tmp_path: Path) -> None:
    remote = bare_repo(tmp_path / "remote.git")
    b = _backend(tmp_path, remote, auto_commit=False)
    b.create()
    b.write(SNAP, b"s")
    assert b.checkpoint("phoenix snapshot x")
    b.publish()
    assert git("log", "--format=%s", cwd=b.workdir).splitlines() == ["phoenix snapshot x"]
    assert git("branch", "--list", cwd=remote).strip() == "", "nothing was pushed"


def test_missing_remote_is_a_clear_error(tmp_path: Path) -> None:
    b = _backend(tmp_path, tmp_path / "no-such-remote.git")
    with pytest.raises(StorageError, match="no Git repository") as err:
        b.exists()
    assert "targets.git.repo" in str(err.value)
    assert not (tmp_path / "clone").exists(), "a failed first clone leaves nothing half-made"


def test_rejected_push_is_a_clear_error(tmp_path: Path) -> None:
    remote = bare_repo(tmp_path / "remote.git", reject_pushes=True)
    b = _backend(tmp_path, remote)
    b.create()
    b.write(SNAP, b"s")
    b.checkpoint("phoenix snapshot x")
    with pytest.raises(StorageError, match="rejected the push of branch main") as err:
        b.publish()
    assert "never force-pushes" in str(err.value)


def test_a_push_losing_the_race_to_another_clones_push_is_merged_and_pushed_again(tmp_path: Path) -> None:
    """Two machines syncing to one remote at the same moment: the push whose ref update lost the
    race is refused with "cannot lock ref 'refs/heads/main': is at X but expected Y" (seen with two
    syncs at once, 3 of 4 rounds). It failed the sync, blaming branch protection and write access;
    the remote moved on, like "fetch first": merged, pushed again."""
    remote, b = _published_once(tmp_path)
    hook = remote / "hooks" / "pre-receive"
    once = tmp_path / "raced"
    hook.write_text(
        f"#!/bin/sh\nif [ ! -e {once} ]; then touch {once}; echo \"error: cannot lock ref 'refs/heads/main': "
        'is at 37a9802e784f2fc8b3c489d4da0617225423d072 but expected bbc26ea17adfbeb2b0278bea257af556cbfb109e" >&2; '
        "exit 1; fi\n"
    )
    hook.chmod(0o755)
    b.write(PACK, b"two")
    b.checkpoint("second")
    b.publish()
    assert git("log", "--format=%s", "main", cwd=remote).splitlines() == ["second", "first"]


def test_credentials_in_the_url_are_never_shown(tmp_path: Path) -> None:
    url = "https://phx-user:s3cr3t-t0ken@127.0.0.1:9/agent-backup.git"
    b = GitBackend(url, "main", True, tmp_path / "c", {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert "s3cr3t-t0ken" not in b.location
    with pytest.raises(StorageError) as err:
        b.exists()
    assert "s3cr3t-t0ken" not in str(err.value)
    assert "127.0.0.1" in str(err.value)


def test_clone_dir_follows_phx_data_dir(tmp_path: Path) -> None:
    path = clone_dir({"PHX_DATA_DIR": str(tmp_path)}, "git@example.com:me/b.git", "main")
    assert path.parent == tmp_path / "git"
    assert clone_dir({"PHX_DATA_DIR": str(tmp_path)}, "git@example.com:me/b.git", "other") != path


class _AuthRequired(http.server.BaseHTTPRequestHandler):
    """An HTTP Git host that refuses every request without valid credentials (there are none)."""

    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def auth_host() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AuthRequired)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("userinfo", ["", "phx-user:wr0ng-pa55w0rd@"])
def test_authentication_failure_is_a_clear_error(tmp_path: Path, auth_host: str, userinfo: str) -> None:
    url = f"http://{userinfo}{auth_host}/me/agent-backup.git"
    b = GitBackend(url, "main", True, tmp_path / "c", {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    with pytest.raises(TargetAuthError, match="refused authentication") as err:
        b.exists()
    message = str(err.value)
    assert "SSH key, a credential helper or a token" in message
    assert "wr0ng-pa55w0rd" not in message and auth_host in message


@pytest.mark.parametrize(
    ("stderr", "kind", "words"),
    [
        # A port holding 403: a remote that stalled was named as refusing authentication (a CI run).
        (
            "fatal: unable to access 'http://127.0.0.1:40365/remote.git/': Operation too slow. "
            "Less than 1 bytes/sec transferred the last 1 seconds",
            TargetUnreachable,
            "cannot reach the Git remote",
        ),
        (
            "remote: Repository not found.\nfatal: repository 'https://git.example/team4011/agent.git/' not found",
            StorageError,
            "there is no Git repository",
        ),
        (
            "fatal: unable to access 'https://git.example/me/agent.git/': The requested URL returned error: 403",
            TargetAuthError,
            "refused authentication",
        ),
        (
            "fatal: Authentication failed for 'https://git.example/me/agent.git/'",
            TargetAuthError,
            "refused authentication",
        ),
    ],
)
def test_a_failure_is_named_by_what_git_says_not_by_digits_in_the_url(
    tmp_path: Path, stderr: str, kind: type[StorageError], words: str
) -> None:
    b = GitBackend("https://git.example/me/agent.git", "main", True, tmp_path / "c", {"PATH": "/usr/bin:/bin"})
    error = b._error("fetch", stderr)
    assert type(error) is kind and words in str(error), error
