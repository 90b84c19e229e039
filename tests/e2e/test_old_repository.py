"""A repository written by the first Phoenix (commit 21ef4908, format 1) stays readable and writable.

tests/corpus/repository-v1-21ef4908 was written by that commit's `phx init --encryption passphrase`
(scrypt n=2**12, so the test derives the key cheaply) and two `phx backup` runs of a tiny workspace:
MEMORY.md, SOUL.md, memory/ notes and one SQLite store (memory.db) with a change between them.
This Phoenix must list it, verify every byte, restore both snapshots byte- and row-equal, back up on
top of it (upgrading it to format 2, deduplicating against the old packs) and restore the old
snapshots again afterwards (docs/repository-format.md, "Compatibility").
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from e2e_support import run_phx_here

pytestmark = pytest.mark.phx_in_process

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "repository-v1-21ef4908"
PASSPHRASE = "compat corpus 21ef4908"

FIRST = "de9dcfeb"
SECOND = "37348098"
FILES = {
    FIRST: {
        "workspace/MEMORY.md": b"# Memory\n- the user likes tea\n",
        "workspace/SOUL.md": b"# Soul\nkind and careful\n",
        "workspace/memory/2026-11-20.md": b"day one\n",
    },
    SECOND: {
        "workspace/MEMORY.md": b"# Memory\n- the user likes tea\n- and biscuits\n",
        "workspace/SOUL.md": b"# Soul\nkind and careful\n",
        "workspace/memory/2026-11-20.md": b"day one\n",
        "workspace/memory/2026-11-21.md": b"day two\n",
    },
}
ROWS = {
    FIRST: sorted((f"m{i}", f"fact number {i}", i / 10) for i in range(20)),
    SECOND: sorted([*((f"m{i}", f"fact number {i}", i / 10) for i in range(20) if i != 3), ("m99", "a new fact", 9.9)]),
}


def _env(root: Path) -> dict[str, str]:
    home = root / "home"
    (home / ".argentos").mkdir(parents=True, exist_ok=True)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "PHX_CONFIG": str(root / "backup.json"),
        "PHX_PASSPHRASE": PASSPHRASE,
        "PHX_CACHE_DIR": str(root / "cache"),
        "XDG_CACHE_HOME": str(root / "xdg-cache"),
        "XDG_CONFIG_HOME": str(root / "xdg-config"),
        "XDG_DATA_HOME": str(root / "xdg-data"),
    }


def _restored(dest: Path) -> tuple[dict[str, bytes], list[tuple[object, ...]]]:
    files = {
        p.relative_to(dest).as_posix(): p.read_bytes() for p in sorted((dest / "workspace").rglob("*")) if p.is_file()
    }
    db = dest / "home" / ".argentos" / "memory.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = sorted(conn.execute("SELECT id, content, score FROM memory_items"))
    return files, rows


def _check_restores(env: dict[str, str], repo: Path, dest: Path, ids: dict[str, str]) -> None:
    for short, full in ids.items():
        target = dest / short
        run_phx_here(["--repo", str(repo), "restore", "--backup", full, "--to", str(target)], env)
        files, rows = _restored(target)
        assert files == FILES[short]
        assert rows == ROWS[short]


def test_a_format_1_repository_of_the_first_phoenix_is_read_restored_and_backed_up_on(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(CORPUS, repo)
    env = _env(tmp_path)
    workspace = tmp_path / "workspace"
    config = {
        "workspace": str(workspace),
        "backupDir": str(repo),
        "include": [],
        "exclude": [],
        "encryption": {"enabled": True, "method": "passphrase"},
        "databases": {"sqlite": ["~/.argentos/memory.db"], "integrityCheckEvery": "0h"},
    }
    Path(env["PHX_CONFIG"]).write_text(json.dumps(config))

    listed = json.loads(run_phx_here(["--repo", str(repo), "list", "--json"], env).out)
    ids = {s["id"][:8]: s["id"] for s in listed}
    assert list(ids) == [FIRST, SECOND]

    run_phx_here(["--repo", str(repo), "verify", "--read-data"], env)
    _check_restores(env, repo, tmp_path / "restored", ids)

    # Back up on top with this Phoenix: the first backup upgrades the repository to format 2.
    shutil.copytree(tmp_path / "restored" / SECOND / "workspace", workspace)
    db = Path(env["HOME"]) / ".argentos" / "memory.db"
    shutil.copy2(tmp_path / "restored" / SECOND / "home" / ".argentos" / "memory.db", db)
    packs_before = {p.name for p in (repo / "data").rglob("*") if p.is_file()}
    run_phx_here(["backup"], env)
    assert json.loads((repo / "config").read_text())["version"] == 2
    after = json.loads(run_phx_here(["list", "--json"], env).out)
    assert [s["id"] for s in after[:2]] == list(ids.values())
    # Nothing changed since the second snapshot: the new one is its child and reuses the old
    # file blobs (new trees and the database's copy are the bytes it adds).
    assert after[2]["parent"] == ids[SECOND], after[2]
    assert after[2]["added"] < after[2]["size"] // 2, after[2]
    assert packs_before <= {p.name for p in (repo / "data").rglob("*") if p.is_file()}

    run_phx_here(["verify", "--read-data"], env)
    _check_restores(env, repo, tmp_path / "again", ids)
