"""`phx dump ID PATH`: one file's (or database copy's) exact bytes from a snapshot, to stdout."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from phoenix_backup.config import Config
from phoenix_backup.errors import OutputFailed, UsageError
from phoenix_backup.ops.context import Environment, find_snapshot, open_repository, require_identity
from phoenix_backup.repo.reader import NodeReader
from phoenix_backup.repo.snapshot import unchecked_copy_note
from phoenix_backup.repo.walker import node_at
from phoenix_backup.sources.layout import logical_path

# `phx dump` holds a file in memory up to this size before spilling to a temporary file: nothing
# reaches stdout until the whole file matched its SHA-256.
_SPOOL_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class DumpResult:
    snapshot: str
    name: str
    path: str
    type: str
    size: int
    sha256: str

    @property
    def exit_status(self) -> int:
        return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "name": self.name,
            "path": self.path,
            "type": self.type,
            "size": self.size,
            "sha256": self.sha256,
        }


def dump(
    cfg: Config,
    envx: Environment,
    *,
    ref: str,
    path: str,
    out: BinaryIO,
    target: str | None = None,
) -> DumpResult:
    """Write one file's (or database copy's) exact bytes to `out`.

    The bytes are gathered (in memory, spilling to a temporary file past 32 MiB) and checked
    against the snapshot's SHA-256 first, so `out` never receives a damaged or partial file.
    """
    repo = open_repository(cfg, envx, target=target)
    require_identity(repo)
    with repo.lock(exclusive=False, command="dump"):
        repo.load_index()
        snap = find_snapshot(cfg, envx, repo, ref)
        logical = logical_path(snap.sources, path)
        if not logical:
            raise UsageError("name a file to dump (see `phx ls ID`); use `phx archive` for the whole snapshot")
        node = node_at(repo, snap, logical)
        if node.type == "dir":
            raise UsageError(f"{logical} is a folder; list it with `phx ls` or take it whole with `phx archive`")
        if node.type == "symlink":
            raise UsageError(f"{logical} is a symlink to {node.link_target!r}; dump the file it points to")
        if node.type == "sqlite":
            note = unchecked_copy_note(logical, node.sqlite.get("integrity") if node.sqlite else None)
            if note:
                envx.notice(f"warning: {note}")
        reader = NodeReader(repo, logical, node, prove=True)  # each blob proven, a good copy taken
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
            for chunk in reader.chunks():
                spool.write(chunk)
            reader.finish()
            spool.seek(0)
            try:
                shutil.copyfileobj(cast(BinaryIO, spool), out, 1 << 20)
                out.flush()
            except BrokenPipeError:
                raise  # the reader went away: cli/app.py `reader_gone`
            except OSError as exc:
                raise OutputFailed(exc.strerror or str(exc)) from exc
        assert node.sha256 is not None
        return DumpResult(snap.id, snap.name, logical, node.type, node.size, node.sha256)
