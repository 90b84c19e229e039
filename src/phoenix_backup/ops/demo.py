"""`phx demo`: the quick start's main job on a generated sample agent workspace.

Generates an ArgentOS-like workspace (identity and memory markdown, daily notes, WAL-mode SQLite
stores with 768-dimension embeddings and FTS5), backs it up to a local repository, lists and
verifies it, restores it below a scratch folder and compares every file and every table.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from phoenix_backup.config import default_config_dict, parse_config
from phoenix_backup.errors import UsageError
from phoenix_backup.ops import backup as backup_op
from phoenix_backup.ops import list as list_op
from phoenix_backup.ops import restore as restore_op
from phoenix_backup.ops import verify as verify_op
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.repo.crypto import sha256_file
from phoenix_backup.sample import generate_workspace
from phoenix_backup.storage.local import os_error


@dataclass
class DemoResult:
    root: str
    steps: list[tuple[str, str]] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def text(self) -> str:
        lines = [f"{step:10} {detail}" for step, detail in self.steps]
        lines += [f"MISMATCH   {m}" for m in self.mismatches]
        lines.append(f"demo {'passed' if self.ok else 'FAILED'}; everything is in {self.root}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "root": self.root,
            "steps": [{"step": s, "detail": d} for s, d in self.steps],
            "mismatches": self.mismatches,
        }


def _holds_anything(folder: Path) -> bool:
    """Whether `--dir` holds anything; a folder that cannot be looked into (not readable, a file
    on the way) is said as such (`os_error`), never "not empty" nor an internal error."""
    try:
        return any(True for _ in folder.iterdir())
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise os_error(exc, f"looking into --dir {folder}") from exc


def run(envx: Environment, directory: Path | None, size: str, notice: Callable[[str], None]) -> DemoResult:
    root = Path(directory or tempfile.mkdtemp(prefix="phx-demo-")).absolute()
    if directory is not None and _holds_anything(root):
        # A demo builds its sample, repository and restore anew: in a folder an earlier demo (or
        # anything else) filled it would meet them half way.
        raise UsageError(f"--dir {root} is not empty; give a new or empty folder (or leave --dir out for a new one)")
    result = DemoResult(str(root))
    t = time.time()
    layout = generate_workspace(root / "sample", size=size)
    result.steps.append(("generate", f"{size} sample workspace in {root / 'sample'} ({time.time() - t:.1f} s)"))
    home = layout.home
    env = dict(envx.env)
    env["HOME"] = str(home)
    env.setdefault("PHX_CACHE_DIR", str(root / "cache"))
    # Encrypted like any repository `phx init` makes; a throwaway passphrase unless one is set.
    env.setdefault("PHX_PASSPHRASE", "phoenix demo passphrase")
    denv = Environment(env=env, notice=notice)
    data = default_config_dict(workspace=str(layout.workspace), repo=str(root / "repo"))
    data["include"] = []  # the whole workspace, excludes applied
    cfg = parse_config(data, root / "backup.json", env)
    open_repository(cfg, denv, create=True).close()  # what `phx init` does

    b = backup_op.backup(cfg, denv)
    result.steps.append(
        (
            "backup",
            f"snapshot {b.id and b.id[:8]}: {b.files} files, {b.size} bytes, "
            f"{b.added} bytes stored, {b.duration:.1f} s",
        )
    )
    snaps = list_op.list_snapshots(cfg, denv)
    result.steps.append(("list", f"{len(snaps)} snapshot(s): " + ", ".join(s.snapshot.name for s in snaps)))
    v = verify_op.verify(cfg, denv, read_data=True)
    result.steps.append(("verify", "ok" if v.ok else f"{len(v.errors)} error(s)"))
    if not v.ok:
        result.mismatches += [f"verify: {e.object}: {e.message}" for e in v.errors]
    dest = root / "restored"
    r = restore_op.restore(cfg, denv, ref="latest", to=dest)
    result.steps.append(("restore", f"{r.restored} files and databases to {dest}"))
    result.mismatches += compare(layout.workspace, dest / "workspace", exclude=cfg.exclude)
    for db in layout.databases:
        rel = db.relative_to(home)
        result.mismatches += compare_databases(db, dest / "home" / rel)
    result.steps.append(("compare", "files byte-equal and tables row-equal" if result.ok else "differences found"))
    return result


def compare(src: Path, dst: Path, exclude: tuple[str, ...]) -> list[str]:
    from phoenix_backup.sources.patterns import ExcludeSet

    ex = ExcludeSet(exclude, src)
    out = []
    for path in sorted(src.rglob("*")):
        if any(ex.excluded(p, p.is_dir()) for p in [path, *path.parents] if src in p.parents or p == path):
            continue
        if path.is_file() and not path.is_symlink():
            other = dst / path.relative_to(src)
            if not other.is_file() or _sha(path) != _sha(other):
                out.append(f"file {path.relative_to(src)} differs")
    return out


def _sha(path: Path) -> str:
    return sha256_file(path)


def compare_databases(a: Path, b: Path) -> list[str]:
    if not b.exists():
        return [f"database {b} is missing"]
    out = []
    ca = sqlite3.connect(f"file:{a}?mode=ro", uri=True)
    cb = sqlite3.connect(f"file:{b}?mode=ro", uri=True)
    try:
        if cb.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            out.append(f"database {b} fails integrity_check")
        tables = [
            r[0]
            for r in ca.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name"
            )
        ]
        for t in tables:
            q = f'SELECT * FROM "{t}" ORDER BY 1'
            if ca.execute(q).fetchall() != cb.execute(q).fetchall():
                out.append(f"table {t} of {a.name} differs")
    finally:
        ca.close()
        cb.close()
    return out
