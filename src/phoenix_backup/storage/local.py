"""Objects as files in a local directory: temp file, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import resource
import shutil
import stat
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from phoenix_backup.dirs import make_dirs
from phoenix_backup.errors import (
    NoSpace,
    ObjectExists,
    ObjectNotFound,
    ReadOnlyStorage,
    RepositoryExists,
    StorageError,
    UsageError,
    shown,
)
from phoenix_backup.storage.base import (
    CONFIG_TEMP,
    FOLDERS,
    TEMP_MARKER,
    Backend,
    ObjectInfo,
    is_slot_of,
    is_valid_name,
    refuse_oversized,
    validate_name,
)
from phoenix_backup.units import human_size

_FOLDERS = FOLDERS
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# Packs kept open for ranged reads (see _Readers): a restore reads thousands of ranges, most of
# them from the pack the one before was read from.
OPEN_PACKS = 8


def real_path(path: Path) -> Path:
    """`path` with `~` expanded and every symbolic link followed (`Path.resolve`), or a clear error
    when links lead round in a loop (which `resolve` raises as a bare RuntimeError on Python 3.11)."""
    try:
        return path.expanduser().resolve()
    except RuntimeError as exc:  # "Symlink loop from ..."
        raise StorageError(
            f"{path} is a loop of symbolic links (one leads back to another); "
            "remove or correct the link, or choose another path"
        ) from exc


def refuse_inside(repository: Path, folder: Path, what: str) -> None:
    """A folder that receives plain copies of files (`restore --to DIR`, `export --output DIR`)
    must not lie in a local repository: the plain copies would sit among its encrypted objects,
    and go wherever the repository's folder is copied or synced to. The folders themselves are
    compared too, not only their paths: a bind mount, or another spelling on a case-insensitive file
    system, reaches the repository's folder under a path that is not below its own."""
    root = real_path(repository)
    if is_inside(root, folder):
        raise UsageError(
            f"{what} {folder} is inside the repository at {root}, which would put plain copies of your files "
            "among its objects; choose a folder outside it"
        )


def is_inside(root: Path, folder: Path) -> bool:
    """Whether `folder` is the folder `root` or lies below it: by path (links followed) or, for a
    bind mount or another spelling on a case-insensitive file system, by device and inode."""
    root = real_path(root)
    real = real_path(folder)
    return real == root or root in real.parents or _same_folder_above(root, real)


def _same_file_system(a: Path, b: Path | None) -> bool:
    try:
        return b is not None and os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def repository_above(folder: Path) -> Path | None:
    """The local Phoenix repository that `folder` (resolved: links followed) lies in, whichever
    target a command reads: a folder holding a `config` file and the folders `data`, `index` and
    `snapshots` (what `phx init` makes), `folder` itself or a folder above it."""
    real = real_path(folder)
    return next((above for above in (real, *real.parents) if _holds_repository(above)), None)


def repositories_below(folder: Path, *, looks: int = 1000) -> list[Path]:
    """The local Phoenix repositories in the folders right below `folder` (a `--repo` that names
    the folder the repository was copied into; a disk may hold the repositories of several
    machines: each is named, none picked), sorted, looking at `looks` entries at most."""
    found = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for n, entry in enumerate(entries):
            if n >= looks:
                break
            if entry.is_dir(follow_symlinks=False) and _holds_repository(Path(entry.path)):
                found.append(Path(entry.path))
    return sorted(found)


def _holds_repository(folder: Path) -> bool:
    """A `config` file and the folders `data`, `index` and `snapshots` (what `phx init` makes)."""
    return (folder / "config").is_file() and all((folder / f).is_dir() for f in ("data", "index", "snapshots"))


def _destination_error(exc: OSError, what: str, destination: Path, need: int, repository: Path | None) -> StorageError:
    existing = next((p for p in (destination, *destination.parents) if p.exists()), Path("/"))
    mount = existing
    with contextlib.suppress(OSError):
        while mount != mount.parent and os.stat(mount.parent).st_dev == os.stat(mount).st_dev:
            mount = mount.parent
    disk = f"the disk of {destination} (the file system mounted at {mount}"
    if exc.errno == errno.EIO:
        if _same_file_system(existing, repository):  # the failing disk holds the repository too
            return StorageError(
                f"Input/output error while {what}: {disk}) failed to write, and it holds the repository at "
                f"{repository} too; check that disk (`dmesg`), then run `phx verify`"
            )
        return StorageError(
            f"Input/output error while {what}: {disk}) failed to write; check that disk (`dmesg`) and run again, "
            "or choose a destination on another disk (the repository is not involved)"
        )
    needed = f"this file alone needs {human_size(need)}; " if need else ""
    if exc.errno == errno.EDQUOT:  # the disk may have room: the quota of this user there is used up
        return NoSpace(
            f"disk quota exceeded on {disk}) while {what}; {needed}free space within your quota there "
            "(`quota -s`) or choose a destination on another disk, then run again"
        )
    try:
        free = human_size(shutil.disk_usage(existing).free)
    except OSError:
        free = "unknown"
    return NoSpace(
        f"no space left on {disk}, {free} free) while {what}; {needed}free space there or choose a destination "
        "on another disk, then run again"
    )


def _same_folder_above(root: Path, path: Path) -> bool:
    """Whether `path`, or a folder above it that exists, is the folder `root` (device and inode)."""
    try:
        top = os.stat(root)
    except OSError:
        return False
    for step in (path, *path.parents):
        try:
            if os.path.samestat(top, os.stat(step)):
                return True
        except OSError:
            continue  # not created yet
    return False


def os_error(
    exc: OSError, what: str, *, destination: Path | None = None, need: int = 0, repository: Path | None = None
) -> StorageError:
    """Turn an OSError into one sentence with the cause and the fix. `destination`: the error came
    from writing there (a restore's or an export's output, not the repository): a full disk or an
    I/O error names that path and its file system (with the space it has, and `need` bytes, the
    least the write needs), and does not send the user to the repository, unless that file system
    holds `repository` (the local repository's folder) too."""
    if destination is not None and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
        return _destination_error(exc, what, destination, need, repository)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"no space left on the device while {what}; free some space and run again")
    if exc.errno in (errno.EACCES, errno.EPERM):
        # EPERM, not EACCES, is also what an immutable or append-only file or folder answers.
        also = " (an immutable or append-only attribute counts too: `lsattr -d`)" if exc.errno == errno.EPERM else ""
        # The name an error of a call relative to a folder descriptor carries is relative: the
        # destination, when there is one, is the path the user can check.
        check = f"{shown(destination)} and of the folder holding it" if destination is not None else exc.filename
        return StorageError(f"permission denied while {what}; check the owner and mode of {check}{also}")
    if exc.errno == errno.EMFILE:
        return StorageError(
            f"too many open files while {what}: this process may open {_open_files_limit()} (`ulimit -n`); "
            f"raise that limit (`ulimit -n {_more_open_files()}`) and run again"
        )
    if exc.errno == errno.ENFILE:
        return StorageError(
            f"the system's table of open files is full while {what}; close programs that hold many files, "
            "or raise the system's limit (`sysctl fs.file-max`), and run again"
        )
    if exc.errno == errno.ENOENT and destination is not None:
        # A folder the restore opened, or the destination itself, removed or moved while it ran.
        return StorageError(
            f"a folder is gone while {what} ({shown(destination)} or a folder above it was "
            "removed or moved while the command ran); check that nothing else removes or moves it, and run again"
        )
    if exc.errno == errno.EFBIG:
        return StorageError(
            f"a file size limit of this process (`ulimit -f`: {_file_size_limit()}) stopped {what}; "
            "raise it (`ulimit -f unlimited`) and run again"
        )
    if exc.errno == errno.EROFS:
        return ReadOnlyStorage(f"read-only file system while {what}; choose a writable location")
    if exc.errno == errno.EIO:
        return StorageError(
            f"Input/output error while {what}: the device failed to read or write; check the disk (`dmesg`), "
            "then run `phx verify` and the command again"
        )
    if exc.errno == errno.ELOOP:
        return StorageError(
            f"{exc.filename} is a loop of symbolic links (one leads back to another) while {what}; "
            "remove or correct the link, or choose another path"
        )
    if exc.errno == errno.ENOTDIR and isinstance(exc.filename, str) and exc.filename.startswith("/"):
        path = Path(exc.filename)
        steps = (*reversed(path.parents), path)
        blocker = next((p for p in steps if (p.is_symlink() or p.exists()) and not p.is_dir()), None)
        if blocker is not None and not blocker.exists():  # a link to nothing
            return StorageError(
                f"{blocker} is a symbolic link to {os.readlink(blocker)}, which does not exist, while {what}; "
                "create what it names or choose another path"
            )
        if blocker is not None:
            return StorageError(
                f"{shown(blocker)} is {_kind_of(blocker)}, not a folder, while {what}; "
                "move it away or choose another path"
            )
    return StorageError(f"{exc.strerror or exc} while {what}")


def _kind_of(path: Path) -> str:
    """What `path`, which is not a folder, is: "a file", "a FIFO", "a character device"..."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "a file"
    kinds = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
    return kinds.get(stat.S_IFMT(mode), "a socket" if stat.S_ISSOCK(mode) else "a file")


class LocalBackend(Backend):
    kind = "local"

    def __init__(self, root: Path, notice: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        self.notice = notice or (lambda _m: None)
        self._skipped: set[str] = set()  # entries not listed for not being files, told once each
        self._readers = _Readers()
        weakref.finalize(self, self._readers.close)

    @property
    def location(self) -> str:
        return str(self.root)

    @contextlib.contextmanager
    def _folder(self, parts: list[str], *, create: bool = False) -> Iterator[int]:
        """A descriptor of the folder `parts` below the root (`["data", "ab"]`), each opened
        without following a symbolic link. Phoenix never makes a link there: one that someone who
        can write the storage planted (or that a Git remote checked out into the clone) would
        lead reads, writes and deletes out of the repository, so it is refused. The root is the
        user's own choice, and a link to it is followed. With `create`, missing folders are made,
        each made durable in its parent."""
        if create:
            make_dirs(self.root)
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for i, part in enumerate(parts):
                try:
                    sub = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):  # or made by another process meanwhile
                        os.mkdir(part, 0o700, dir_fd=fd)
                        os.fsync(fd)
                    sub = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise self._not_a_folder(fd, "/".join(parts[: i + 1])) from exc
                    raise
                os.close(fd)
                fd = sub
            yield fd
        finally:
            os.close(fd)

    def _not_a_folder(self, parent: int, folder: str) -> StorageError:
        path = self.root / folder
        try:
            target = os.readlink(folder.rsplit("/", 1)[-1], dir_fd=parent)
        except OSError:
            return StorageError(f"{path} is not a folder; move it away (Phoenix keeps its objects in a folder there)")
        return StorageError(
            f"{path} is a symbolic link to {target}, not a folder; Phoenix never makes one in a repository, "
            "so someone who can write the storage did (or a Git remote holds one); nothing was read or written "
            "through it; replace it with the folder it should be"
        )

    @contextlib.contextmanager
    def _parent(self, name: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """The folder of object `name`, open (see `_folder`), and the object's name in it."""
        *folders, base = validate_name(name).split("/")
        with self._folder(folders, create=create) as fd:
            yield fd, base

    def exists(self) -> bool:
        return (self.root / "config").is_file()

    def create(self, slots: Mapping[str, bytes] | None = None) -> None:
        if self.exists():
            raise RepositoryExists(f"a repository already exists at {self.root}; it was left untouched")
        try:
            if self.root.exists() and any(self.root.iterdir()):
                if not self._interrupted_init():
                    raise RepositoryExists(
                        f"{self.root} is not empty and holds no Phoenix repository; choose an empty or new folder"
                    )
                # An `init` killed before it wrote `config` left only folders, maybe a key slot
                # for secrets that were never used and the config's temporary file: start over (a
                # stale slot would open with the wrong secrets).
                # Through folder handles: a `keys` that is a link must not empty the folder it names.
                for parts in (["keys"], []):
                    with self._folder(parts) as fd:
                        for entry in list(os.scandir(fd)):
                            if parts and is_slot_of(slots, f"keys/{entry.name}", self.read):
                                continue  # a racing copy of the same repository wrote it
                            if parts or entry.name.startswith(CONFIG_TEMP):
                                os.unlink(entry.name, dir_fd=fd)
            for folder in _FOLDERS:
                with self._folder([folder], create=True):
                    pass
            with self._folder(["data"]) as fd:
                for i in range(256):
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(f"{i:02x}", 0o700, dir_fd=fd)
                # The folders' entries are durable before any object is written into them.
                os.fsync(fd)
        except OSError as exc:
            raise os_error(exc, f"creating the repository folder {self.root}") from exc

    def _interrupted_init(self) -> bool:
        """True when the folder holds exactly what an interrupted `create` + first key leaves."""
        names = {e.name for e in os.scandir(self.root) if not e.name.startswith(CONFIG_TEMP)}
        if not names <= set(_FOLDERS) or "keys" not in names:
            return False
        for folder in ("runkeys", "index", "snapshots", "locks"):
            if (self.root / folder).is_dir() and any((self.root / folder).iterdir()):
                return False
        data = self.root / "data"
        return not data.is_dir() or not any(any(sub.iterdir()) for sub in data.iterdir() if sub.is_dir())

    def read(self, name: str) -> bytes:
        try:
            with self._open(name) as fd:
                refuse_oversized(name, os.fstat(fd).st_size, str(self.root))
                with os.fdopen(os.dup(fd), "rb") as f:
                    return f.read()
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"object {name} is missing from {self.root}") from exc
        except OSError as exc:
            raise os_error(exc, f"reading {name} from {self.root}") from exc

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        with self._range(name, offset, length) as fd:
            data = os.pread(fd, length, offset)
        if len(data) != length:
            raise self._short(name)
        return data

    def read_range_into(self, name: str, offset: int, buf: memoryview) -> int:
        if not name.startswith("data/"):
            with self._range(name, offset, len(buf)) as fd:
                got = os.preadv(fd, [buf], offset)
        else:
            # A pack is read range after range: its descriptor is kept (`_Readers`) instead of the
            # folders and the pack being opened, checked and closed for each one, eleven system
            # calls a range, each of them a hand-over of the GIL (issue 20). It was opened and
            # checked as `_range` does; a pack cut short since reads short and is refused below.
            with self._readers.use(name, functools.partial(self._open_reader, name)) as (fd, size):
                if offset + len(buf) > size:
                    raise self._short(name)
                try:
                    got = os.preadv(fd, [buf], offset)
                except OSError as exc:
                    raise os_error(exc, f"reading {name} from {self.root}") from exc
        if got != len(buf):
            raise self._short(name)
        return got

    def _open_reader(self, name: str) -> tuple[int, int]:
        """A new descriptor of the object `name` and its size, as `_range` opens it."""
        try:
            with self._open(name) as fd:
                kept = os.dup(fd)
                return kept, os.fstat(kept).st_size
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"object {name} is missing from {self.root}") from exc
        except OSError as exc:
            raise os_error(exc, f"reading {name} from {self.root}") from exc

    def close(self) -> None:
        self.close_readers()

    def close_readers(self) -> None:
        self._readers.close()

    @contextlib.contextmanager
    def _range(self, name: str, offset: int, length: int) -> Iterator[int]:
        """A descriptor of the object `name` for one pread of `length` bytes at `offset` (a
        restore reads thousands of ranges: no buffered file object). An object too short for it
        is refused before anything is read: pread allocates `length` first, and an index entry
        may claim gigabytes past the end. OS errors of the read become one sentence."""
        try:
            with self._open(name) as fd:
                if offset + length > os.fstat(fd).st_size:
                    raise self._short(name)
                yield fd
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"object {name} is missing from {self.root}") from exc
        except OSError as exc:
            raise os_error(exc, f"reading {name} from {self.root}") from exc

    @contextlib.contextmanager
    def _open(self, name: str) -> Iterator[int]:
        """A descriptor of the file of object `name`. Something else under its name (a folder, a
        pipe, which a plain open would wait on forever) is refused in one sentence."""
        with self._parent(name) as (folder, base):
            try:
                fd = os.open(base, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW, dir_fd=folder)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                raise StorageError(
                    f"{name} in {self.root} is a symbolic link Phoenix did not write; it was not followed; remove it"
                ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StorageError(
                    f"{name} in {self.root} is not a file (a folder or a pipe Phoenix did not write); remove it"
                )
            yield fd
        finally:
            os.close(fd)

    def _short(self, name: str) -> ObjectNotFound:
        return ObjectNotFound(f"object {name} in {self.root} is shorter than the index says")

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        # `cold` means nothing on a local disk: every file is equally readable.
        try:
            with self._parent(name, create=True) as (folder, base):
                self._write_in(folder, base, name, data, exclusive)
        finally:
            # A descriptor kept of the file this replaced would go on reading it (a damaged pack
            # that `phx repair objects` wrote a good copy over): the next read opens the new one.
            if name.startswith("data/"):
                self._readers.forget(name)

    def _write_in(self, folder: int, base: str, name: str, data: bytes, exclusive: bool) -> None:
        tmp = f"{TEMP_MARKER}{base}.{os.urandom(4).hex()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
                if len(data) >= DROP_CACHED_MIN:
                    _drop_cached(fd)
            finally:
                os.close(fd)
            if exclusive:
                # link() fails if the name exists: an atomic "create if absent" on POSIX.
                os.link(tmp, base, src_dir_fd=folder, dst_dir_fd=folder)
                os.unlink(tmp, dir_fd=folder)
            else:
                os.replace(tmp, base, src_dir_fd=folder, dst_dir_fd=folder)
            os.fsync(folder)
        except FileExistsError as exc:
            _unlink_quietly(tmp, folder)
            raise ObjectExists(f"object {name} already exists in {self.root}") from exc
        except OSError as exc:
            _unlink_quietly(tmp, folder)
            raise os_error(exc, f"writing {name} to {self.root}") from exc
        except BaseException:  # Ctrl-C, SIGTERM: the half-written file goes too
            _unlink_quietly(tmp, folder)
            raise

    def delete(self, name: str) -> None:
        try:
            with self._parent(name) as (folder, base):
                os.unlink(base, dir_fd=folder)
                os.fsync(folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise os_error(exc, f"deleting {name} from {self.root}") from exc
        finally:
            if name.startswith("data/"):
                self._readers.forget(name)  # its space is freed when the last descriptor closes

    def stat(self, name: str) -> ObjectInfo | None:
        try:
            with self._parent(name) as (folder, base):
                st = os.stat(base, dir_fd=folder)
            return ObjectInfo(name, st.st_size, modified=st.st_mtime)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise os_error(exc, f"reading {name} in {self.root}") from exc

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        folder = prefix.rstrip("/")
        try:
            # Only names of the format's shapes: a planted `keys/evil` or `snapshots/x y` is none of
            # ours, and must neither reach the file system nor stop the repository from opening.
            # The entries are collected before they are yielded: the folder stays open only here.
            if folder == "data":
                found: list[ObjectInfo] = []
                with self._folder(["data"]) as fd:
                    subs = sorted(e.name for e in os.scandir(fd) if e.is_dir(follow_symlinks=False))
                for sub in subs:
                    with self._folder(["data", sub]) as fd:
                        found += filter(None, (self._listed(f"data/{sub}/{e.name}", e) for e in os.scandir(fd)))
                    yield from found
                    found.clear()
            else:
                with self._folder([folder]) as fd:
                    listed = [self._listed(f"{folder}/{e.name}", e) for e in os.scandir(fd)]
                yield from filter(None, listed)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise os_error(exc, f"listing {prefix} in {self.root}") from exc

    def _listed(self, name: str, entry: os.DirEntry[str]) -> ObjectInfo | None:
        """The object an entry of a listing is, if it is one: a file under a name of the format.
        Anything else someone put there (a folder, a pipe, a dangling symlink) is none of ours;
        reading it would fail (or, for a pipe, wait forever), so it is skipped, with a notice."""
        if TEMP_MARKER in entry.name or not is_valid_name(name):
            return None
        try:
            st = entry.stat(follow_symlinks=False)  # a link is none of ours: reading it would follow it
        except OSError as exc:
            self._skip(name, f"cannot be examined ({exc.strerror or exc})")
            return None
        if not stat.S_ISREG(st.st_mode):
            self._skip(name, "is not a file (a folder or a pipe Phoenix did not write)")
            return None
        return ObjectInfo(name, st.st_size, modified=st.st_mtime)

    def _skip(self, name: str, why: str) -> None:
        if name not in self._skipped:
            self._skipped.add(name)
            self.notice(f"skipped {name} in {self.root}: it {why}; remove it")

    def list_temporary(self) -> Iterator[ObjectInfo]:
        found: list[ObjectInfo] = []
        # Through folder handles, no link followed (`_folder`): the ages are those of the files here.
        for dirpath, _dirs, files, fd in os.fwalk(self.root):
            for f in files:
                if f.startswith(TEMP_MARKER):
                    with contextlib.suppress(FileNotFoundError):
                        st = os.stat(f, dir_fd=fd, follow_symlinks=False)
                        rel = os.path.relpath(os.path.join(dirpath, f), self.root)
                        found.append(ObjectInfo(rel, st.st_size, modified=st.st_mtime))
        return iter(found)

    def delete_temporary(self, name: str) -> None:
        """Through folder handles (`_folder`): a folder swapped for a link since the listing is
        refused, never a file in the link's target deleted."""
        *folders, base = name.split("/")
        if not base.startswith(TEMP_MARKER) or any(p in ("", ".", "..") for p in folders):
            raise StorageError(f"{name} is not a temporary file of {self.root}")
        try:
            with self._folder(folders) as fd:
                os.unlink(base, dir_fd=fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise os_error(exc, f"deleting {name} from {self.root}") from exc


class _Readers:
    """Descriptors of the packs read last, at most OPEN_PACKS, shared by the threads that read
    ranges. One in use by a thread is closed only when that thread is done with it, so a
    descriptor is never closed (and its number reused for another file) under a read. One opened
    before a `forget` or `close` that ended while it was being opened serves only that read: it
    may be of the file that was deleted or replaced meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: OrderedDict[str, list[int]] = OrderedDict()  # name -> [fd, size, users]
        self._retired: list[list[int]] = []  # evicted while in use: closed by their last user
        self._forgotten = 0  # how many `forget`s and `close`s there were

    @contextlib.contextmanager
    def use(self, name: str, opener: Callable[[], tuple[int, int]]) -> Iterator[tuple[int, int]]:
        with self._lock:
            entry = self._open.get(name)
            if entry is not None:
                self._open.move_to_end(name)
                entry[2] += 1
        if entry is None:
            forgotten = self._forgotten
            fd, size = opener()  # outside the lock: the other readers go on meanwhile
            entry = [fd, size, 1]
            with self._lock:
                # Another thread opened it meanwhile (keep one), or it may be of a file deleted or
                # replaced meanwhile: this read only.
                if name in self._open or self._forgotten != forgotten:
                    self._retired.append(entry)
                else:
                    self._open[name] = entry
                    while len(self._open) > OPEN_PACKS:
                        self._retire(self._open.popitem(last=False)[1])
        try:
            yield entry[0], entry[1]
        finally:
            with self._lock:
                entry[2] -= 1
                if entry[2] == 0 and any(e is entry for e in self._retired):
                    self._retired = [e for e in self._retired if e is not entry]
                    os.close(entry[0])

    def _retire(self, entry: list[int]) -> None:
        if entry[2] == 0:
            os.close(entry[0])
        else:
            self._retired.append(entry)

    def forget(self, name: str) -> None:
        with self._lock:
            self._forgotten += 1
            entry = self._open.pop(name, None)
            if entry is not None:
                self._retire(entry)

    def close(self) -> None:
        with self._lock:
            self._forgotten += 1
            while self._open:
                self._retire(self._open.popitem(last=False)[1])


def _open_files_limit() -> str:
    """How many files this process may open (RLIMIT_NOFILE's soft limit), as `ulimit -n` sets it."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return "any number of files" if soft == resource.RLIM_INFINITY else f"{soft} files"


def _more_open_files() -> int:
    """A limit of open files to suggest: above the present one (4096 was advice to lower a limit of
    20,000), 4096 at least."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 4096 if soft == resource.RLIM_INFINITY else max(4096, 2 * soft)


def _file_size_limit() -> str:
    """The file size limit of this process (RLIMIT_FSIZE), as `ulimit -f` sets it, in words."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return "none" if limit == resource.RLIM_INFINITY else f"{limit} bytes"


# Objects at least this large (data packs) leave the page cache once written (`_drop_cached`).
# Smaller ones (the index object, the snapshot, tree packs, locks) stay: the retention that
# follows a backup, and the next command, read them again at once.
DROP_CACHED_MIN = 1024 * 1024


def _drop_cached(fd: int) -> None:
    """Drop a written and synced file from the page cache, as borg does. Packs are rarely read
    soon; kept cached they would push the user's working set out, and the freed (still warm)
    pages serve the next pack instead of fresh ones. Only a hint: a file system that refuses it
    (some network or container file systems do) loses nothing."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _unlink_quietly(name: str, folder: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=folder)
