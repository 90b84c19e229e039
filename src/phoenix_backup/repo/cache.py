"""The local cache: only ever an accelerator. Losing it costs time (and for databases some
deduplication), never data; anything read from it is checked before it is trusted.

    <cache>/<repo id>/sqlite/<hash of logical path>.pages   page hashes of the last copy
    <cache>/<repo id>/tmp/run-<pid>-<start>/                 temporary database copies (0700)
    <cache>/<repo id>/superseded/<index id>                  what an index object of a replica supersedes
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import blake3
import platformdirs

from phoenix_backup.dirs import make_dirs
from phoenix_backup.errors import ConfigError, StorageError
from phoenix_backup.repo.chunker import HASH_SIZE, FileSink, MemorySink, PageState, SpilledHashes
from phoenix_backup.repo.crypto import sha256_hex
from phoenix_backup.repo.locks import process_start_time

# The JSON line that begins a page-hash file is far shorter than this.
MAX_PAGES_HEADER = 4096
# Page hashes are copied into the cache file this many bytes at a time.
_COPY_BLOCK = 1 << 20


def entry_key(page_key: bytes, fingerprint: str, purpose: str) -> bytes:
    """The key that authenticates a cache's entries of what objects read from the store said (a
    capture segment's header, what an index object supersedes), one per `purpose`: the secret id
    key, bound to the sealing key's fingerprint (`phx key rotate` keeps the id key, and an entry of
    an object sealed with the old key must not stand for one that no longer opens)."""
    return blake3.blake3(f"phoenix v1 {purpose}\0".encode() + fingerprint.encode(), key=page_key).digest()


def entry_mac(key: bytes, name: str, rest: bytes) -> bytes:
    """The MAC of a cache entry holding `rest` for the object `name`."""
    return blake3.blake3(name.encode() + b"\0" + rest, key=key).digest()


def write_entry(folder: Path, file: str, data: bytes) -> None:
    """Write a cache entry whole or not at all; a cache that cannot be written only means the
    object is read from the store again next time."""
    with contextlib.suppress(OSError):
        make_dirs(folder)
        tmp = folder / f".{file}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, folder / file)


def cache_root() -> Path:
    """PHX_CACHE_DIR, else the platform's user cache folder. Always absolute, or a ConfigError (as
    `dirs.data_dir`): a relative one would move with the working directory, and with it the journals
    of killed restores and of PostgreSQL roles it holds (a scheduled run starts in another folder
    and would never find them)."""
    path = Path(os.environ.get("PHX_CACHE_DIR") or platformdirs.user_cache_dir("phoenix"))
    if not path.is_absolute():
        raise ConfigError(
            f"Phoenix's cache folder {str(path)!r} is not an absolute path (a relative PHX_CACHE_DIR, or HOME "
            "unset): it would move with the working directory; set PHX_CACHE_DIR to an absolute path"
        )
    return path


class Cache:
    def __init__(self, repo_id: str, root: Path | None = None) -> None:
        self.dir = (root or cache_root()) / repo_id
        try:
            make_dirs(self.dir)
        except OSError as exc:  # a file in its place, a read-only home folder
            raise StorageError(
                f"cannot write the cache folder {self.dir} ({exc.strerror or exc}); "
                "set PHX_CACHE_DIR to a writable folder"
            ) from exc

    # -- temporary copies ----------------------------------------------------------------

    def run_dir(self) -> Path:
        """A fresh 0700 folder for this run's temporary copies, after clearing dead runs' leftovers."""
        tmp = self.dir / "tmp"
        try:
            tmp.mkdir(exist_ok=True, mode=0o700)
            for entry in tmp.iterdir():
                if entry.name.startswith("run-") and not _run_alive(entry.name):
                    shutil.rmtree(entry, ignore_errors=True)
            start = process_start_time(os.getpid()) or 0
            path = tmp / f"run-{os.getpid()}-{start}"
            path.mkdir(exist_ok=True, mode=0o700)
            os.chmod(path, 0o700)
        except OSError as exc:  # a home folder mounted read-only (a rescue system), a full disk
            raise StorageError(
                f"cannot write the cache folder {tmp} ({exc.strerror or exc}); set PHX_CACHE_DIR to a writable folder"
            ) from exc
        return path

    # -- page hashes ---------------------------------------------------------------------

    def _pages_path(self, logical: str) -> Path:
        return self.dir / "sqlite" / (sha256_hex(logical.encode())[:32] + ".pages")

    def load_pages(self, logical: str, sha256: str) -> PageState | None:
        """The page hashes of the copy whose SHA-256 is `sha256`, if the cache holds them. The
        page hashes stay in the file (16 bytes a page: read a region at a time); close the
        state when done."""
        try:
            fd = os.open(self._pages_path(logical), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, min(size, MAX_PAGES_HEADER), 0)
            end = head.find(b"\n")
            if end < 0:
                raise ValueError("no header")
            meta = json.loads(head[:end])
            if meta.get("sha256") != sha256:
                raise ValueError("another copy")
            nreg, npages = int(meta["regions"]), int(meta["pages"])
            body = end + 1
            if nreg < 0 or npages < 0 or size - body != (nreg + npages) * HASH_SIZE:
                raise ValueError("truncated")
            regions = os.pread(fd, nreg * HASH_SIZE, body)
            if len(regions) != nreg * HASH_SIZE:
                raise ValueError("truncated")
            pages = SpilledHashes(fd, body + nreg * HASH_SIZE, npages * HASH_SIZE)
            return PageState(sha256, int(meta["pageSize"]), int(meta["runPages"]), regions, pages)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            os.close(fd)
            return None

    def page_sink(self) -> FileSink | MemorySink:
        """Where a backup writes a copy's page hashes: an anonymous file in the cache, or memory
        when the cache cannot take one (a full disk must not keep a database from being saved)."""
        folder = self.dir / "sqlite"
        try:
            folder.mkdir(exist_ok=True, mode=0o700)
            return FileSink(folder)
        except OSError:
            return MemorySink()

    def save_pages(self, logical: str, state: PageState) -> None:
        if state.regions and not state.pages:
            return  # the page hashes could not be kept (a full disk): no state is better than half
        path = self._pages_path(logical)
        path.parent.mkdir(exist_ok=True, mode=0o700)
        meta = {
            "sha256": state.sha256,
            "pageSize": state.page_size,
            "runPages": state.run_pages,
            "regions": len(state.regions) // HASH_SIZE,
            "pages": len(state.pages) // HASH_SIZE,
        }
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(json.dumps(meta).encode() + b"\n" + state.regions)
                for pos in range(0, len(state.pages), _COPY_BLOCK):
                    f.write(state.pages[pos : pos + _COPY_BLOCK])
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a cache that cannot be written only costs time


def _run_alive(name: str) -> bool:
    try:
        _, pid, start = name.split("-")
        current = process_start_time(int(pid))
    except ValueError:
        return False
    return current is not None and (current == 0 or str(current) == start)
