"""Append-only targets: Phoenix never deletes or overwrites an object there, locks aside.

A target marked `appendOnly` (or, on S3, given `objectLock`) is one that the backing-up machine
may only add to: whoever controls that machine (a compromised agent) must not be able to destroy
the history through Phoenix. So every write there is an exclusive creation, and deleting is
refused; `phx forget` and `phx prune` run on another machine whose config does not mark the target
append-only, with credentials that may delete.

- Locks (`locks/…`) are written, refreshed and removed as everywhere: they belong to one target,
  name a running process and must go when it ends.
- An object that already exists is left as it is. For a content-addressed object (packs, index
  objects, snapshots: named by the SHA-256 of their bytes) holding exactly the same bytes, that is
  success (an upload retried after a lost answer, a pack two runs made alike). Anything else is
  refused: the `config` and key slots are never replaced (format upgrades and key changes run on
  another machine, before the target is made append-only).
- This is Phoenix's own restraint. What the store enforces against the same credentials (S3
  Object Lock, a Git remote refusing force pushes) is `protection()`, which `phx doctor` shows.
"""

from __future__ import annotations

from phoenix_backup.errors import AppendOnlyRefused, ObjectExists
from phoenix_backup.storage.base import Backend
from phoenix_backup.storage.wrappers import WrappedBackend

_CONTENT_ADDRESSED = ("data/", "index/", "snapshots/", "captures/", "checks/", "retired/")


def refusal(target: str, what: str) -> str:
    """The one sentence that says an append-only target refuses `what`, and where to do it instead."""
    return (
        f"target {target} is append-only (targets.{target}.appendOnly or objectLock, in this config or in one this "
        "machine used for the same storage before, which append-only.json in its data dir remembers; while that file "
        "is damaged every target counts): Phoenix never "
        f"deletes or overwrites objects there, so {what} must run on another machine, whose config does not mark the "
        "target append-only, with credentials that may delete"
    )


class AppendOnlyBackend(WrappedBackend):
    """Refuses deletes and overwrites of everything but locks (module docstring)."""

    def __init__(self, inner: Backend, target: str) -> None:
        super().__init__(inner)
        self.target = target
        self.append_only = True

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        if name.startswith("locks/"):
            self.inner.write(name, data, exclusive=exclusive, cold=cold)
            return
        try:
            self.inner.write(name, data, exclusive=True, cold=cold)
        except ObjectExists:
            if exclusive:
                raise  # the caller asked for a new object (a key slot, an init's config)
            if name.startswith(_CONTENT_ADDRESSED) and self.inner.read(name) == data:
                return  # the same bytes are there already
            raise AppendOnlyRefused(refusal(self.target, f"replacing {name}")) from None

    def delete(self, name: str) -> None:
        if not name.startswith("locks/"):
            raise AppendOnlyRefused(refusal(self.target, f"deleting {name}"))
        self.inner.delete(name)
