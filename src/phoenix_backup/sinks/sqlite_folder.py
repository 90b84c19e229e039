"""SQLite work on the files of one folder the restore holds open, never through a path that anyone
but this user (or root) can change.

SQLite opens files by name and resolves every symlink on the way itself; given /proc/self/fd/N/x
it reads the folder's path back from /proc and walks that path again. So a descriptor opened with
O_NOFOLLOW protects nothing once SQLite has the name. Before any SQLite call, the folder and each
folder above it are checked:

- no one but this user and root can change them (owner, and no group or other write bit unless
  the group is this user's own; the sticky bit is enough above the folder itself): SQLite gets the
  folder's path, which no one else can redirect;
- otherwise, as root (a root restore into a user's workspace), the call runs in a child process
  whose root is a detached bind mount of the folder (`confine`): a symlink swapped in resolves
  inside that folder, never outside it, whatever is moved meanwhile;
- otherwise the restore refuses, naming the folder.

The child gets the folder as an inherited descriptor, a JSON request on stdin (the operation and
the names inside the folder) and answers on stdout.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import grp
import json
import os
import pwd
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from phoenix_backup.errors import RestoreError
from phoenix_backup.sinks import sqlite_live

# O_PATH: a folder above may be searchable without being readable (a home folder of mode 0711).
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC

# The operations a child may run: each takes the paths of its files in the folder, then strings.
_OPS: dict[str, Callable[..., Any]] = {
    "integrity": sqlite_live.integrity,
    "apply_if_readable": sqlite_live.apply_if_readable,
    "check_live": sqlite_live.check_live,
    "fingerprint": sqlite_live.fingerprint,
    "probe": sqlite_live.probe,
}
# The operations whose answer is a dataclass, rebuilt from the child's JSON.
_RESULTS: dict[str, Callable[..., Any]] = {"check_live": sqlite_live.LiveCheck, "probe": sqlite_live.LiveDb}


def run(dir_fd: int, op: str, names: list[str], *extra: str) -> Any:
    """`op` on the files `names` of the folder `dir_fd` (the extra arguments are passed as they
    are); raises RestoreError when the folder is not safe to hand to SQLite."""
    changeable = _changeable_by_others(dir_fd)
    if changeable is None:
        base = os.readlink(f"/proc/self/fd/{dir_fd}")
        return _OPS[op](*(os.path.join(base, n) for n in names), *extra)
    if os.geteuid() == 0:
        return _confined(dir_fd, op, names, extra)
    raise RestoreError(
        f"{changeable} can be changed by another user, so SQLite could be led through a link swapped in "
        "there; nothing was written to the database in it — make the folder writable by you alone (chmod "
        "go-w), or restore with --to DIR"
    )


def private(dir_fd: int) -> bool:
    """Whether no one but this user and root can change the folder `dir_fd` (or any above it): what
    SQLite reads there by name is what this process wrote. In a folder another user can change (a
    root restore into a user's workspace, `confine`), that user can put other bytes under the name
    before SQLite opens it: the check is still the restore's own, but says nothing of the bytes
    written (repo/checks.py records no verdict from it)."""
    return _changeable_by_others(dir_fd) is None


def folder_path(dir_fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{dir_fd}")


def _changeable_by_others(dir_fd: int) -> str | None:
    """The first folder from `dir_fd` up to / that someone other than this user and root can
    change (rename an entry in, link into), or None. Walked through "..", never through a name."""
    euid = os.geteuid()
    fd = os.dup(dir_fd)
    own = True
    try:
        while True:
            st = os.fstat(fd)
            if st.st_uid not in (0, euid) or _others_may_write(fd, st, euid, sticky_enough=not own):
                return folder_path(fd)
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            up = os.fstat(parent)
            if (up.st_dev, up.st_ino) == (st.st_dev, st.st_ino):
                os.close(parent)
                return None
            os.close(fd)
            fd, own = parent, False
    finally:
        os.close(fd)


def _others_may_write(fd: int, st: os.stat_result, euid: int, *, sticky_enough: bool) -> bool:
    mode = st.st_mode
    if sticky_enough and mode & stat.S_ISVTX:
        return False  # others may add names, never move or replace the entries of this user or root
    if mode & stat.S_IWOTH:
        return True
    if not mode & stat.S_IWGRP:
        return False
    # Group-writable: fine only for a group of this user alone, and without an ACL (whose mask
    # shows in the group bits while naming other users).
    try:
        os.getxattr(f"/proc/self/fd/{fd}", "system.posix_acl_access")  # the folder itself, not a name
        return True
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return True
    return not _private_group(st.st_gid, euid)


def _private_group(gid: int, euid: int) -> bool:
    try:
        members = set(grp.getgrgid(gid).gr_mem)
        users = {p.pw_uid for p in pwd.getpwall() if p.pw_gid == gid or p.pw_name in members}
    except KeyError:
        return False
    return users <= {0, euid}


def _confined(dir_fd: int, op: str, names: list[str], extra: tuple[str, ...]) -> Any:
    request = json.dumps({"fd": dir_fd, "op": op, "names": names, "extra": list(extra)})
    try:
        proc = subprocess.run(
            # -P: `python -m` would put the working folder first on sys.path, and `sudo phx restore`
            # keeps the user's: a json.py left there would run as root before the chroot.
            [sys.executable, "-P", "-m", __name__],
            input=request,
            capture_output=True,
            text=True,
            pass_fds=(dir_fd,),
            check=False,
        )
    except OSError as exc:
        raise RestoreError(f"cannot start the confined SQLite step ({exc.strerror}); restore with --to DIR") from exc
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RestoreError(
            f"the confined SQLite step in {folder_path(dir_fd)} failed ({detail}); nothing was written to the "
            "database there — restore with --to DIR"
        ) from None
    if "error" in answer:
        raise RestoreError(str(answer["error"]))
    result = answer["result"]
    if isinstance(result, dict):
        return _RESULTS[op](**result)
    return result


# open_tree(2), Linux 5.2: the same number on every architecture.
_SYS_OPEN_TREE = 428
_OPEN_TREE_CLONE = 1
_AT_EMPTY_PATH = 0x1000


def confine(dir_fd: int) -> None:
    """Make the folder `dir_fd` this process's root, through a detached bind mount of it.

    A plain chroot is not enough: while a lookup walks down a folder, its owner can move that folder
    out of the root, and the ".." that climb back are never checked against it (a link through a
    500-level folder reached a root-only file in 0.6% of opens). In a bind mount the kernel checks
    every ".." (`path_connected`), so the lookup ends inside the folder or fails. Without
    open_tree (an older kernel, or no CAP_SYS_ADMIN) the step is refused."""
    libc = ctypes.CDLL(None, use_errno=True)
    tree = libc.syscall(_SYS_OPEN_TREE, dir_fd, b"", _OPEN_TREE_CLONE | _AT_EMPTY_PATH | os.O_CLOEXEC)
    if tree < 0:
        code = ctypes.get_errno()
        raise RestoreError(
            f"cannot confine SQLite to {folder_path(dir_fd)} (open_tree: {os.strerror(code)}; it needs Linux 5.2 "
            "and CAP_SYS_ADMIN); nothing was written to the database there — restore with --to DIR, or as the "
            "folder's owner"
        )
    os.fchdir(tree)
    os.chroot(".")
    os.chdir("/")


def _serve() -> None:
    """The child: everything is imported already; confine this process to the folder, run one
    operation there, answer."""
    request = json.load(sys.stdin)
    out: dict[str, Any]
    try:
        confine(request["fd"])
        result = _OPS[request["op"]](*("/" + n for n in request["names"]), *request["extra"])
        out = {"result": dataclasses.asdict(result) if request["op"] in _RESULTS else result}
    except RestoreError as exc:
        out = {"error": str(exc)}
    except (OSError, sqlite3.Error) as exc:
        out = {"error": f"the confined SQLite step in {request.get('names')} failed: {exc}; nothing was written"}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    _serve()
