"""The local cache: only ever an accelerator. Losing it costs time (and for databases some
deduplication), never data; anything read from it is checked before it is trusted.

    <cache>/<repo id>/sqlite/<hash of logical path>.pages   page hashes of the last copy
    <cache>/<repo id>/tmp/run-<pid>-<start>/                 temporary database copies (0700)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import platformdirs

from phoenix_backup.errors import StorageError
from phoenix_backup.repo.chunker import HASH_SIZE, PageState
from phoenix_backup.repo.locks import process_start_time


def cache_root() -> Path:
    return Path(os.environ.get("PHX_CACHE_DIR") or platformdirs.user_cache_dir("phoenix"))


class Cache:
    def __init__(self, repo_id: str, root: Path | None = None) -> None:
        self.dir = (root or cache_root()) / repo_id
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

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
        return self.dir / "sqlite" / (hashlib.sha256(logical.encode()).hexdigest()[:32] + ".pages")

    def load_pages(self, logical: str, sha256: str) -> PageState | None:
        """The page hashes of the copy whose SHA-256 is `sha256`, if the cache holds them."""
        try:
            raw = self._pages_path(logical).read_bytes()
            head, _, body = raw.partition(b"\n")
            meta = json.loads(head)
            if meta.get("sha256") != sha256:
                return None
            nreg, npages = int(meta["regions"]), int(meta["pages"])
            if len(body) != (nreg + npages) * HASH_SIZE:
                return None
            return PageState(
                sha256,
                int(meta["pageSize"]),
                int(meta["runPages"]),
                body[: nreg * HASH_SIZE],
                body[nreg * HASH_SIZE :],
            )
        except (OSError, ValueError, KeyError):
            return None

    def save_pages(self, logical: str, state: PageState) -> None:
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
            tmp.write_bytes(json.dumps(meta).encode() + b"\n" + state.regions + state.pages)
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
