"""Where Phoenix keeps what is not a cache: the platform data dir (DESIGN §1)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from phoenix_backup.errors import ConfigError, UsageError

# The most a file holding a secret (a passphrase, age identities, a write key) may hold: hundreds
# of identities fit; a mistaken path (a disk image, /dev/zero) is refused after this much.
SECRET_FILE_LIMIT = 64 << 10
# The name `remember_secret` keeps encryption.passphraseCommand's output under.
PASSPHRASE_COMMAND_SECRET = "encryption.passphraseCommand"


def data_dir(env: Mapping[str, str]) -> Path:
    """Phoenix's data dir: PHX_DATA_DIR, else the platform's user data dir (XDG on Linux).

    It is always absolute, or a ConfigError: a relative one would move the pin file and the Git
    clones with the working directory. A relative XDG_DATA_HOME is ignored, as the XDG spec says."""
    xdg = env.get("XDG_DATA_HOME", "")
    if env.get("PHX_DATA_DIR"):
        path = Path(env["PHX_DATA_DIR"])
    elif Path(xdg).is_absolute():
        path = Path(xdg) / "phoenix"
    else:
        import platformdirs  # here: every `phx` imports this module, few look the folder up this way

        try:
            path = Path(platformdirs.user_data_dir("phoenix"))
        except RuntimeError:  # no HOME and no passwd entry: platformdirs cannot tell
            path = Path("~")
    if not path.is_absolute():
        raise ConfigError(
            f"Phoenix's data dir {str(path)!r} is not an absolute path (is HOME unset?); set PHX_DATA_DIR "
            "to an absolute path"
        )
    return path


def env_path(env: Mapping[str, str], name: str) -> Path | None:
    """The path the environment variable `name` (PHX_PASSPHRASE_FILE, PHX_IDENTITY_FILE, GNUPGHOME)
    names, None when unset or empty: a leading `~` or `~/` is the HOME of `env`, as a shell would
    have expanded it (a value written in quotes keeps it literal). Every reader of these variables
    and the backup's selection, which leaves the key files out of the workspace, use this one
    reading: where one expanded and the other did not, a backup could save the key file and then
    fail to read the literal path."""
    given = env.get(name)
    if not given:
        return None
    if given == "~" or given.startswith("~/"):
        home = env.get("HOME") or os.path.expanduser("~")
        return Path(home + given[1:])
    return Path(os.path.expanduser(given))


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically by a file of `data` only its owner can read (mode 0600): a temp
    file beside it, fsynced, renamed, and the folder fsynced. The temp's name is new each time and
    created exclusively (`mkstemp`): threads writing one file never share it, and nothing planted
    beside it (a symlink, a FIFO that would block the open) is ever opened."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:  # a full disk, an I/O error: no temp file left behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (the folder entry is written too)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file below `root`, then every folder, deepest first, and `root` itself (as a
    restore does before its renames count): what a later rename of `root` publishes is on disk,
    never a renamed but empty file after a power cut. Links are not followed."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def make_dirs(path: Path, mode: int = 0o700) -> None:
    """Create `path` and its missing parents, each new folder's entry made durable: the parent of
    every folder created is fsynced (once), so a power cut cannot lose a folder that a later
    fsynced rename put a file in. Folders that exist cost one stat each."""
    missing: list[Path] = []
    here = path
    while not here.is_dir():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=mode)
        except FileExistsError:
            if not folder.is_dir():  # a file in the way
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder)) from None
            continue  # made by another process meanwhile: its maker makes it durable
        fsync_dir(folder.parent)


def trustworthy(st: os.stat_result) -> bool:
    """Whether a file with this stat can be trusted as this user's own: owned by them (or root)
    and writable by no one else. Whoever can write it decides what Phoenix trusts (ssh's StrictModes)."""
    return st.st_uid in (os.geteuid(), 0) and not st.st_mode & 0o022


# What `read_secret_file` read in this process, by path (a pipe gives its secret once), and what
# `remember_secret` was given (a passphrase command's output), by name.
_SECRETS_READ: dict[str, bytes] = {}


_SECRETS_CHANGES = [0]  # how many times `_SECRETS_READ` was written: `secrets_version`


def remember_secret(name: str, data: bytes) -> None:
    """Keep a secret this process obtained other than from a file (a passphrase command's output)
    under `name`, so that what Phoenix shows can be kept free of it (`remembered_secret`)."""
    _SECRETS_READ[name] = data
    _SECRETS_CHANGES[0] += 1


def secrets_version(env: Mapping[str, str]) -> tuple[object, ...]:
    """What the secrets this process knows of `env` (notify/message.py `env_secrets`) depend on
    besides `env` itself: the secrets read or remembered so far and the version (inode, size,
    times) of the passphrase file on disk. Equal, the same secrets: a list of them is kept for a
    command's life (cli/app.py `known_secrets`), made again once a passphrase file is read or
    written (a hook that rotates it, say)."""
    path = env_path(env, "PHX_PASSPHRASE_FILE")
    if path is None:
        return (_SECRETS_CHANGES[0],)
    try:
        st = os.stat(path)
    except OSError:
        return (_SECRETS_CHANGES[0], os.fspath(path))
    if not settled(st):
        return (object(),)  # equal to nothing: changed within its times' tick, it may change unseen
    return (_SECRETS_CHANGES[0], os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


SETTLED_NS = 3_000_000_000  # `settled`: above a coarse kernel clock's tick (Linux before 6.13) and FAT's 2 s


def settled(st: os.stat_result) -> bool:
    """Whether a file's times tell a change made from now on: a file written in the same tick of
    the clock that dates it (a hook rewriting the passphrase file in place, the same size, a few ms
    after it was read) keeps its inode, size and times, so its version (`secrets_version`) is
    trusted only once it was last changed `SETTLED_NS` ago."""
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) >= SETTLED_NS


def remembered_secret(name: str) -> bytes | None:
    """What `remember_secret` kept under `name`, if anything."""
    return _SECRETS_READ.get(name)


# The UTF-8 byte-order mark some Windows editors write at the start of a text file.
BOM = "\ufeff"


def passphrase_text(text: str) -> str:
    """A passphrase as Phoenix uses it from every source (ops/context.py `as_passphrase`): without
    a UTF-8 byte-order mark it starts with and the line breaks (CR, LF) it ends with. Redaction
    hides this form too (notify/message.py `env_secrets`)."""
    return text.removeprefix(BOM).rstrip("\r\n")


def read_secret_file(path: Path, what: str, fix: str) -> bytes:
    """The bytes of the file `what` (`PHX_PASSPHRASE_FILE`, `age identity file`) at `path`, read
    as they come (a pipe such as `<(pass show phx)` too): see `read_secret`. OSError when it cannot
    be read."""
    with open(path, "rb") as f:
        data = read_secret(f, path, what, fix)
    _SECRETS_READ[os.fspath(path)] = data
    _SECRETS_CHANGES[0] += 1
    return data


def secret_file_again(path: Path) -> bytes | None:
    """The secret file at `path` for redaction (kept out of what Phoenix shows): a regular file's
    bytes as they are now (up to the limit: a hook may have rotated it since this process read it,
    whose bytes `remembered_secret(path)` keeps), else what this process read from it already;
    None for a pipe or device not read yet, or a file that cannot be read. A named pipe is never
    opened again: its writer gave the secret once, and a second open would wait for ever for
    another."""
    try:
        st = os.stat(path)
    except OSError:
        return _SECRETS_READ.get(os.fspath(path))
    if not stat.S_ISREG(st.st_mode):
        return _SECRETS_READ.get(os.fspath(path))
    # Every line Phoenix prints asks (cli/app.py `said`): the bytes are kept while the file is the
    # same (inode, size, times; a file written or replaced since is read again), a stat not a read.
    version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    seen = _SECRETS_SEEN.get(os.fspath(path))
    if seen is not None and seen[0] == version:
        return seen[1]
    try:
        with open(path, "rb") as f:
            data: bytes | None = read_secret(f, path, "", "")
    except (OSError, UsageError):
        data = None
    if settled(st):  # read before it settled, the bytes may be older than a version equal to it
        _SECRETS_SEEN[os.fspath(path)] = (version, data)
    return data


# What `secret_file_again` read of a file this process did not read itself, by path, with the
# file's version (device, inode, size, mtime, ctime) it was read at.
_SECRETS_SEEN: dict[str, tuple[tuple[int, int, int, int, int], bytes | None]] = {}


def read_secret(f: IO[bytes], path: Path, what: str, fix: str) -> bytes:
    """What the open file `f` (`what` at `path`) holds, never more than SECRET_FILE_LIMIT: a larger
    file is one UsageError naming it, the limit and `fix`, exit 2, read no further (a 1 GiB file
    read whole would take a GiB of memory, and keep it)."""
    data = f.read(SECRET_FILE_LIMIT + 1)
    if len(data) > SECRET_FILE_LIMIT:
        raise UsageError(
            f"{what} {path} holds more than {SECRET_FILE_LIMIT >> 10} KiB, more than any secret file does; {fix}"
        )
    return data


def is_mount_point(folder: Path) -> bool:
    """Whether `folder` is a mount point: another device than its parent (`os.path.ismount`), or
    a mount listed in /proc/self/mountinfo, which alone shows a bind mount from the same file
    system (same device, so `ismount` cannot tell)."""
    if os.path.ismount(folder):
        return True
    real = os.path.realpath(folder)
    return any(point == real for point, _kind, _device in _mounts())


def _mounts() -> list[tuple[str, str, int]]:
    """Each mount of /proc/self/mountinfo: (its mount point, its file system type, its device as
    `st_dev` gives it); none where there is no such file (not Linux, no /proc)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    # The 3rd field is the device (major:minor), the 5th the mount point; space, tab, new line and
    # backslash are written in octal (\040). The type is the first field after the " - " separator.
    mounts = []
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 5 or " - " not in line or fields[2].count(":") != 1:
            continue
        major, minor = fields[2].split(":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        point = _MOUNTINFO_ESCAPE.sub(lambda m: chr(int(m[1], 8)), fields[4])
        mounts.append((point, line.split(" - ", 1)[1].split(" ")[0], os.makedev(int(major), int(minor))))
    return mounts


# File systems the kernel makes of its own state (processes, devices, settings): what is written
# there is not kept, and a write may change the running system. Linux's pseudo file systems, by
# the name /proc/filesystems and /proc/self/mountinfo give them: those a mount can show, and the
# kernel's internal ones (anon_inodefs, pidfs, ...), which a /proc/PID/fd link can lead to.
KERNEL_FILE_SYSTEMS = frozenset(
    {
        "aio", "anon_inodefs", "autofs", "bdev", "binder", "binfmt_misc", "bpf", "cgroup", "cgroup2",
        "configfs", "cpuset", "dax", "debugfs", "devpts", "devtmpfs", "dmabuf", "efivarfs", "functionfs",
        "fusectl", "gadgetfs", "hugetlbfs", "ibmasmfs", "ipathfs", "mqueue", "nfsd", "nsfs", "ocfs2_dlmfs",
        "openpromfs", "pidfs", "pipefs", "proc", "pstore", "resctrl", "rpc_pipefs", "s390_hypfs",
        "secretmem", "securityfs", "selinuxfs", "smackfs", "sockfs", "spufs", "sysfs", "tracefs", "xenfs",
    }
)  # fmt: skip
# Not kernel state, so not above: tmpfs and ramfs (memory, a legitimate scratch destination),
# overlay (a container's root), fuse (sshfs and the like hold real files).


def kernel_file_system(path: Path | int) -> tuple[str, str] | None:
    """(its type, its mount point) when `path` (or the nearest folder above it that exists), or
    the open folder `path`, is on one of KERNEL_FILE_SYSTEMS; else None. The file system is the
    one the path reaches, its device (`st_dev`) found in /proc/self/mountinfo: a tmpfs mounted over
    /proc's place is a tmpfs, and a folder opened after a check of its path is checked itself."""
    if isinstance(path, int):
        device = os.fstat(path).st_dev
        with contextlib.suppress(OSError):
            path = Path(os.readlink(f"/proc/self/fd/{path}"))  # for the mount point said, if it can be known
    else:
        path = Path(os.path.realpath(path))
        while True:
            try:
                device = os.stat(path).st_dev
                break
            except OSError:
                if path == path.parent:
                    return None
                path = path.parent
    at = path
    kernel = [(kind, point) for point, kind, dev in _mounts() if dev == device and kind in KERNEL_FILE_SYSTEMS]
    # The mount it is under, of those of its device (a bind mount of /proc's /proc/sys is /proc's too).
    kernel.sort(key=lambda m: -len(m[1]) if isinstance(at, Path) and at.is_relative_to(m[1]) else 0)
    return kernel[0] if kernel else None


_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")


def remove_tree(folder: Path) -> None:
    """Remove a folder of this process's own making (a drill's scratch copy), also where restored
    modes (a 0500 folder) would stand in the way; what still cannot be removed stays."""

    def fix(func: Callable[..., object], path: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, 0o700)
            func(path)

    shutil.rmtree(folder, onerror=fix)
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
