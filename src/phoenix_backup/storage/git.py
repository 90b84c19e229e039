"""Objects as files in a working clone of a Git repository, one commit per snapshot.

The working clone lives in the platform data dir (not the cache: without `autoCommit` it is the
only copy), one per remote and branch. Objects are plain files at the same names as on every
other target, written like the local target does (temp file, fsync, rename). `checkpoint`
commits what was written (replication calls it after each snapshot object, naming the snapshot)
and `publish` pushes when `autoCommit` is on.

- Locks live in the working tree only (`locks/` is in `.gitignore`): they belong to this clone
  and are never committed, like every target's locks are never copied.
- `.gitattributes` marks every object `binary -delta`: packs are compressed and encrypted, so
  delta compression only costs CPU and memory on both ends. Objects stay far below the 50 MB
  that Git hosts warn about (packs are cut at 8 MiB); a larger object is refused.
- Objects are immutable, so nothing is ever amended or force-pushed: history is never rewritten,
  and for the same reason deleting an object (prune) never frees space in the remote.
- Every `git` runs without a terminal prompt (GIT_TERMINAL_PROMPT=0, ssh in batch mode), so a
  missing credential fails at once with a clear error instead of hanging a scheduled backup.
- A user name and password (or token) in an http(s) or ftp(s) URL never reach git's command line
  (which every local user can read in /proc) nor any file: the clone's remote is the URL without
  them, and git gets them from a credential helper that reads them from its environment, answers
  only for that scheme and host, and ignores "store" (configured through GIT_CONFIG_*, with the
  user's own helpers reset, so none of them saves the token either). A password in an ssh
  address is refused: git would put it on ssh's command line.
- A clone is made in a temporary folder beside its place and renamed there when complete; the
  leftovers of a killed clone are removed by the next one.
- An append-only target (`appendOnly`): a remote that is a bare repository on this machine is set
  to refuse force pushes and branch deletions (`receive.denyNonFastForwards`, `receive.denyDeletes`),
  and a remote branch whose history no longer holds what Phoenix pushed before (it was rewritten)
  stops the push instead of being merged. A Git host's own branch protection does the first for
  remote hosts; Phoenix cannot see it (`protection`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import ipaddress
import math
import os
import posixpath
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from phoenix_backup.dirs import data_dir, make_dirs
from phoenix_backup.errors import (
    ConfigError,
    RepositoryExists,
    StorageError,
    TargetAuthError,
    TargetUnreachable,
    ToolMissing,
)
from phoenix_backup.redaction import redact, redact_url
from phoenix_backup.shell import kill_with_descendants
from phoenix_backup.storage.base import CONFIG_TEMP, FOLDERS, SLOW_LINK, Backend, ObjectInfo, Protection, is_slot_of
from phoenix_backup.storage.local import LocalBackend

# Git hosts warn above 50 MB per file and GitHub refuses above 100 MB.
MAX_OBJECT = 50 * 1000 * 1000
GIT_EMAIL = "phx@phoenix.invalid"  # RFC 2606: a name that can never be anyone's address
NETWORK_TIMEOUT = 1800  # seconds for one fetch or push of a large first commit
LOCAL_TIMEOUT = 600
# Seconds an HTTP(S) transfer may stay below 1 byte/s before git gives up (git's
# GIT_HTTP_LOW_SPEED_TIME, which the environment may set).
HTTP_STALL_SECONDS = 60
_GIT_LOW_SPEED = ("GIT_HTTP_LOW_SPEED_LIMIT", "GIT_HTTP_LOW_SPEED_TIME")
# An ssh remote that goes silent after the handshake is given up after SSH_ALIVE_SECONDS x
# SSH_ALIVE_COUNT (a minute) of unanswered keepalives, instead of holding the git command until
# NETWORK_TIMEOUT: ssh's ServerAliveInterval/ServerAliveCountMax, set only where the user chose
# no ssh command (GIT_SSH_COMMAND, GIT_SSH, core.sshCommand) and no keepalive in the ssh config.
SSH_ALIVE_SECONDS = 15
SSH_ALIVE_COUNT = 4
_SSH_DEFAULT = "ssh -o BatchMode=yes -o ConnectTimeout=10"
_SSH_SCHEMES = ("ssh", "git+ssh", "ssh+git")
_GIT_ENV_KEPT = ("GIT_SSH_COMMAND", "GIT_SSH", *_GIT_LOW_SPEED)

GITATTRIBUTES = """\
# Written by Phoenix (phx). Every object is compressed and encrypted and never changes, so Git's
# delta compression cannot shrink it: it would only cost time and memory on both ends.
config binary -delta
keys/** binary -delta
runkeys/** binary -delta
data/** binary -delta
index/** binary -delta
snapshots/** binary -delta
"""
GITIGNORE = """\
# Written by Phoenix (phx): locks belong to this clone only; temp files are unfinished writes.
/locks/
.tmp-*
"""
# The folders whose listing gives each object's commit time as its write time (`_commit_times`):
# the rotation records, which `phx status` dates against the last backup (repo/retired.py).
DATED = ("retired/",)
_OURS = {".git", ".gitattributes", ".gitignore", *FOLDERS, "config"}


# The credential helper: `get` answers with the user name and password from the environment when
# git asks about the URL's own scheme and host; `store` and `erase` do nothing.
_HELPER = (
    '!f() { test "$1" = get || exit 0; p=; h=; '
    'while IFS= read -r line && test -n "$line"; do case "$line" in '
    'protocol=*) p="${line#protocol=}";; host=*) h="${line#host=}";; esac; done; '
    'test "$(printf %s "$p://$h" | tr A-Z a-z)" = "$PHX_GIT_ORIGIN" || exit 0; '
    'printf \'username=%s\\npassword=%s\\n\' "$PHX_GIT_USERNAME" "$PHX_GIT_PASSWORD"; }; f'
)


# The schemes git reaches through curl, which asks the credential helper; any other (ssh, scp-like
# `user@host:path`, git://, file://) puts the URL's user and password on ssh's command line or
# nowhere useful.
_HELPER_SCHEMES = ("http", "https", "ftp", "ftps")
_SCP_USERINFO = re.compile(r"^([^/@]*)@[^/:]+:")


def split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """An http(s) URL without its user name and password, and the environment that hands them to
    git's credential helper instead. Other URLs are returned as they are; a password in one is
    refused (ConfigError), since git would pass it to ssh on its command line."""
    scp = _SCP_USERINFO.match(url) if "://" not in url else None
    try:
        parts = urlsplit(url)
        password = ":" in scp.group(1) if scp else parts.password is not None
        if password and (scp or parts.scheme.lower() not in _HELPER_SCHEMES):
            raise ConfigError(
                "targets.git.repo holds a password in an address git hands to ssh (or to no one), where every local "
                "user could read it on the command line; remove it and use an SSH key, or an https URL with the token"
            )
        if parts.scheme.lower() not in _HELPER_SCHEMES or (parts.username is None and parts.password is None):
            return url, {}
        _ = parts.port  # a port that is no number: no URL git can use either
    except ValueError:
        return url, {}
    host = parts.netloc.rpartition("@")[2]
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    # What git asks the helper about: the URL's host part as written, port included ([::1]:8443).
    origin = f"{parts.scheme}://{host}"
    env = {
        # Reset the helpers of the user's own config (one may "store" what it is given), then ours.
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "credential.helper",
        "GIT_CONFIG_VALUE_0": "",
        "GIT_CONFIG_KEY_1": "credential.helper",
        "GIT_CONFIG_VALUE_1": _HELPER,
        "PHX_GIT_ORIGIN": origin.lower(),
        "PHX_GIT_USERNAME": unquote(parts.username or ""),
        "PHX_GIT_PASSWORD": unquote(parts.password or ""),
    }
    return clean, env


# Spellings of one Git repository (`storage_identity`). Ports are dropped with the scheme: one
# host's repository reached over ssh and over https is one storage (GitHub, GitLab, Gitea).
_SCP = re.compile(r"^(?:[^@/]*@)?(\[[^\]/]*\]|[^:/]+):(.*)$")
_TRANSPORT_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
_GIT_DIR_SUFFIXES = ("/.git", "", ".git/.git", ".git")  # the order git's own enter_repo tries


def storage_identity(url: str, cwd: Path) -> str:
    """What names the repository `url` reaches, however it is spelt: `/srv/r.git`, `/srv/r.git/`,
    `/srv/r`, `file:///srv/r.git`, a symlink to it or `../srv/r.git` (relative to `cwd`, where git
    runs) are one folder, given as its real path; `user@host:me/r.git`, `ssh://host:22/~/me/r`,
    `https://u:token@HOST/me/r.git/`, `[host:22]:~user/Me/R` are one `host/path` (no scheme, port,
    user, home folder or `.git`; lower case; an IP address in its one written form).
    Two repositories that differ only in those (or in the user's home folder) count as one: the
    append-only record it keys errs on the side of keeping a target append-only."""
    text = _TRANSPORT_PREFIX.sub("", url.strip())  # `https::https://host/r`: the helper reaches the address
    scp = _SCP.match(text) if "://" not in text else None
    if scp is not None:  # git's rule: a colon before any slash makes it ssh, never a path
        return _remote(scp.group(1), scp.group(2))
    if "://" in text:
        try:
            parts = urlsplit(text)
            host = parts.hostname or ""
        except ValueError:
            return text  # no URL git can use either
        if parts.scheme.lower() == "file":
            return _local(Path(unquote(parts.path)), cwd)
        # A web path has no home folder (`/home/team/` is a group there).
        return _remote(host, unquote(parts.path), homes=parts.scheme.lower() not in _HELPER_SCHEMES)
    return _local(Path(text).expanduser(), cwd)


def _remote(host: str, path: str, homes: bool = True) -> str:
    host = host.rpartition("@")[2].strip("[]")  # ssh's user ends at the last `@`
    if ip := _ip_address(host):
        return f"{ip}/{_remote_path(path, homes)}"
    host = re.sub(r":\d*$", "", host)  # scp's `[host:port]:path`
    return f"{host.rstrip('.').lower()}/{_remote_path(path, homes)}"


def _ip_address(host: str) -> str | None:
    """`host` as the one spelling of its IP address, or None for a name. IPv4 is read as the
    resolver reads it (`127.1`, `0x7f000001` and `2130706433` are 127.0.0.1), and an IPv4 address
    mapped into IPv6 is that IPv4 address."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            ip = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.compressed


def _remote_path(path: str, homes: bool) -> str:
    """`path` on its server, in lower case (GitHub and GitLab ignore the case of their paths, so a
    case-sensitive server's repositories that differ only in case count as one), and with
    `homes` (ssh, git's protocol) any user's home folder dropped: `~/`, `~git/`, `/home/git/`,
    a path relative to home, `../git/`."""
    if homes:
        path = path.removeprefix("/") if path.startswith("/~") else path  # git's `ssh://host/~user/r`
        if path.startswith("~"):
            path = "/home/" + path[1:] if path[1:2] not in ("", "/") else "/home/~" + path[1:]
        elif not path.startswith("/"):
            path = "/home/~/" + path  # scp's `host:path` is relative to the user's home
    path = posixpath.normpath("/" + path.lstrip("/")).lower()  # normpath keeps a leading `//`
    if homes:
        path = re.sub(r"^/home/[^/]+(/|$)", "/", path)
    return path.strip("/").removesuffix(".git").rstrip("/")


def _local(path: Path, cwd: Path) -> str:
    """The real path of the git dir holding the repository's objects and branches, found as git
    finds it: a folder that is no repository is passed over (`/srv/r` for `/srv/r.git`), a `.git`
    file (a worktree, a submodule) is followed, and a worktree's git dir counts as the
    repository it shares branches with (its `commondir`)."""
    cwd = Path(os.path.realpath(cwd))
    path = cwd / path  # an absolute path stays as it is
    for suffix in _GIT_DIR_SUFFIXES:
        with contextlib.suppress(OSError, ValueError):
            candidate = _resolve_in(Path(str(path).rstrip("/") + suffix), cwd)
            if candidate.is_file():
                candidate = _resolve_in(_gitfile_target(candidate), cwd)
            common = _resolve_in(_common_dir(candidate), cwd)
            if (candidate / "HEAD").exists() and (common / "objects").is_dir() and (common / "refs").is_dir():
                return str(common)
    try:
        return str(_resolve_in(path, cwd))
    except OSError:
        return str(path)  # a loop of links: no repository git could use either


def _resolve_in(path: Path, cwd: Path) -> Path:
    """The real path of the absolute `path` for a process working in the real folder `cwd` (git,
    in the clone), as Path.resolve gives it, except that `/proc/self/cwd`, however reached
    (`/proc/thread-self`, this pid, a symlink to one), is `cwd`, as it is for git."""
    todo = list(reversed(path.parts))
    here = Path("/")
    own = re.compile(rf"/proc/{os.getpid()}(/task/\d+)?")
    links = 0
    while todo:
        part = todo.pop()
        if part.strip("/") == "" and part:  # the root, `//` included
            here = Path("/")
        elif part == "..":
            here = here.parent
        elif part == "cwd" and own.fullmatch(str(here)):
            here = cwd
        elif part not in ("", "."):
            try:
                target = os.readlink(here / part)
            except OSError:  # no link (or nothing there): taken as it is
                here = here / part
                continue
            links += 1
            if links > 40:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", str(path))
            todo.extend(reversed(Path(target).parts))
    return here


def _gitfile_target(gitfile: Path) -> Path:
    """The folder a `.git` file (`gitdir: <path>`) names, relative to the file's folder."""
    with gitfile.open("rb") as f:
        line = f.read(4096).decode().strip()
    if not line.startswith("gitdir:"):
        raise ValueError("no gitdir line")
    return gitfile.parent / line.removeprefix("gitdir:").strip()


def _common_dir(git_dir: Path) -> Path:
    """The git dir whose objects and branches `git_dir` uses: itself, or its `commondir`."""
    try:
        with (git_dir / "commondir").open("rb") as f:
            return git_dir / f.read(4096).decode().strip()
    except (FileNotFoundError, NotADirectoryError):
        return git_dir


def clone_dir(env: Mapping[str, str], url: str, branch: str) -> Path:
    """The clone's folder, named by the SHA-256 of URL and branch. Through `cryptography` once it
    is loaded (`phx watch` loads it first): `hashlib` would map the system's libcrypto too, a
    second OpenSSL held for weeks (docs/benchmarks.md, "One OpenSSL in `phx watch`"). Before,
    hashlib's, not to load `cryptography` ahead of a passphrase's scrypt (repo/keys.py `_derive_kek`)."""
    name = f"{url}\0{branch}".encode()
    if "cryptography.hazmat.bindings._rust" in sys.modules:
        from cryptography.hazmat.primitives import hashes

        sha = hashes.Hash(hashes.SHA256())
        sha.update(name)
        digest = sha.finalize().hex()
    else:
        import hashlib

        digest = hashlib.sha256(name).hexdigest()
    return data_dir(env) / "git" / digest[:16]


# A URL in git's messages (`unable to access 'http://host:40365/r.git/'`), and an HTTP status that
# refuses credentials (`The requested URL returned error: 403`) standing alone.
_URL_IN_TEXT = re.compile(r"[a-z][a-z0-9+.\-]*://[^\s'\"]*")
_AUTH_STATUS = re.compile(r"(?<![\d.:/])40[13](?![\d.])")


# Pushes tried by one publish while the remote keeps moving on (other clones pushing meanwhile).
PUSH_ATTEMPTS = 4


class GitBackend(Backend):
    kind = "git"
    merges_on_publish = True

    def __init__(
        self,
        url: str,
        branch: str,
        auto_commit: bool,
        workdir: Path,
        env: Mapping[str, str],
        notice: Callable[[str], None] | None = None,
        append_only: bool = False,
        answer_seconds: float | None = None,
    ) -> None:
        self.url = url
        # A diagnosis's deadline (`phx doctor`): an HTTP(S) remote that sends nothing for this long
        # is not answering (git's stall limit), whatever a backup would wait. None: a backup's.
        self.answer_seconds = answer_seconds
        self.guarded = append_only  # an append-only target: its remote refuses force pushes
        # What git sees: the URL without credentials; they travel in its environment only.
        self.remote, credentials = split_credentials(url)
        self.branch = branch
        self.auto_commit = auto_commit
        self.workdir = Path(workdir)
        self.files = LocalBackend(self.workdir)
        self.notice = notice or (lambda _m: None)
        self._env = {**_git_env(env), **credentials}
        _stall_limit(self._env, self.remote, answer_seconds)
        _ssh_command(self._env, self.remote, answer_seconds)
        self._secrets = [v for k, v in credentials.items() if k in ("PHX_GIT_USERNAME", "PHX_GIT_PASSWORD")]
        self._ready = False
        self._mutex = threading.RLock()
        self._lock_fd: int | None = None  # the clone's lock while this process holds it (`_exclusive`)
        self._lock_owner: int | None = None  # the thread holding it: only its gits inherit it

    @property
    def location(self) -> str:
        return f"{redact_url(self.url, path=True)} (branch {self.branch}, clone {self.workdir})"

    def other_branches(self) -> list[str] | None:
        """The remote's branches when it lacks this backend's branch (a `#BRANCH` misspelt, or
        `main` for a remote whose branch is `master`); None when it has it or cannot be asked."""
        self._ensure()
        try:
            heads = self._git("ls-remote", "--heads", "origin", network=True).stdout
        except StorageError:
            return None
        names = [line.split("refs/heads/", 1)[1] for line in heads.splitlines() if "refs/heads/" in line]
        return None if self.branch in names else names

    # -- running git ------------------------------------------------------------------------

    def _git(
        self, *args: str, network: bool = False, check: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        try:
            child = subprocess.Popen(
                ["git", *args],
                cwd=cwd or self.workdir,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                # git holds the clone's lock too: one outliving a killed phx keeps it until it ends
                # (only a git run under the lock: one run outside it by another thread, as `unpublished`,
                # kept it after it was released, through any process it left, or got a closed descriptor)
                pass_fds=self._inherited_fds(),
            )
        except FileNotFoundError as exc:
            raise ToolMissing("git is not installed; install it (apt-get install git) or disable targets.git") from exc
        try:
            out, err = child.communicate(timeout=NETWORK_TIMEOUT if network else LOCAL_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            # git with what it started (`ssh`, `git-remote-https`): killing git alone left a hung
            # transport running, orphaned, for as long as it hung.
            kill_with_descendants(child)
            child.communicate()
            raise TargetUnreachable(f"git {args[0]} timed out for {self.location}; check the network") from exc
        except BaseException:
            kill_with_descendants(child)
            raise
        proc = subprocess.CompletedProcess(
            child.args, child.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        )
        if check and proc.returncode != 0:
            raise self._error(args[0], proc.stderr)
        return proc

    def _error(self, command: str, stderr: str) -> StorageError:
        text = redact(stderr, self._secrets)
        low = text.lower()
        where = redact_url(self.url, path=True)
        if command == "push" and ("[rejected]" in low or "[remote rejected]" in low or "failed to push" in low):
            reason = _reason(text)
            return StorageError(
                f"the Git remote {where} rejected the push of branch {self.branch} ({reason}); check the "
                "branch's protection rules and your write access (Phoenix never force-pushes)"
            )
        auth_markers = (
            "authentication failed",
            "could not read username",
            "could not read password",
            "permission denied",
            "terminal prompts disabled",
            "access denied",
            "invalid username or password",
        )
        # Read without the URLs git quotes: a port or path holding 401 or 403 (`:40365`) is no
        # HTTP status, and named a stalled remote's failure an authentication one.
        said = _URL_IN_TEXT.sub("", low)
        if any(m in said for m in auth_markers) or _AUTH_STATUS.search(said):
            return TargetAuthError(
                f"the Git remote {where} refused authentication ({_reason(text)}); set up an SSH key, a "
                "credential helper or a token for it, or fix targets.git.repo"
            )
        unreachable_markers = (
            "connection refused",
            "could not resolve host",
            "connection timed out",
            "network is unreachable",
            "no route to host",
            "failed to connect",
            "operation too slow",  # the HTTP stall limit (GIT_HTTP_LOW_SPEED_TIME)
        )
        # The HTTP stall limit, or ssh's ("connection to HOST port N timed out": its connect
        # timeout for the banner, the keepalives' end in the key exchange; "timeout, server": later).
        stalled = any(m in low for m in ("operation too slow", "timeout, server")) or re.search(
            r"^connection to .* timed out", low, re.MULTILINE
        )
        if self.answer_seconds is not None and stalled:
            return TargetUnreachable(
                f"no answer from the Git remote {where} in {self.answer_seconds:g} s; check the network and the URL "
                f"in targets.git.repo ({SLOW_LINK})"
            )
        if any(m in low for m in unreachable_markers):
            return TargetUnreachable(f"cannot reach the Git remote {where} ({_reason(text)}); check the network")
        if "does not appear to be a git repository" in low or "repository not found" in low or "not found" in low:
            return StorageError(
                f"there is no Git repository at {where}; create it (an empty one is fine) or fix targets.git.repo"
            )
        return StorageError(f"git {command} failed for {where}: {_reason(text)}")

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Serialise git commands on this clone across threads and processes. Every git run here
        holds the lock with this process (`_git` passes its descriptor on), so git's own lock files
        found once it is taken belong to no running git: they are cleared (`_clear_stale_git_locks`)."""
        with self._mutex:
            make_dirs(self.workdir.parent)
            lock_path = self.workdir.parent / f"{self.workdir.name}.lock"
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._lock_fd = fd
                self._lock_owner = threading.get_ident()
                self._clear_stale_git_locks()
                yield
            finally:
                self._lock_fd = self._lock_owner = None
                os.close(fd)

    def _inherited_fds(self) -> tuple[int, ...]:
        """The clone's lock descriptor when this thread holds it (`_exclusive`), else none."""
        fd = self._lock_fd
        return (fd,) if fd is not None and self._lock_owner == threading.get_ident() else ()

    def _clear_stale_git_locks(self) -> None:
        """git's lock files in this clone (`.git/index.lock`, `HEAD.lock`, a ref's), left by a git
        killed with the phx that ran it: a backup stopped with SIGKILL during `git add` left
        `index.lock`, and every later backup and sync to this target failed ("File exists") until
        someone deleted it by hand. Called with the clone's lock taken, which any git still running
        here would hold (its descriptor is inherited), so none of them is in use."""
        git = self.workdir / ".git"
        if not git.is_dir():
            return
        locks = [*git.glob("*.lock"), *(git / "refs").rglob("*.lock")]
        if not locks or _someone_else_works_in(self.workdir):
            return  # a git not run by Phoenix (a user's) holds none of our lock: its files are left
        for lock in locks:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()

    # -- the working clone ------------------------------------------------------------------

    def _ensure(self) -> None:
        if self._ready:
            return
        with self._exclusive():
            if self._ready:
                return
            if not (self.workdir / ".git").is_dir():
                self._clone()
            else:
                self._forget_credentials()
            self._write_meta()
            if self.guarded:
                self._guard_local_remote()
            self._ready = True

    def _clone(self) -> None:
        """Start a clone: init, add the remote, and take the remote branch's history if it has one
        (an empty remote, or one without the branch, starts an unborn branch). It is made in a
        folder beside its place and renamed there once complete, so a killed run never leaves a
        half-made clone that would pass for a good one (its leftovers go at the next clone; this
        runs under the clone's lock, so no other process is making one)."""
        parent = self.workdir.parent
        for leftover in parent.glob(f".{self.workdir.name}.partial-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if self.workdir.exists() and any(self.workdir.iterdir()):
            raise StorageError(
                f"{self.workdir} is not empty and is no Git clone; move it away (Phoenix keeps its Git "
                "clones there) or set PHX_DATA_DIR"
            )
        partial = parent / f".{self.workdir.name}.partial-{os.getpid()}"
        partial.mkdir(mode=0o700)
        try:
            self._git("init", "-q", cwd=partial)
            self._git("symbolic-ref", "HEAD", f"refs/heads/{self.branch}", cwd=partial)
            self._git("remote", "add", "origin", self.remote, cwd=partial)
            self._git("config", "core.autocrlf", "false", cwd=partial)
            heads = self._git("ls-remote", "--heads", "origin", self.branch, network=True, cwd=partial).stdout
            if heads.strip():
                self._git("fetch", "-q", "origin", self.branch, network=True, cwd=partial)
                self._git("merge", "-q", "--ff-only", "FETCH_HEAD", cwd=partial)
            os.rename(partial, self.workdir)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise

    def _forget_credentials(self) -> None:
        """A clone made by an older Phoenix keeps the URL with its credentials in .git/config:
        replace it by the URL without them."""
        current = self._git("config", "--get", "remote.origin.url", check=False).stdout.strip()
        if current and current != self.remote and split_credentials(current)[0] == self.remote:
            self._git("remote", "set-url", "origin", self.remote)

    def _local_remote(self) -> Path | None:
        """The remote's folder when it is a bare repository on this machine, else None."""
        remote = self.remote
        if remote.startswith("file://"):
            folder = Path(unquote(urlsplit(remote).path))
        elif "://" in remote or _SCP_USERINFO.match(remote) or re.match(r"^[^/]+:", remote):
            return None
        else:
            folder = Path(remote)
        return folder if (folder / "HEAD").is_file() and (folder / "objects").is_dir() else None

    _GUARDS = ("receive.denyNonFastForwards", "receive.denyDeletes")

    def _guard_local_remote(self) -> None:
        """Make a bare remote on this machine refuse force pushes and branch deletions."""
        folder = self._local_remote()
        if folder is None:
            return
        changed = False
        for key in self._GUARDS:
            current = self._git("--git-dir", str(folder), "config", "--bool", "--get", key, check=False).stdout.strip()
            if current != "true":
                self._git("--git-dir", str(folder), "config", key, "true")
                changed = True
        if changed:
            self.notice(f"the Git remote {folder} now refuses force pushes and branch deletions (append-only target)")

    def protection(self) -> Protection:
        folder = self._local_remote()
        if folder is None:
            return Protection(
                None,
                f"Phoenix cannot see whether the Git host of {redact_url(self.url)} refuses force pushes",
                f"protect branch {self.branch} on the host against force pushes and deletion, and give this machine "
                "a deploy key that cannot change that protection",
            )
        missing = [
            key
            for key in self._GUARDS
            if self._git("--git-dir", str(folder), "config", "--bool", "--get", key, check=False).stdout.strip()
            != "true"
        ]
        if missing:
            return Protection(
                False,
                f"the Git remote {folder} accepts force pushes or branch deletions ({', '.join(missing)} not set)",
                f"run `git --git-dir {folder} config receive.denyNonFastForwards true` and "
                "`... config receive.denyDeletes true`",
            )
        return Protection(True, f"the Git remote {folder} refuses force pushes and branch deletions")

    def _write_meta(self) -> None:
        for name, text in ((".gitattributes", GITATTRIBUTES), (".gitignore", GITIGNORE)):
            path = self.workdir / name
            if not path.is_file() or path.read_text() != text:
                path.write_text(text)

    # -- the interface ----------------------------------------------------------------------

    def exists(self) -> bool:
        self._ensure()
        return self.files.exists()

    def create(self, slots: Mapping[str, bytes] | None = None) -> None:
        self._ensure()
        if self.files.exists():
            raise RepositoryExists(f"a repository already exists at {self.location}; it was left untouched")
        leftover = [e.path for e in os.scandir(self.workdir) if e.name.startswith(CONFIG_TEMP)]
        foreign = sorted(e.name for e in os.scandir(self.workdir) if e.name not in _OURS and e.path not in leftover)
        if foreign or any(self.files.list("data/")) or any(self.files.list("snapshots/")):
            raise RepositoryExists(
                f"the Git repository {redact_url(self.url)} (branch {self.branch}) already holds other files "
                f"({', '.join(foreign[:3]) or 'objects without a config'}); use an empty repository or another branch"
            )
        for info in self.files.list("keys/"):
            if not is_slot_of(slots, info.name, self.files.read):  # else this repository's, a racing copy's
                self.files.delete(info.name)  # an interrupted init's unused key slots
        for path in leftover:
            os.unlink(path)  # and its config's temporary file
        for folder in FOLDERS:
            (self.workdir / folder).mkdir(exist_ok=True, mode=0o700)

    def read(self, name: str) -> bytes:
        self._ensure()
        return self.files.read(name)

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        self._ensure()
        return self.files.read_range(name, offset, length)

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        self._ensure()
        if len(data) > MAX_OBJECT:
            raise StorageError(
                f"object {name} is {len(data)} bytes, above the 50 MB Git hosts accept; this is a bug, please report it"
            )
        self.files.write(name, data, exclusive=exclusive)

    def delete(self, name: str) -> None:
        self._ensure()
        self.files.delete(name)

    def stat(self, name: str) -> ObjectInfo | None:
        self._ensure()
        return self.files.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._ensure()
        if prefix.startswith(DATED):
            return self._commit_times([*self.files.list(prefix)], prefix)
        return self.files.list(prefix)

    def _commit_times(self, infos: Sequence[ObjectInfo], prefix: str) -> Iterator[ObjectInfo]:
        """`infos` (the clone's listing of `prefix`), each committed one with the time of the commit
        that added it as its write time: a file's time in the clone is when it was checked out (a
        new clone, a merge of another machine's commits), later than any write. One `git log` for
        the folder. A file not committed yet was written here: its own time is its write time."""
        if not infos:
            return iter(infos)
        log = self._git(
            "log", "--format=%x00%ct", "--name-only", "--diff-filter=A", "--no-renames", "HEAD", "--",
            prefix.rstrip("/"), check=False,
        )  # fmt: skip
        if log.returncode != 0:  # an unborn branch: nothing committed yet
            return iter(infos)
        added: dict[str, float] = {}
        when: float | None = None
        for line in log.stdout.splitlines():
            if line.startswith("\0"):
                when = float(line[1:])
            elif line and when is not None:
                added.setdefault(line, when)  # newest first: the last time it was added
        return iter([dataclasses.replace(i, modified=added.get(i.name, i.modified)) for i in infos])

    def list_temporary(self) -> Iterator[ObjectInfo]:
        self._ensure()
        for info in self.files.list_temporary():
            if not info.name.startswith(".git/"):
                yield info

    def delete_temporary(self, name: str) -> None:
        self._ensure()
        self.files.delete_temporary(name)

    def checkpoint(self, message: str) -> bool:
        """Commit everything written since the last commit (objects, deletions, .gitattributes)."""
        self._ensure()
        with self._exclusive():
            self._git("add", "-A")
            if self._git("diff", "--cached", "--quiet", check=False).returncode == 0:
                return False
            self._git("commit", "-q", "--no-verify", "-m", message)
            return True

    def publish(self) -> bool:
        """Push when autoCommit is on. A remote that moved on (another clone pushed) is merged
        first: objects are content-addressed, so the merge never conflicts and nothing is
        rewritten; but a commit of theirs that deleted objects deletes them here too (True is
        returned then: the caller checks what it relies on)."""
        if not self.auto_commit:
            return False
        self._ensure()
        with self._exclusive():
            if self._git("rev-parse", "-q", "--verify", "HEAD", check=False).returncode != 0:
                return False  # nothing committed yet
            merged = False
            # The remote moved on: another clone pushed first ("fetch first", "non-fast-forward"),
            # or at the same moment ("cannot lock ref": its ref update won the race, which two
            # machines syncing at once met as a failed sync blaming branch protection). Merged and
            # pushed again, a few times: each push races the other clones' anew.
            for _attempt in range(PUSH_ATTEMPTS):
                push = self._git("push", "-q", "origin", f"HEAD:refs/heads/{self.branch}", network=True, check=False)
                if push.returncode == 0:
                    return merged
                low = push.stderr.lower()
                if not any(m in low for m in ("fetch first", "non-fast-forward", "cannot lock ref")):
                    break
                # What this clone last pushed, read before the fetch moves the tracking branch.
                pushed = self._git("rev-parse", "-q", "--verify", f"refs/remotes/origin/{self.branch}", check=False)
                self._git("fetch", "-q", "origin", self.branch, network=True)
                if self.guarded and pushed.returncode == 0:
                    self._refuse_rewritten_history(pushed.stdout.strip())
                self._git("merge", "-q", "--no-edit", "FETCH_HEAD")
                merged = True
            raise self._error("push", push.stderr)

    def _refuse_rewritten_history(self, pushed: str) -> None:
        """On an append-only target, the remote branch must still hold `pushed`, the commit this
        clone last pushed: one that lost it was rewritten (a force push), and merging would hide that."""
        if self._git("merge-base", "--is-ancestor", pushed, "FETCH_HEAD", check=False).returncode != 0:
            raise StorageError(
                f"the branch {self.branch} of the Git remote {redact_url(self.url, path=True)} no longer holds the "
                "commits Phoenix pushed there: its history was rewritten (a force push); nothing was pushed. Check "
                "the remote, restore its history from a clone (this one holds it), and make it refuse force pushes"
            )

    def unpublished(self) -> int:
        """How many commits the remote branch lacks (what `publish` would push), as far as known."""
        self._ensure()
        proc = self._git("rev-list", "--count", "HEAD", f"^refs/remotes/origin/{self.branch}", check=False)
        if proc.returncode != 0:
            proc = self._git("rev-list", "--count", "HEAD", check=False)
        return int(proc.stdout.strip() or 0) if proc.returncode == 0 else 0


def _someone_else_works_in(folder: Path) -> bool:
    """Whether a process other than this one has its working folder in `folder` (a git runs at the
    top of its work tree): a user's `git commit` there holds `.git/index.lock` without Phoenix's
    lock. Where /proc cannot say (not Linux), no one is assumed, as before this check."""
    me = str(os.getpid())
    top = os.path.realpath(folder)
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and p != me]
    except OSError:
        return False
    for pid in pids:
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue  # gone, or another user's (whose git could not write our clone)
        if cwd == top or cwd.startswith(top + os.sep):
            return True
    return False


def _git_env(env: Mapping[str, str]) -> dict[str, str]:
    out = {k: v for k, v in env.items() if not k.startswith("GIT_") or k in _GIT_ENV_KEPT}
    out.update(
        {
            "GIT_TERMINAL_PROMPT": "0",
            "LC_ALL": "C",
            "LANG": "C",
            "GIT_AUTHOR_NAME": "Phoenix (phx)",
            "GIT_COMMITTER_NAME": "Phoenix (phx)",
            # Never the host name: the commits are visible to whoever can read the remote.
            "GIT_AUTHOR_EMAIL": GIT_EMAIL,
            "GIT_COMMITTER_EMAIL": GIT_EMAIL,
        }
    )
    out.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
    return out


def _stall_limit(env: dict[str, str], remote: str, answer_seconds: float | None = None) -> None:
    """An HTTP(S) remote that accepts the connection and then sends nothing (or drips) ends the
    transfer after a minute below 1 byte/s, instead of hanging until NETWORK_TIMEOUT: set in `env`
    unless the user chose a limit, in the environment or in git's configuration
    (http.lowSpeedLimit/lowSpeedTime, for every URL or this one), which the environment would
    override. A diagnosis (`answer_seconds`) sets its own deadline whatever was chosen."""
    if answer_seconds is not None and remote.lower().startswith(("http://", "https://")):
        env.update(dict(zip(_GIT_LOW_SPEED, ("1", str(max(1, math.ceil(answer_seconds)))), strict=True)))
        return
    if not remote.lower().startswith(("http://", "https://")) or all(k in env for k in _GIT_LOW_SPEED):
        return
    # No git (said at its first use) or no answer: Phoenix's limit.
    chosen = (_run_quietly(["git", "config", "--get-urlmatch", "http", remote], env) or "").lower()
    defaults = {"lowspeedlimit": "1", "lowspeedtime": str(HTTP_STALL_SECONDS)}
    for name, (setting, default) in zip(_GIT_LOW_SPEED, defaults.items(), strict=True):
        if f"http.{setting}" not in chosen:
            env.setdefault(name, default)


def _ssh_command(env: dict[str, str], remote: str, answer_seconds: float | None = None) -> None:
    """For an ssh remote, Phoenix's ssh command in `env` (GIT_SSH_COMMAND: no prompt, a 10 s
    connect timeout, and keepalives: SSH_ALIVE_SECONDS x SSH_ALIVE_COUNT of silence ends it)
    unless the user chose one: GIT_SSH_COMMAND or GIT_SSH in the environment, or core.sshCommand
    in git's configuration (which the environment would override). The keepalives are left out
    where the user's ssh configuration sets its own for this host (`ssh -G`: the command line's
    options would override it). A diagnosis (`answer_seconds`) sets its own deadline, to connect,
    for the banner and for the keepalives (which bound the key exchange too), whatever the ssh
    configuration says, unless the user chose an ssh command."""
    if env.get("GIT_SSH_COMMAND") or env.get("GIT_SSH"):
        return
    destination = _ssh_destination(remote)
    if destination is None:
        return
    if answer_seconds is not None:
        wait = max(1, math.ceil(answer_seconds))
        command = f"ssh -o BatchMode=yes -o ConnectTimeout={wait} -o ServerAliveInterval={wait}"
        env["GIT_SSH_COMMAND"] = f"{command} -o ServerAliveCountMax=1"
        return
    # With this remote as a remote's URL, as in the clone: a core.sshCommand the user's config
    # includes for it alone (`includeIf "hasconfig:remote.*.url:..."`) is the user's choice too.
    chosen = _run_quietly(["git", "-c", f"remote.origin.url={remote}", "config", "--get", "core.sshCommand"], env)
    if chosen is not None and chosen.strip():
        return
    command = _SSH_DEFAULT
    effective = _run_quietly(["ssh", "-G", *destination], env) or ""
    settings = dict(line.partition(" ")[::2] for line in effective.lower().splitlines())
    if settings.get("serveraliveinterval", "0").strip() == "0":
        command += f" -o ServerAliveInterval={SSH_ALIVE_SECONDS}"
        if settings.get("serveralivecountmax", "3").strip() == "3":  # ssh's default: not the user's
            command += f" -o ServerAliveCountMax={SSH_ALIVE_COUNT}"
    env["GIT_SSH_COMMAND"] = command


def _ssh_destination(remote: str) -> list[str] | None:
    """ssh's arguments naming the host of an ssh remote (`[-p PORT] [USER@]HOST`, as git gives
    them), None for any other remote or a host git itself refuses (one starting with `-`)."""
    text = _TRANSPORT_PREFIX.sub("", remote.strip())
    port: int | None = None
    if "://" in text:
        try:
            parts = urlsplit(text)
            host, user, port = parts.hostname or "", parts.username, parts.port
        except ValueError:
            return None
        if parts.scheme.lower() not in _SSH_SCHEMES:
            return None
    else:
        scp = _SCP.match(text)
        if scp is None:
            return None
        user = text.partition("@")[0] if "@" in text.partition(":")[0] else None
        host = scp.group(1).strip("[]")
        if ":" in host and not _ip_address(host):  # scp's `[host:port]:path`
            host, _, number = host.rpartition(":")
            port = int(number) if number.isdigit() else None
    if not host or host.startswith("-") or (user or "").startswith("-"):
        return None
    return [*(["-p", str(port)] if port else []), f"{user}@{host}" if user else host]


def _run_quietly(argv: list[str], env: Mapping[str, str]) -> str | None:
    """`argv`'s output, None when it cannot run, fails or gives no answer in 10 s."""
    try:
        proc = subprocess.run(
            argv, env=env, cwd="/", stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _reason(stderr: str) -> str:
    """The most telling line of git's stderr, for a one-line error."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        low = line.lower()
        if line.startswith(("!", "fatal:", "error:", "remote: error")) or "rejected" in low or "denied" in low:
            return line.removeprefix("fatal: ").removeprefix("error: ").rstrip(".")
    return lines[-1].rstrip(".") if lines else "no message"
