"""A Git target made append-only under one spelling stays append-only under every other.

The record (`<data dir>/append-only.json`) used to key a Git target on its URL as written (an
absolute path resolved): `/srv/repo.git/`, `file:///srv/repo.git`, `../srv/repo.git`, or a remote
with another case, port, user or `.git` ending was another storage, and a config spelling it so
could forget and prune what an append-only config had kept. Written as that config's author."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from phoenix_backup.config import Config
from phoenix_backup.config.parse import parse_config
from phoenix_backup.storage.git import clone_dir, storage_identity
from phoenix_backup.storage.targets import APPEND_ONLY_MARKS, remember_append_only


def git_config(repo: str, append_only: bool, branch: str = "main") -> Config:
    data: dict[str, Any] = {
        "workspace": "/w",
        "backupDir": "/b",
        "targets": {
            "local": {"enabled": False},
            "git": {"enabled": True, "repo": repo, "branch": branch, "appendOnly": append_only},
        },
    }
    return parse_config(data, env={"HOME": "/home/agent"})


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"PHX_DATA_DIR": str(tmp_path / "data"), "HOME": "/home/agent"}


@pytest.fixture
def srv(tmp_path: Path) -> Path:
    """A bare repository, a symlink to it and a non-bare one."""
    srv = tmp_path / "srv"
    srv.mkdir()
    subprocess.run(["git", "init", "-q", "--bare", str(srv / "repo.git")], check=True)
    (srv / "link.git").symlink_to(srv / "repo.git")
    subprocess.run(["git", "init", "-q", str(srv / "work")], check=True)
    return srv


def still_append_only(marked: str, other: str, env: dict[str, str], branch: str = "main") -> bool:
    """Whether `other`, in a config that does not say appendOnly, is append-only once `marked`
    was used append-only."""
    assert remember_append_only(git_config(marked, True), env).targets.append_only("git")
    return remember_append_only(git_config(other, False, branch), env).targets.append_only("git")


def local_spellings(srv: Path, env: dict[str, str]) -> list[str]:
    repo = srv / "repo.git"
    clone = clone_dir(env, "x", "main")  # git runs in the clone, below <data dir>/git/
    return [
        f"{repo}/",
        f"{repo}//",
        f"file://{repo}",
        f"file://{repo}/",
        str(srv / "link.git"),
        str(srv / "repo"),  # git adds .git itself
        f"{srv}/../{srv.name}/repo.git",
        os.path.relpath(repo, clone),
    ]


def test_every_spelling_of_a_local_git_repository_stays_append_only(srv: Path, env: dict[str, str]) -> None:
    escaped = [s for s in local_spellings(srv, env) if not still_append_only(str(srv / "repo.git"), s, env)]
    assert escaped == [], f"spellings that escaped the append-only record: {escaped}"


def test_a_spelling_made_append_only_covers_the_plain_path(srv: Path, env: dict[str, str]) -> None:
    assert still_append_only(f"file://{srv / 'link.git'}/", str(srv / "repo.git"), env)
    assert still_append_only(str(srv / "work"), f"{srv / 'work'}/.git", env)


REMOTES = [
    "git@github.com:me/agent-backup.git",
    "git@GitHub.COM:me/agent-backup",
    "git@github.com:me/agent-backup.git/",
    "github.com:me/agent-backup.git",
    "ssh://git@github.com/~/me/agent-backup.git",
    "ssh://git@github.com:22/~/me/agent-backup",
    "ssh://other@github.com/me/agent-backup.git",
    "git+ssh://git@github.com/me/agent-backup.git",
    "https://github.com/me/agent-backup.git",
    "https://github.com:443/me/agent-backup/",
    "https://user:token@github.com/me//agent-backup.git",
    "http://github.com/me/agent-backup",
    "git://github.com/me/agent-backup.git",
]


@pytest.mark.parametrize("marked", [REMOTES[0], REMOTES[-1]])
def test_every_spelling_of_a_remote_stays_append_only(marked: str, env: dict[str, str]) -> None:
    escaped = [s for s in REMOTES if not still_append_only(marked, s, env)]
    assert escaped == [], f"spellings that escaped the append-only record: {escaped}"
    # Another branch of the same repository is the same storage too.
    assert still_append_only(marked, REMOTES[1], env, branch="backups")


def test_other_repositories_are_not_made_append_only(srv: Path, env: dict[str, str]) -> None:
    subprocess.run(["git", "init", "-q", "--bare", str(srv / "other.git")], check=True)
    assert not still_append_only(str(srv / "repo.git"), str(srv / "other.git"), env)
    assert not still_append_only(REMOTES[0], "git@github.com:me/other-backup.git", env)
    assert not still_append_only(REMOTES[0], "git@gitlab.com:me/agent-backup.git", env)
    # A web path has no home folder: /home/team/ there is a group, not a user's home.
    assert not still_append_only("https://git.example.org/r.git", "https://git.example.org/home/team/r.git", env)


def test_a_record_written_by_an_older_phoenix_is_read_in_todays_spelling(srv: Path, env: dict[str, str]) -> None:
    """Older records kept a remote as written; their entry still covers every spelling."""
    data = Path(env["PHX_DATA_DIR"])
    data.mkdir()
    old = {"git:git@github.com:me/agent-backup.git": {"target": "git", "since": "2026-11-01T00:00:00+00:00"}}
    (data / APPEND_ONLY_MARKS).write_text(json.dumps({"storage": old}))
    cfg = remember_append_only(git_config("https://github.com/me/agent-backup", False), env)
    assert cfg.targets.append_only("git")
    assert "git-remote:github.com/me/agent-backup" not in (data / APPEND_ONLY_MARKS).read_text()
    # The record keeps no secret of a URL either.
    remember_append_only(git_config("https://user:s3cr3t-token@example.org/me/r.git", True), env)
    assert "s3cr3t-token" not in (data / APPEND_ONLY_MARKS).read_text()


# Spellings git and ssh read as the same repository that an earlier canonical form kept apart:
# the scp form with a port in brackets, a user name holding `@` (ssh splits at the last one), the
# login user's home spelt `~git/`, `/home/git/` or `../git/`, and the case of a host whose paths
# ignore it (GitHub, GitLab).
MORE_REMOTES = [
    "[github.com:22]:me/agent-backup.git",
    "git@[github.com:22]:me/agent-backup.git",
    "other@git@github.com:me/agent-backup.git",
    "ssh://git@github.com/~git/me/agent-backup.git",
    "git@github.com:~git/me/agent-backup.git",
    "git@github.com:/home/git/me/agent-backup.git",
    "git@github.com:../git/me/agent-backup.git",
    "https://github.com/Me/Agent-Backup.git",
    "git@github.com:ME/agent-backup",
    "ssh://git@github.com//home/git/me/agent-backup.git",
    "https::https://github.com/me/agent-backup.git",  # git's `<transport>::<address>`
    "http::https://github.com/me/agent-backup",
]


def test_ports_users_homes_and_case_do_not_escape(env: dict[str, str]) -> None:
    escaped = [s for s in MORE_REMOTES if not still_append_only(REMOTES[0], s, env)]
    assert escaped == [], f"spellings that escaped the append-only record: {escaped}"


def test_an_ip_address_is_one_host_however_it_is_written(env: dict[str, str]) -> None:
    others = ["git@[0:0:0:0:0:0:0:1]:me/r.git", "ssh://git@[0::1]:22/me/r", "[::0001]:me/r"]
    escaped = [s for s in others if not still_append_only("git@[::1]:me/r.git", s, env)]
    assert escaped == [], f"spellings that escaped the append-only record: {escaped}"
    assert not still_append_only("git@[::1]:me/r.git", "git@[::2]:me/r.git", env)
    # IPv4 as the resolver reads it (inet_aton: 127.1, hexadecimal, one number), or mapped in IPv6.
    others = ["git@127.1:me/r.git", "ssh://0x7f000001/me/r", "git@2130706433:me/r", "git@[::ffff:127.0.0.1]:me/r"]
    escaped = [s for s in others if not still_append_only("git@127.0.0.1:me/r.git", s, env)]
    assert escaped == [], f"spellings that escaped the append-only record: {escaped}"
    assert not still_append_only("git@127.0.0.1:me/r.git", "git@127.0.0.2:me/r.git", env)


@pytest.mark.parametrize(
    "damage",
    ["deep", "huge", "fifo", "device"],
)
def test_a_hostile_record_fails_closed_without_hanging_or_a_traceback(
    damage: str, tmp_path: Path, env: dict[str, str]
) -> None:
    """Whoever wrote append-only.json (a careless edit, a hostile agent) gets no traceback, no
    hang and no escape: every target counts as append-only until its owner fixes it."""
    data = Path(env["PHX_DATA_DIR"])
    data.mkdir()
    record = data / APPEND_ONLY_MARKS
    if damage == "deep":
        record.write_text('{"storage": ' + "[" * 200_000 + "]" * 200_000 + "}")
    elif damage == "huge":
        with record.open("w") as f:
            f.write('{"storage": {"x": "' + "a" * (2 << 20) + '"}}')  # a record is a few hundred bytes
    elif damage == "fifo":
        os.mkfifo(record)  # opened for reading, it would wait forever for a writer
    else:
        record.symlink_to("/dev/zero")  # read whole, it never ends
    cfg = remember_append_only(git_config(str(tmp_path / "any.git"), False), env)
    assert cfg.targets.append_only("git")


def test_a_plain_folder_beside_the_repository_is_not_what_git_reaches(srv: Path, env: dict[str, str]) -> None:
    """git takes `/srv/repo` to mean `/srv/repo.git` when `/srv/repo` is a folder but no repository."""
    (srv / "repo").mkdir()
    assert still_append_only(str(srv / "repo.git"), str(srv / "repo"), env)
    assert still_append_only(str(srv / "repo.git"), f"{srv / 'repo'}/", env)


def test_a_worktree_and_its_git_dir_are_the_repository_they_share(srv: Path, env: dict[str, str]) -> None:
    """A worktree's `.git` is a file naming a folder under the main repository's `.git/worktrees`;
    its branches are the main repository's, so pushing there rewrites them."""
    work = srv / "work"
    subprocess.run(["git", "-C", str(work), "commit", "-q", "--allow-empty", "-m", "x"], check=True, env=GIT_ENV)
    subprocess.run(["git", "-C", str(work), "worktree", "add", "-q", str(srv / "tree")], check=True, env=GIT_ENV)
    for other in [str(srv / "tree"), f"{srv / 'tree'}/.git", str(work / ".git" / "worktrees" / "tree")]:
        assert still_append_only(str(work), other, env), other
    assert still_append_only(str(srv / "tree"), str(work), env)


def test_a_repository_moved_or_swapped_after_it_was_recorded_stays_append_only(srv: Path, env: dict[str, str]) -> None:
    """Moving the folder (a decoy in its place) or mounting it elsewhere keeps the folder
    itself: it is recorded by what it is, not only where it was."""
    assert still_append_only(str(srv / "repo.git"), str(srv / "repo.git"), env)
    (srv / "link.git").unlink()
    (srv / "repo.git").rename(srv / "moved.git")
    subprocess.run(["git", "init", "-q", "--bare", str(srv / "repo.git")], check=True)  # a decoy in its place
    assert remember_append_only(git_config(str(srv / "moved.git"), False), env).targets.append_only("git")


GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "a",
    "GIT_AUTHOR_EMAIL": "a@example.org",
    "GIT_COMMITTER_NAME": "a",
    "GIT_COMMITTER_EMAIL": "a@example.org",
}


def test_a_path_through_proc_self_cwd_is_taken_from_where_git_runs(srv: Path, env: dict[str, str]) -> None:
    """/proc/self/cwd is the working folder of whoever resolves it: git, in the clone, reaches the
    repository through it, while Phoenix itself, elsewhere, would resolve another folder."""
    relative = os.path.relpath(srv / "repo.git", clone_dir(env, "x", "main"))
    (srv / "here").symlink_to("/proc/self/cwd")  # the same, planted elsewhere
    spellings = [f"/proc/self/cwd/{relative}", f"/proc/thread-self/cwd/{relative}", f"{srv / 'here'}/{relative}"]
    escaped = [s for s in spellings if not still_append_only(str(srv / "repo.git"), s, env)]
    assert escaped == [], f"spellings that escaped the append-only record: {escaped}"


def test_a_path_with_a_double_slash_is_the_same_folder(srv: Path, env: dict[str, str]) -> None:
    """POSIX may read a leading `//` apart, Linux does not: the folder's key is its one real path."""
    repo = srv / "repo.git"
    assert storage_identity(f"/{repo}", srv) == storage_identity(str(repo), srv) == str(repo)
    assert storage_identity(f"file:///{repo}", srv) == str(repo)


def test_two_commands_remembering_at_once_keep_both(
    srv: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two commands (a watch and a backup under another config) that each add a storage to the
    record at the same moment: neither entry is lost to the other's write."""
    import threading
    import time

    from phoenix_backup.storage import targets

    real_write = targets.write_private

    def slow_write(path: Path, data: bytes) -> None:
        time.sleep(0.3)  # both have read the record before either writes
        real_write(path, data)

    monkeypatch.setattr(targets, "write_private", slow_write)
    subprocess.run(["git", "init", "-q", "--bare", str(srv / "other.git")], check=True)
    threads = [
        threading.Thread(target=remember_append_only, args=(git_config(str(srv / name), True), env))
        for name in ("repo.git", "other.git")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.setattr(targets, "write_private", real_write)
    for name in ("repo.git", "other.git"):
        assert remember_append_only(git_config(str(srv / name), False), env).targets.append_only("git"), name
