#!/usr/bin/env python3
"""Phoenix against restic, borg, the ArgentOS tar.gz approach and a `tar | zstd` floor (issue #3).

One command, one generated workspace, every tool run side by side on the same state::

    .venv/bin/python bench/run.py --size medium --days 7

Steps per tool: full backup, no-change backup, one backup after each simulated day, full
restore of the last snapshot into a fresh folder (checked equal to the source). Each step is
timed with ``/usr/bin/time -v`` (wall, user+sys CPU, peak RSS) and followed by ``du -sb`` of the
tool's repository. Each simulated day is also measured for the bytes that really changed:
SQLite pages that differ between consistent copies taken before and after the day (plus pages
added) and the sizes of new or changed workspace files.

Results: ``bench/results/<size>.json`` (every raw figure), ``<size>.md`` (tables) and
``<size>.png`` (plots). See bench/README.md.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime as dt
import hashlib
import importlib.util
import itertools
import json
import mmap
import os
import platform
import resource
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
# The latest table goes into the benchmarks page of the docs and into bench/README.md, between markers.
READMES = (BENCH.parent / "docs" / "benchmarks.md", BENCH / "README.md")

# The ArgentOS default excludes; every tool gets the same set in its own syntax.
EXCLUDES = ("*.log", "node_modules/", ".git/", "*.tmp", ".DS_Store")
EXCLUDED_DIRS = {"node_modules", ".git"}
EXCLUDED_FILE_SUFFIXES = (".log", ".tmp")
EXCLUDED_FILE_NAMES = {".DS_Store"}
RESTIC_EXCLUDES = ["*.log", "node_modules", ".git", "*.tmp", ".DS_Store"]
BORG_EXCLUDES = ["sh:**/*.log", "sh:**/node_modules", "sh:**/.git", "sh:**/*.tmp", "sh:**/.DS_Store"]
TAR_EXCLUDES = ["*.log", "node_modules", ".git", "*.tmp", ".DS_Store"]

# The data set, relative to the sample root: the workspace and the three ArgentOS stores.
DATABASES = ("home/.argentos/memory.db", "home/.argentos/observations.db", "home/.argentos/data/dashboard.db")

PASSPHRASE = "phoenix-bench-passphrase"
TOOLS = ("phoenix", "restic", "borg", "tar.gz", "tar|zstd", "safety steps", "phoenix write-only")
# Phoenix with a write-only repository (docs/write-only.md): the machine that backs up holds age
# recipients and a write key, the restore runs with the identity. Not in the default run; with it,
# the tables gain a side-by-side comparison with passphrase mode (issue 21: within 10 %).
WRITE_ONLY = "phoenix write-only"
DEFAULT_TOOLS = tuple(t for t in TOOLS if t != WRITE_ONLY)
REFERENCE = "restic"
FLOOR = "tar|zstd"
# Phoenix's required safety steps alone (bench/safety.py): no repository, so no growth figures.
SAFETY = "safety steps"
NO_REPOSITORY = (FLOOR, SAFETY)
COMMAND_TIMEOUT = 3600
MB = 1_000_000

# Targets of issue #3: figure -> (ratio limit, against what).
TARGETS = {
    "full": (0.6, "restic"),
    "full_floor": (1.5, "tar|zstd"),
    "nochange": (0.5, "restic"),
    "daily": (0.6, "restic"),
    "growth": (1.5, "real change"),
    "restore": (0.5, "restic"),
    "memory": (1.5, "restic"),
}


# ------------------------------------------------------------------------------------------------
# Measuring one command
# ------------------------------------------------------------------------------------------------


@dataclass
class Measure:
    wall: float
    user: float
    sys: float
    rss_kb: int
    rc: int
    stdout: str = ""
    host_touch: float | None = None  # fresh_memory_cost() just before the command

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def to_json(self) -> dict[str, object]:
        return {
            "wall": round(self.wall, 4),
            "user": self.user,
            "sys": self.sys,
            "cpu": round(self.cpu, 3),
            "maxRssKb": self.rss_kb,
            "rc": self.rc,
            "hostSysPerGiB": self.host_touch,
        }


FRESH_PROBE = 64 * 1024 * 1024


def fresh_memory_cost() -> float | None:
    """System CPU-seconds per GiB this process spends touching 64 MiB of new memory, page by page.
    On a virtual machine whose host takes freed memory back (free page reporting), touching memory
    again costs whoever touches it system time, and that price moves with the host's load: the same
    restore's copy into the page cache took 3.80 s at one moment and 0.56 s 10 minutes later
    (docs/benchmarks.md, 6 December 17:45). Recorded before each step, so that system times are
    compared only where the host charged alike. None where it cannot be measured."""
    try:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        with mmap.mmap(-1, FRESH_PROBE) as m:
            for offset in range(0, FRESH_PROBE, mmap.PAGESIZE):
                m[offset] = 1
        spent = resource.getrusage(resource.RUSAGE_SELF).ru_stime - before
    except (OSError, ValueError):
        return None
    return round(spent * (1024**3 / FRESH_PROBE), 3)


def _parse_time_v(text: str) -> tuple[float, float, int]:
    user = sys_ = 0.0
    rss = 0
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("User time (seconds):"):
            user = float(line.rsplit(":", 1)[1])
        elif line.startswith("System time (seconds):"):
            sys_ = float(line.rsplit(":", 1)[1])
        elif line.startswith("Maximum resident set size (kbytes):"):
            rss = int(line.rsplit(":", 1)[1])
    return user, sys_, rss


def measure(cmd: list[str], *, env: dict[str, str], cwd: Path | None, log: Path) -> Measure:
    """Run `cmd` under /usr/bin/time -v; wall time from a monotonic clock around it."""
    timing = log.with_suffix(".time")
    os.sync()  # write-back of the previous step is not charged to this one
    host_touch = fresh_memory_cost()
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-v", "-o", str(timing), *cmd],
        env=env,
        cwd=cwd,
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    wall = time.perf_counter() - start
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{out}\n--- stderr\n{err}\n")
    user, sys_, rss = _parse_time_v(timing.read_text() if timing.exists() else "")
    return Measure(wall, user, sys_, rss, proc.returncode, out, host_touch)


def evict_from_page_cache(path: Path) -> None:
    """Drop every file below `path` from the page cache (posix_fadvise DONTNEED: no root needed)."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def du_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


# ------------------------------------------------------------------------------------------------
# The data set
# ------------------------------------------------------------------------------------------------


def excluded_file(name: str) -> bool:
    return name in EXCLUDED_FILE_NAMES or name.endswith(EXCLUDED_FILE_SUFFIXES)


def workspace_files(root: Path) -> list[str]:
    """Data-set files of the workspace, relative to the sample root, excludes applied."""
    out: list[str] = []
    base = root / "workspace"
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        for name in filenames:
            if excluded_file(name):
                continue
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                out.append(path.relative_to(root).as_posix())
    return sorted(out)


def dataset_paths(root: Path) -> list[str]:
    """What the file-level tools are given: the workspace folder and the three databases, with a
    -wal file when one exists (a raw copy of a WAL database needs it to be consistent)."""
    paths = ["workspace"]
    for db in DATABASES:
        paths.append(db)
        if (root / f"{db}-wal").exists():
            paths.append(f"{db}-wal")
    return paths


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_states(root: Path) -> dict[str, tuple[int, str]]:
    return {rel: ((root / rel).stat().st_size, sha256_file(root / rel)) for rel in workspace_files(root)}


def source_stats(root: Path) -> dict[str, tuple[int, int, int]]:
    """(size, mtime_ns, inode) of every data-set file, and of any -wal or -shm beside a database:
    a tool must not change its source (or leave a different one for the next tool)."""
    out = {}
    for rel in [*workspace_files(root), *DATABASES]:
        st = (root / rel).stat()
        out[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
    for db in DATABASES:
        for suffix in ("-wal", "-shm"):
            side = root / f"{db}{suffix}"
            if side.exists():
                st = side.stat()
                out[f"{db}{suffix}"] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def consistent_copy(src: Path, dst: Path) -> None:
    """A consistent copy of a live database through the backup API. The source is opened
    read-write, as SQLite's own tools do, so that closing the last connection removes the -wal and
    -shm files again: a read-only connection would leave an empty -wal behind, and every tool
    would then see a different source than the one before the copy."""
    dst.unlink(missing_ok=True)
    s = sqlite3.connect(f"file:{src}?mode=rw", uri=True)
    d = sqlite3.connect(dst)
    try:
        s.backup(d)
    finally:
        d.close()
        s.close()
    left = [p for p in (Path(f"{src}-wal"), Path(f"{src}-shm")) if p.exists()]
    if left:
        raise SystemExit(f"copying {src} left {', '.join(map(str, left))} behind; is something else using it?")


def page_size_of(path: Path) -> int:
    with open(path, "rb") as f:
        header = f.read(100)
    size = int.from_bytes(header[16:18], "big")
    return 65536 if size == 1 else size


def changed_pages(before: Path, after: Path) -> dict[str, int]:
    """Pages of `after` that differ from `before`, and pages added at the end."""
    page = page_size_of(after)
    a = before.read_bytes()
    b = after.read_bytes()
    na, nb = len(a) // page, len(b) // page
    mva, mvb = memoryview(a), memoryview(b)
    changed = 0
    for i in range(min(na, nb)):
        off = i * page
        if mva[off : off + page] != mvb[off : off + page]:
            changed += 1
    added = max(0, nb - na)
    return {
        "pageSize": page,
        "pagesBefore": na,
        "pagesAfter": nb,
        "changed": changed,
        "added": added,
        "bytes": (changed + added) * page,
    }


def table_digests(db: Path) -> dict[str, tuple[int, str]]:
    """Row count and an order-independent digest of every real table (FTS shadow tables are real
    tables; virtual tables themselves are never queried)."""
    out: dict[str, tuple[int, str]] = {}
    conn = sqlite3.connect(db)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' "
                "AND coalesce(sql, '') NOT LIKE 'CREATE VIRTUAL%' ORDER BY name"
            )
        ]
        for name in names:
            hashes = []
            for row in conn.execute(f'SELECT * FROM "{name}"'):
                hashes.append(hashlib.blake2b(repr(row).encode(), digest_size=16).digest())
            hashes.sort()
            out[name] = (len(hashes), hashlib.sha256(b"".join(hashes)).hexdigest())
    finally:
        conn.close()
    return out


# ------------------------------------------------------------------------------------------------
# The tools
# ------------------------------------------------------------------------------------------------


@dataclass
class Tool:
    name: str
    repo: Path
    env: dict[str, str]
    root: Path  # the sample root
    work: Path
    snapshots: list[str] = field(default_factory=list)

    def init(self) -> None: ...
    def backup_cmd(self, step: str) -> list[str]:
        raise NotImplementedError

    def restore_cmd(self, dest: Path) -> tuple[list[str], Path | None]:
        raise NotImplementedError

    def restored_root(self, dest: Path) -> Path:
        """Where the restored copy of the sample root (workspace/, home/...) is."""
        return dest

    def extra_sizes(self) -> dict[str, int]:
        return {}


def _run_checked(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


class Phoenix(Tool):
    def __init__(self, root: Path, work: Path, base_env: dict[str, str], phx: list[str]) -> None:
        env = dict(base_env)
        env.update(
            HOME=str(root / "home"),
            PHX_PASSPHRASE=PASSPHRASE,
            PHX_CACHE_DIR=str(work / "phoenix-cache"),
        )
        super().__init__("phoenix", work / "phoenix-repo", env, root, work)
        self.phx = phx
        self.config = work / "phoenix.json"

    def init(self) -> None:
        self.init_with(["--encryption", "passphrase"])

    def init_with(self, encryption: list[str]) -> None:
        config = {
            "workspace": str(self.root / "workspace"),
            "backupDir": str(self.repo),
            "targets": {"local": {"enabled": True, "path": str(self.repo)}},
            "include": [],  # the whole workspace, excludes applied
            "exclude": list(EXCLUDES),
            "compression": True,
            "encryption": {"enabled": True, "method": "passphrase"},
            "databases": {
                "sqlite": ["~/.argentos/observations.db", "~/.argentos/memory.db", "~/.argentos/data/dashboard.db"]
            },
            "retention": {"last": -1},
        }
        self.config.write_text(json.dumps(config, indent=2) + "\n")
        # The repository is created untimed (restic and borg are initialised untimed too).
        _run_checked(
            [
                *self.phx,
                "init",
                "--config",
                str(self.work / f"{_safe(self.name)}-init.json"),
                "--workspace",
                str(self.root / "workspace"),
                "--repo",
                str(self.repo),
                *encryption,
            ],
            self.env,
        )

    def backup_cmd(self, step: str) -> list[str]:
        return [*self.phx, "backup", "--config", str(self.config), "--json"]

    def restore_cmd(self, dest: Path) -> tuple[list[str], Path | None]:
        return [*self.phx, "restore", "--latest", "--to", str(dest), "--yes", "--config", str(self.config)], None

    def extra_sizes(self) -> dict[str, int]:
        return {"cache": du_bytes(self.work / "phoenix-cache")}


class PhoenixWriteOnly(Phoenix):
    """The same backups into a write-only repository: no passphrase, an age recipient and a write
    key (in its own data dir); the restore gives the identity, as the reading machine would."""

    def __init__(self, root: Path, work: Path, base_env: dict[str, str], phx: list[str]) -> None:
        super().__init__(root, work, base_env, phx)
        self.name = WRITE_ONLY
        self.repo = work / "phoenix-wo-repo"
        self.config = work / "phoenix-wo.json"
        self.identity = work / "phoenix-wo-identity.txt"
        self.env.pop("PHX_PASSPHRASE")
        self.env.update(PHX_CACHE_DIR=str(work / "phoenix-wo-cache"), PHX_DATA_DIR=str(work / "phoenix-wo-data"))

    def init(self) -> None:
        import pyrage

        identity = pyrage.x25519.Identity.generate()
        self.identity.write_text(f"{identity}\n")
        self.identity.chmod(0o600)
        recipient = str(identity.to_public())
        super().init_with(["--encryption", "age", "--recipient", recipient, "--write-only"])
        config = json.loads(self.config.read_text())
        config["encryption"] = {"enabled": True, "method": "age", "recipients": [recipient], "writeOnly": True}
        self.config.write_text(json.dumps(config, indent=2) + "\n")

    def restore_cmd(self, dest: Path) -> tuple[list[str], Path | None]:
        cmd, cwd = super().restore_cmd(dest)
        return [*cmd, "--identity", str(self.identity)], cwd

    def extra_sizes(self) -> dict[str, int]:
        return {"cache": du_bytes(self.work / "phoenix-wo-cache"), "writer": du_bytes(self.work / "phoenix-wo-data")}


class Restic(Tool):
    def __init__(self, root: Path, work: Path, base_env: dict[str, str]) -> None:
        env = dict(base_env)
        env.update(
            RESTIC_PASSWORD=PASSPHRASE,
            RESTIC_REPOSITORY=str(work / "restic-repo"),
            RESTIC_CACHE_DIR=str(work / "restic-cache"),
        )
        super().__init__("restic", work / "restic-repo", env, root, work)

    def init(self) -> None:
        _run_checked(["restic", "init", "--repository-version", "2"], self.env)

    def backup_cmd(self, step: str) -> list[str]:
        cmd = ["restic", "backup", "--quiet", "--compression", "auto", "--host", "bench"]
        for pattern in RESTIC_EXCLUDES:
            cmd += ["--exclude", pattern]
        return cmd + [str(self.root / p) for p in dataset_paths(self.root)]

    def restore_cmd(self, dest: Path) -> tuple[list[str], Path | None]:
        return ["restic", "restore", "--quiet", "latest", "--target", str(dest)], None

    def restored_root(self, dest: Path) -> Path:
        return dest / self.root.relative_to("/")

    def extra_sizes(self) -> dict[str, int]:
        return {"cache": du_bytes(self.work / "restic-cache")}


class Borg(Tool):
    def __init__(self, root: Path, work: Path, base_env: dict[str, str]) -> None:
        env = dict(base_env)
        env.update(
            BORG_PASSPHRASE=PASSPHRASE,
            BORG_BASE_DIR=str(work / "borg-base"),
            BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
            BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
        )
        super().__init__("borg", work / "borg-repo", env, root, work)

    def init(self) -> None:
        _run_checked(["borg", "init", "--encryption", "repokey", str(self.repo)], self.env)

    def backup_cmd(self, step: str) -> list[str]:
        name = f"{len(self.snapshots):02d}-{step}"
        self.snapshots.append(name)
        cmd = ["borg", "create", "--compression", "zstd,3"]
        for pattern in BORG_EXCLUDES:
            cmd += ["--exclude", pattern]
        return cmd + [f"{self.repo}::{name}"] + [str(self.root / p) for p in dataset_paths(self.root)]

    def restore_cmd(self, dest: Path) -> tuple[list[str], Path | None]:
        return ["borg", "extract", f"{self.repo}::{self.snapshots[-1]}"], dest

    def restored_root(self, dest: Path) -> Path:
        return dest / self.root.relative_to("/")

    def extra_sizes(self) -> dict[str, int]:
        return {"cache": du_bytes(self.work / "borg-base")}


class TarGz(Tool):
    """The ArgentOS documentation's approach: one full tar.gz per snapshot."""

    def __init__(self, root: Path, work: Path, base_env: dict[str, str]) -> None:
        super().__init__("tar.gz", work / "targz-repo", dict(base_env), root, work)

    def init(self) -> None:
        self.repo.mkdir(parents=True, exist_ok=True)

    def backup_cmd(self, step: str) -> list[str]:
        name = f"{len(self.snapshots):02d}-{step}.tar.gz"
        self.snapshots.append(name)
        excludes = [f"--exclude={p}" for p in TAR_EXCLUDES]
        return ["tar", "czf", str(self.repo / name), *excludes, "-C", str(self.root), *dataset_paths(self.root)]

    def restore_cmd(self, dest: Path) -> tuple[list[str], Path | None]:
        return ["tar", "xzf", str(self.repo / self.snapshots[-1]), "-C", str(dest)], None


class TarZstd(Tool):
    """The floor: the same files through `tar | zstd -T2 -3`, one archive, replaced each step."""

    def __init__(self, root: Path, work: Path, base_env: dict[str, str]) -> None:
        super().__init__("tar|zstd", work / "tarzstd-repo", dict(base_env), root, work)

    def init(self) -> None:
        self.repo.mkdir(parents=True, exist_ok=True)

    def backup_cmd(self, step: str) -> list[str]:
        excludes = " ".join(f"--exclude='{p}'" for p in TAR_EXCLUDES)
        paths = " ".join(f"'{p}'" for p in dataset_paths(self.root))
        out = self.repo / "latest.tar.zst"
        return ["sh", "-c", f"tar cf - {excludes} -C '{self.root}' {paths} | zstd -T2 -3 -q -c > '{out}'"]

    def restore_cmd(self, dest: Path) -> tuple[list[str], Path | None]:
        archive = self.repo / "latest.tar.zst"
        return ["sh", "-c", f"zstd -dc -q '{archive}' | tar xf - -C '{dest}'"], None


class SafetySteps(Tool):
    """What Phoenix may not skip, alone: consistent copies, integrity checks and SHA-256 on
    backup; writing, SHA-256 and integrity checks on restore (bench/safety.py)."""

    def __init__(self, root: Path, work: Path, base_env: dict[str, str]) -> None:
        super().__init__(SAFETY, work / "safety-state", dict(base_env), root, work)

    def _script(self, *args: str) -> list[str]:
        return [sys.executable, str(BENCH / "safety.py"), *args]

    def backup_cmd(self, step: str) -> list[str]:
        return self._script("backup", "--root", str(self.root), "--state", str(self.repo))

    def restore_cmd(self, dest: Path) -> tuple[list[str], Path | None]:
        return self._script("restore", "--root", str(self.root), "--to", str(dest)), None


def make_tool(name: str, root: Path, work: Path, base_env: dict[str, str], phx: list[str]) -> Tool:
    """The tool called `name`, with its repository, cache and config under `work`."""
    if name == "phoenix":
        return Phoenix(root, work, base_env, phx)
    if name == WRITE_ONLY:
        return PhoenixWriteOnly(root, work, base_env, phx)
    makers: dict[str, type[Restic | Borg | TarGz | TarZstd | SafetySteps]] = {
        "restic": Restic,
        "borg": Borg,
        "tar.gz": TarGz,
        FLOOR: TarZstd,
        SAFETY: SafetySteps,
    }
    return makers[name](root, work, base_env)


# ------------------------------------------------------------------------------------------------
# Rounds of the write-heavy steps
# ------------------------------------------------------------------------------------------------
# On this machine (docs/benchmarks.md, "System time on this machine") the tool that writes into
# memory the host has just taken back pays up to seven times the system time of the next one, so a
# single run of a restore or a full backup says more about the moment than about the tool. These
# steps are repeated in rounds; each round runs the tools in another order, and the figures are
# the medians over the rounds.


def round_orders(names: list[str], rounds: int) -> list[list[str]]:
    """The order of the tools in each round: rotated by one place every second round, reversed in
    every odd round (A B C, C B A, B C A, A C B, C A B, B A C, ...), so that over the rounds each
    tool runs first, last and after each other tool."""
    out = []
    for r in range(rounds):
        k = (r // 2) % max(1, len(names))
        order = names[k:] + names[:k]
        out.append(order[::-1] if r % 2 else order)
    return out


def round_medians(rounds: list[dict], tool: str) -> dict[str, float] | None:
    """Median wall, user, system and CPU seconds of `tool` over `rounds` (None if it is in none)."""
    entries = [r["results"][tool] for r in rounds if tool in r["results"]]
    if not entries:
        return None
    return {
        "wall": statistics.median(e["wall"] for e in entries),
        "user": statistics.median(e["user"] for e in entries),
        "sys": statistics.median(e["sys"] for e in entries),
        "cpu": statistics.median(e["cpu"] for e in entries),
        "n": len(entries),
    }


def timed_restore(
    tool: Tool,
    cmd: list[str],
    cwd: Path | None,
    dest: Path,
    logfile: Path,
    check: tuple[Path, dict[str, str], dict[str, dict]],
) -> dict:
    """Run one restore into `dest` (created empty), from a cold page cache for the tool's repository,
    and check what it wrote against the source; `dest` is removed afterwards."""
    root, ref_files, ref_db = check
    dest.mkdir(parents=True)
    # A restore reads its repository from disk, as after a loss, not from the page cache that
    # the backups just filled (or not: Phoenix drops its packs from it once they are synced).
    evict_from_page_cache(tool.repo)
    m = measure(cmd, env=tool.env, cwd=cwd, log=logfile)
    entry = m.to_json()
    problems = verify_restore(tool.restored_root(dest), root, ref_files, ref_db) if m.rc == 0 else ["failed"]
    entry["verified"] = not problems
    entry["problems"] = problems[:20]
    entry["restoredBytes"] = du_bytes(dest)
    shutil.rmtree(dest)
    return entry


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def versions(phx: list[str]) -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "missing"

    return {
        "phoenix": first_line([*phx, "--version"]),
        "restic": first_line(["restic", "version"]),
        "borg": first_line(["borg", "--version"]),
        "tar": first_line(["tar", "--version"]),
        "gzip": first_line(["gzip", "--version"]),
        "zstd": first_line(["zstd", "--version"]),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
    }


def live_package() -> Path:
    """The folder of the installed `phoenix_backup` package (found without importing it)."""
    spec = importlib.util.find_spec("phoenix_backup")
    if spec is None or spec.origin is None:
        raise SystemExit("phoenix_backup is not installed in this Python; run bench/run.sh")
    return Path(spec.origin).parent


def wait_until_quiet(base: Path, quiet: float, limit: float) -> None:
    """Wait until no source file under `base` changed for `quiet` seconds (someone may be editing
    src/ on a shared machine, and a copy taken mid-edit would not run), at most `limit` seconds."""
    deadline = time.time() + limit
    while True:
        newest = max((p.stat().st_mtime for p in base.rglob("*.py")), default=0.0)
        age = time.time() - newest
        if age >= quiet or time.time() >= deadline:
            return
        log(f"{base} changed {age:.0f} s ago; waiting for {quiet:.0f} quiet seconds before copying it")
        time.sleep(min(quiet - age + 0.5, max(0.0, deadline - time.time())))


def pin_package(live: Path, pinned: Path) -> None:
    """Copy the package at `live` to `pinned`/phoenix_backup and compile it once, as `pip install`
    does: with PYTHONDONTWRITEBYTECODE set (this machine's environment, many containers and CI
    jobs) every `phx` step would otherwise compile every module again (about 0.1 CPU-s a step
    here), which an installed phx never does."""
    shutil.copytree(live, pinned / "phoenix_backup", ignore=shutil.ignore_patterns("__pycache__"))
    if not compileall.compile_dir(pinned / "phoenix_backup", quiet=1):
        raise SystemExit(f"the copy of Phoenix in {pinned} does not compile (is src/ being edited?)")


def phoenix_source_id(base: Path) -> str:
    """A fingerprint of a Phoenix source tree. An editable install changes under a run when
    someone edits src/ meanwhile, so by default the run measures a copy taken at its start."""
    h = hashlib.sha256()
    for path in sorted(base.rglob("*.py")):
        h.update(path.relative_to(base).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def check_prerequisites() -> None:
    missing = [t for t in ("restic", "borg", "tar", "zstd", "du") if shutil.which(t) is None]
    if not Path("/usr/bin/time").exists():
        missing.append("/usr/bin/time (Debian package `time`)")
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)}; run bench/run.sh, which installs them")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def verify_restore(restored: Path, root: Path, ref_files: dict[str, str], ref_db: dict[str, dict]) -> list[str]:
    problems: list[str] = []
    got = set(workspace_files(restored)) if (restored / "workspace").is_dir() else set()
    for rel in sorted(set(ref_files) - got):
        problems.append(f"missing {rel}")
    for rel in sorted(got - set(ref_files)):
        problems.append(f"unexpected {rel}")
    for rel in sorted(set(ref_files) & got):
        if sha256_file(restored / rel) != ref_files[rel]:
            problems.append(f"differs {rel}")
    for db in DATABASES:
        path = restored / db
        if not path.is_file():
            problems.append(f"missing {db}")
            continue
        digests = table_digests(path)
        for table, (rows, digest) in ref_db[db].items():
            if table not in digests:
                problems.append(f"{db}: table {table} missing")
            elif digests[table] != (rows, digest):
                problems.append(f"{db}: table {table} differs ({digests[table][0]} rows, expected {rows})")
        for table in sorted(set(digests) - set(ref_db[db])):
            problems.append(f"{db}: unexpected table {table}")
    return problems


def run(args: argparse.Namespace) -> dict:
    check_prerequisites()
    work = Path(args.workdir or BENCH / "work" / args.size).absolute()
    if work.exists():
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True)
    (work / "pages").mkdir()
    root = work / "sample"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PHX_", "RESTIC_", "BORG_"))}
    base_env["LC_ALL"] = "C.UTF-8"

    live = live_package()
    if args.live_source or args.phx:
        # The installed phx, as it is at each step (each step records the source it ran).
        pinned = None
        exe = args.phx or str(Path(sys.executable).parent / "phx")
        phx = [exe if Path(exe).exists() else (shutil.which("phx") or exe)]
    else:
        # A copy of the package taken now, first on the path of this process and of every phx run.
        pinned = work / "phoenix-src"
        wait_until_quiet(live, quiet=20, limit=600)
        pin_package(live, pinned)
        sys.path.insert(0, str(pinned))
        base_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pinned), base_env.get("PYTHONPATH")]))
        phx = [
            sys.executable,
            "-c",
            "import sys; sys.argv[0] = 'phx'; from phoenix_backup.cli.main import main; main()",
        ]
    source_id = phoenix_source_id(pinned / "phoenix_backup" if pinned else live)
    from phoenix_backup.sample import generate_workspace, resolve_size, simulate_day

    if args.rounds is None:  # 3 rounds up to the medium size, 1 above it (a large run is half an hour a round)
        args.rounds = 3 if resolve_size(_size(args.size)) <= resolve_size("medium") else 1

    if pinned is not None:
        import phoenix_backup

        if Path(phoenix_backup.__file__).parent != pinned / "phoenix_backup":
            raise SystemExit(f"the pinned copy of Phoenix was not used ({phoenix_backup.__file__})")
        log(f"measuring a copy of {live} taken now (source {source_id}); --live-source runs the installed one")
        probe = subprocess.run([*phx, "--help"], env=base_env, capture_output=True, text=True, check=False)
        if probe.returncode != 0:
            raise SystemExit(f"the copy of Phoenix does not start (is src/ being edited?):\n{probe.stderr[-2000:]}")

    bench_start = time.perf_counter()
    load_start = os.getloadavg()
    log(f"generating the {args.size} workspace (seed {args.seed}) in {root}")
    t = time.perf_counter()
    layout = generate_workspace(root, size=_size(args.size), seed=args.seed)
    # Each day touches a share of the rows; --daily-change keeps that of another size instead.
    scale = resolve_size(_size(args.daily_change or args.size)) / resolve_size(_size(args.size))
    gen_seconds = time.perf_counter() - t
    ws_files = workspace_files(root)
    ws_bytes = sum((root / f).stat().st_size for f in ws_files)
    db_bytes = {db: (root / db).stat().st_size for db in DATABASES}
    log(
        f"generated in {gen_seconds:.1f} s: {len(ws_files)} workspace files ({ws_bytes / MB:.1f} MB), "
        f"databases {sum(db_bytes.values()) / MB:.1f} MB"
    )

    tools = [make_tool(name, root, work, base_env, phx) for name in TOOLS if name in args.tools]
    for tool in tools:
        tool.init()

    # The reference state for counting real change: consistent copies and file hashes.
    before_files = file_states(root)
    for db in DATABASES:
        consistent_copy(root / db, work / "pages" / (Path(db).name + ".before"))

    steps = ["full", "nochange", *[f"day{d + 1}" for d in range(args.days)]]
    results: dict[str, dict[str, dict]] = {tool.name: {} for tool in tools}
    changes: list[dict] = []
    source_warnings: list[str] = []

    for step in steps:
        if step.startswith("day"):
            day = int(step[3:]) - 1
            t = time.perf_counter()
            stats = simulate_day(layout, day, seed=args.seed, scale=scale)
            sim_seconds = time.perf_counter() - t
            change: dict = {"day": day + 1, "simulateSeconds": round(sim_seconds, 3), "databases": {}}
            for db in DATABASES:
                name = Path(db).name
                before = work / "pages" / (name + ".before")
                after = work / "pages" / (name + ".after")
                consistent_copy(root / db, after)
                change["databases"][db] = changed_pages(before, after)
                after.replace(before)
            after_files = file_states(root)
            changed_files = {
                rel: size
                for rel, (size, digest) in after_files.items()
                if before_files.get(rel, (None, None))[1] != digest
            }
            before_files = after_files
            change["files"] = changed_files
            change["fileBytes"] = sum(changed_files.values())
            change["pageBytes"] = sum(d["bytes"] for d in change["databases"].values())
            change["realBytes"] = change["fileBytes"] + change["pageBytes"]
            change["dayStats"] = {
                "memoriesAdded": stats.memories_added,
                "memoriesUpdated": stats.memories_updated,
                "memoriesDeleted": stats.memories_deleted,
                "observationsAdded": stats.observations_added,
            }
            changes.append(change)
            log(
                f"{step}: real change {change['realBytes'] / MB:.2f} MB "
                f"(pages {change['pageBytes'] / MB:.2f} MB, files {change['fileBytes'] / 1e3:.1f} kB)"
            )
        for tool in tools:
            state = source_stats(root)
            logfile = work / "logs" / f"{_safe(tool.name)}-{step}.log"
            m = measure(tool.backup_cmd(step), env=tool.env, cwd=None, log=logfile)
            if source_stats(root) != state:
                source_warnings.append(f"{tool.name} changed its source during {step}")
            entry = m.to_json()
            if isinstance(tool, Phoenix):
                entry["phxSource"] = source_id if pinned else phoenix_source_id(live)
            entry["repoBytes"] = du_bytes(tool.repo)
            entry.update({f"{k}Bytes": v for k, v in tool.extra_sizes().items()})
            if isinstance(tool, Phoenix) and m.rc == 0:
                try:
                    doc = json.loads(m.stdout)
                    entry["phx"] = {k: doc.get(k) for k in ("added", "size", "files", "filesRead", "duration")}
                except json.JSONDecodeError:
                    pass
            results[tool.name][step] = entry
            if m.rc != 0:
                log(f"  {tool.name} {step} FAILED (rc {m.rc}); see {work / 'logs'}")
                if not args.keep_going:
                    raise SystemExit(1)
        log(
            f"{step}: "
            + ", ".join(
                f"{t.name} {results[t.name][step]['wall']:.2f}s/{results[t.name][step]['repoBytes'] / MB:.0f}MB"
                for t in tools
            )
        )

    # Full backups again, R rounds into a fresh scratch repository each, the tools' order
    # alternated and reversed from round to round (round_orders), on the workspace as it is now.
    rounds: dict[str, list[dict]] = {}
    names = [t.name for t in tools]
    if args.rounds > 1:
        rounds["full"] = []
        for i, order in enumerate(round_orders(names, args.rounds)):
            entries = {}
            for name in order:
                scratch = work / "full-rounds" / _safe(name)
                scratch.mkdir(parents=True)
                tool = make_tool(name, root, scratch, base_env, phx)
                if isinstance(tool, Phoenix):  # a fresh machine: no state of the main sequence's backups
                    tool.env.setdefault("PHX_DATA_DIR", str(scratch / "phoenix-data"))
                tool.init()
                state = source_stats(root)
                logfile = work / "logs" / f"{_safe(name)}-full-round{i + 1}.log"
                m = measure(tool.backup_cmd("full"), env=tool.env, cwd=None, log=logfile)
                if source_stats(root) != state:
                    source_warnings.append(f"{name} changed its source during full backup round {i + 1}")
                entries[name] = {**m.to_json(), "repoBytes": du_bytes(tool.repo)}
                if m.rc != 0:
                    log(f"  {name} full backup round {i + 1} FAILED (rc {m.rc}); see {work / 'logs'}")
                    if not args.keep_going:
                        raise SystemExit(1)
                shutil.rmtree(scratch)
            rounds["full"].append({"order": order, "results": entries})
            log(f"full backup round {i + 1}: " + ", ".join(f"{n} {entries[n]['wall']:.2f}s" for n in order))

    # Restore the last snapshot of every tool into a fresh folder and check it, in R rounds ordered
    # as above (the first in the order of --tools, as the backups ran).
    ref_files = {rel: sha for rel, (_, sha) in file_states(root).items()}
    ref_db = {db: table_digests(work / "pages" / (Path(db).name + ".before")) for db in DATABASES}
    check = (root, ref_files, ref_db)
    by_name = {t.name: t for t in tools}
    source = source_id if pinned else None

    def restore_rounds(step: str, drilled: Phoenix | None) -> list[dict]:
        """R rounds of every tool's restore; `drilled` (the Phoenix that ran `phx drill`) is
        measured as step `step`, the other tools as their plain restore in the same rounds."""
        out = []
        for i, order in enumerate(round_orders(names, args.rounds)):
            entries = {}
            for name in order:
                tool = by_name[name]
                kind = step if tool is drilled else "restore"
                cmd, cwd = tool.restore_cmd(work / "restore" / _safe(name))
                logname = f"{_safe(name)}-{'restore-after-drill' if kind != 'restore' else 'restore'}-{step}{i + 1}.log"
                entry = timed_restore(tool, cmd, cwd, work / "restore" / _safe(name), work / "logs" / logname, check)
                if isinstance(tool, Phoenix):
                    entry["phxSource"] = source or phoenix_source_id(live)
                entries[name] = entry
                verdict = "verified equal" if entry["verified"] else "MISMATCH: " + "; ".join(entry["problems"][:5])
                log(
                    f"{step} round {i + 1}: {name} {'(after the drill) ' if kind != 'restore' else ''}"
                    f"{entry['wall']:.2f}s, {verdict}"
                )
            out.append({"order": order, "results": entries})
        return out

    rounds["restore"] = restore_rounds("restore", None)
    for name in names:
        # The step of the per-step tables is the first round's; its check holds only if every round's did.
        entry = dict(rounds["restore"][0]["results"][name])
        bad = [r["results"][name] for r in rounds["restore"] if not r["results"][name]["verified"]]
        if bad:
            entry["verified"] = False
            entry["problems"] = [p for b in bad for p in b["problems"]][:20]
        results[name]["restore"] = entry
    drilled = by_name.get("phoenix")
    if args.drill and isinstance(drilled, Phoenix):
        # A user who drills: `phx drill` of the last snapshot (step `drill`; it records its checks
        # in the repository), then the same restore again (step `restoreAfterDrill`), which finds
        # the copies' checks recorded and does not run them again; in R rounds with the others'.
        evict_from_page_cache(drilled.repo)
        cmd = [*drilled.phx, "drill", "--config", str(drilled.config), "--scratch", str(work), "--json"]
        m = measure(cmd, env=drilled.env, cwd=None, log=work / "logs" / "phoenix-drill.log")
        results["phoenix"]["drill"] = m.to_json()
        log(f"drill: phoenix {m.wall:.2f}s (rc {m.rc})")
        rounds["restoreAfterDrill"] = restore_rounds("restoreAfterDrill", drilled)
        after = [r["results"]["phoenix"] for r in rounds["restoreAfterDrill"]]
        entry = dict(after[0])
        if not all(e["verified"] for e in after):
            entry["verified"] = False
            entry["problems"] = [p for e in after for p in e["problems"]][:20]
        results["phoenix"]["restoreAfterDrill"] = entry

    doc = {
        "size": args.size,
        "seed": args.seed,
        "days": args.days,
        "dailyChange": args.daily_change or args.size,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loadavgStart": load_start,
        "loadavgEnd": os.getloadavg(),
        "versions": versions(phx),
        "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
        "generateSeconds": round(gen_seconds, 2),
        "dataset": {
            "workspaceFiles": len(ws_files),
            "workspaceBytes": ws_bytes,
            "databaseBytes": db_bytes,
            "totalBytes": ws_bytes + sum(db_bytes.values()),
            "excludes": list(EXCLUDES),
        },
        "steps": [*steps, "restore"],
        "tools": [t.name for t in tools],
        "results": results,
        "realChange": changes,
        "sourceWarnings": source_warnings,
        "rounds": rounds,
        "roundsRequested": args.rounds,
    }
    doc["summary"] = summarize(doc)
    doc["benchSeconds"] = round(time.perf_counter() - bench_start, 1)
    sources = sorted({e["phxSource"] for e in results.get("phoenix", {}).values() if "phxSource" in e})
    doc["phoenixSource"] = sources
    doc["phoenixPinned"] = pinned is not None
    doc["phoenixLiveSourceAtEnd"] = phoenix_source_id(live)
    if len(sources) > 1:
        source_warnings.append(
            f"the Phoenix source changed during the run ({len(sources)} versions: {', '.join(sources)}); "
            "its figures mix code versions, run again"
        )
    if not args.keep:
        shutil.rmtree(work)
        with contextlib.suppress(OSError):
            work.parent.rmdir()  # bench/work, when nothing else is in it
    return doc


def _safe(name: str) -> str:
    return name.replace("|", "-").replace(".", "-").replace(" ", "-")


# ------------------------------------------------------------------------------------------------
# Summary, table, plot
# ------------------------------------------------------------------------------------------------


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def summarize(doc: dict) -> dict:
    res = doc["results"]
    days = [s for s in doc["steps"] if s.startswith("day")]
    real = {f"day{c['day']}": c["realBytes"] for c in doc["realChange"]}
    out: dict[str, dict] = {}
    for tool, steps in res.items():
        order = [s for s in doc["steps"] if s != "restore"]
        growth = {}
        for prev, step in itertools.pairwise(order):
            if step in days:
                growth[step] = steps[step]["repoBytes"] - steps[prev]["repoBytes"]
        total_real = sum(real[d] for d in days)
        s = {
            "full": steps["full"]["wall"],
            "nochange": steps["nochange"]["wall"],
            "daily": _mean(steps[d]["wall"] for d in days),
            "dailyMax": max((steps[d]["wall"] for d in days), default=float("nan")),
            "restore": steps.get("restore", {}).get("wall", float("nan")),
            "restoreVerified": steps.get("restore", {}).get("verified"),
            "cpuFull": steps["full"]["cpu"],
            "cpuDaily": _mean(steps[d]["cpu"] for d in days),
            "cpuRestore": steps.get("restore", {}).get("cpu", float("nan")),
            "memory": max(v["maxRssKb"] for v in steps.values()) * 1024,
            "memoryFull": steps["full"]["maxRssKb"] * 1024,
            "repoFull": steps["full"]["repoBytes"],
            "repoLast": steps[order[-1]]["repoBytes"],
            "growth": growth,
            "growthPerDay": _mean(growth.values()),
            "growthRatio": (sum(growth.values()) / total_real) if total_real else float("nan"),
        }
        out[tool] = s
    # User CPU-seconds beside wall time: the host's reclaiming of freed memory moves system time
    # and wall time, not user time (docs/benchmarks.md, "System time on this machine").
    rounds = doc.get("rounds", {})
    for tool, s in out.items():
        steps = res[tool]
        s["userFull"] = steps["full"]["user"]
        s["userNochange"] = steps["nochange"]["user"]
        s["userDaily"] = _mean(steps[d]["user"] for d in days)
        s["userRestore"] = steps.get("restore", {}).get("user", float("nan"))
        if "restoreAfterDrill" in steps:
            s["restoreAfterDrill"] = steps["restoreAfterDrill"]["wall"]
            s["userRestoreAfterDrill"] = steps["restoreAfterDrill"]["user"]
        # With rounds (run.py --rounds), the write-heavy steps are the medians over the rounds.
        s["medians"] = {}
        for step, step_rounds in rounds.items():
            med = round_medians(step_rounds, tool)
            if med is None:
                continue
            s["medians"][step] = med
            key = {"full": "Full", "restore": "Restore", "restoreAfterDrill": "RestoreAfterDrill"}[step]
            if step != "restoreAfterDrill" or "restoreAfterDrill" in steps:
                s[key[0].lower() + key[1:]] = med["wall"]
                s[f"cpu{key}"] = med["cpu"]
                s[f"user{key}"] = med["user"]
            rss = max(r["results"][tool]["maxRssKb"] for r in step_rounds if tool in r["results"])
            s["memory"] = max(s["memory"], rss * 1024)
    ref = out.get(REFERENCE)
    floor = out.get(FLOOR)
    for s in out.values():
        s["ratios"] = {}
        s["userRatios"] = {}
        if ref:
            for key in ("full", "nochange", "daily", "restore", "memory"):
                s["ratios"][key] = s[key] / ref[key] if ref[key] else float("nan")
            for key in ("full", "nochange", "daily", "restore"):
                user = "user" + key[0].upper() + key[1:]
                s["userRatios"][key] = s[user] / ref[user] if ref[user] else float("nan")
            if "restoreAfterDrill" in s:
                # Against restic's restores of the same rounds when there are rounds, else its restore.
                theirs = ref["medians"].get("restoreAfterDrill", {"wall": ref["restore"], "user": ref["userRestore"]})
                s["ratios"]["restoreAfterDrill"] = s["restoreAfterDrill"] / theirs["wall"]
                s["userRatios"]["restoreAfterDrill"] = s["userRestoreAfterDrill"] / theirs["user"]
        if floor:
            s["ratios"]["full_floor"] = s["full"] / floor["full"]
            s["userRatios"]["full_floor"] = s["userFull"] / floor["userFull"] if floor["userFull"] else float("nan")
        s["ratios"]["growth"] = s["growthRatio"]
    return out


def _fmt_bytes(n: float) -> str:
    if n != n:  # nan
        return "–"
    if abs(n) >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if abs(n) >= 1e6:
        return f"{n / 1e6:.1f} MB"
    if abs(n) >= 1e3:
        return f"{n / 1e3:.0f} kB"
    return f"{n:.0f} B"


def md(text: str) -> str:
    """A table cell: a literal `|` would end the cell."""
    return text.replace("|", "\\|")


def _fmt_ratio(x: float) -> str:
    return "–" if x != x else f"{x:.2f}x"


def markdown(doc: dict) -> str:
    res, summ = doc["results"], doc["summary"]
    tools = doc["tools"]
    days = [s for s in doc["steps"] if s.startswith("day")]
    ds = doc["dataset"]
    lines: list[str] = []
    add = lines.append
    add(f"### `{doc['size']}` workspace — {doc['date']}")
    add("")
    add(
        f"Data set: {ds['workspaceFiles']} workspace files ({_fmt_bytes(ds['workspaceBytes'])}) and three SQLite "
        f"stores ({_fmt_bytes(sum(ds['databaseBytes'].values()))}), {_fmt_bytes(ds['totalBytes'])} in all; "
        f"sample {doc['seed']}, {len(days)} simulated days{_daily_change(doc)}. Host: {doc['cpus']} CPUs, load average "
        f"{doc['loadavgStart'][0]:.2f} at start, {doc['loadavgEnd'][0]:.2f} at end.{_host_touch_text(doc)} "
        f"Command: `{doc['command']}` ({doc.get('benchSeconds', 0):.0f} s in all)."
    )
    add("")
    add(
        "Versions: "
        + ", ".join(f"{k} `{v}`" for k, v in doc["versions"].items())
        + (f", Phoenix source `{', '.join(doc['phoenixSource'])}`" if doc.get("phoenixSource") else "")
        + (" (a copy of src/ taken at the start of the run)" if doc.get("phoenixPinned") else "")
        + "."
    )
    add("")

    add("#### Wall time per step (seconds)")
    add("")
    first = " (round 1)" if doc.get("rounds", {}).get("restore") else ""
    head = ["tool", "full", "no-change", *[f"day {d[3:]}" for d in days], "daily mean", f"restore{first}"]
    add("| " + " | ".join(head) + " |")
    add("|" + "---|" * len(head))
    for t in tools:
        r = res[t]
        row = [md(t), *[f"{r[s]['wall']:.2f}" for s in ["full", "nochange", *days]], f"{summ[t]['daily']:.2f}"]
        rs = r.get("restore")
        row.append("–" if rs is None else f"{rs['wall']:.2f}" + ("" if rs["verified"] else " (MISMATCH)"))
        add("| " + " | ".join(row) + " |")
    add("")

    add("#### CPU (user+sys seconds), peak memory, repository size")
    add("")
    head = [
        "tool",
        "CPU full",
        "CPU no-change",
        "CPU daily mean",
        f"CPU restore{first}",
        "peak RSS full",
        "peak RSS any step",
        "repo after full",
        f"repo after day {len(days)}",
        "restore checked",
    ]
    add("| " + " | ".join(head) + " |")
    add("|" + "---|" * len(head))
    for t in tools:
        r, s = res[t], summ[t]
        rs = r.get("restore", {})
        add(
            "| "
            + " | ".join(
                [
                    md(t),
                    f"{r['full']['cpu']:.2f}",
                    f"{r['nochange']['cpu']:.2f}",
                    f"{s['cpuDaily']:.2f}",
                    f"{rs.get('cpu', float('nan')):.2f}",
                    _fmt_bytes(s["memoryFull"]),
                    _fmt_bytes(s["memory"]),
                    _fmt_bytes(s["repoFull"]),
                    _fmt_bytes(s["repoLast"]) + {FLOOR: " (one archive)", SAFETY: " (state only)"}.get(t, ""),
                    "files byte-equal, tables row-equal" if rs.get("verified") else "MISMATCH",
                ]
            )
            + " |"
        )
    add("")

    add("#### Repository growth per day against the bytes that really changed")
    add("")
    growth_tools = [t for t in tools if t not in NO_REPOSITORY]
    head = ["day", "real change", "(SQLite pages + files)", *growth_tools]
    add("| " + " | ".join(head) + " |")
    add("|" + "---|" * len(head))
    for c in doc["realChange"]:
        d = f"day{c['day']}"
        cells = [
            str(c["day"]),
            _fmt_bytes(c["realBytes"]),
            f"{_fmt_bytes(c['pageBytes'])} + {_fmt_bytes(c['fileBytes'])}",
        ]
        for t in growth_tools:
            g = summ[t]["growth"][d]
            cells.append(f"{_fmt_bytes(g)} ({g / c['realBytes']:.1f}x)")
        add("| " + " | ".join(cells) + " |")
    total_real = sum(c["realBytes"] for c in doc["realChange"])
    cells = ["mean", _fmt_bytes(total_real / max(1, len(doc["realChange"]))), ""]
    for t in growth_tools:
        cells.append(f"{_fmt_bytes(summ[t]['growthPerDay'])} ({summ[t]['growthRatio']:.1f}x)")
    add("| " + " | ".join(cells) + " |")
    add("")

    rounds = doc.get("rounds", {})
    lines += rounds_table(doc)
    how = rounds_note(doc, short=True)
    add(
        f"#### Ratios (each tool against {REFERENCE} and the `{FLOOR}` floor, measured side by side in this run; "
        "wall time / user CPU-seconds)"
    )
    add("")
    add(
        "Each cell is the ratio of wall times, then of user CPU-seconds (which the host's reclaiming of "
        f'freed memory does not move; see docs/benchmarks.md, "System time on this machine"). {how}'
    )
    add("")
    head = [
        "tool",
        "full ×restic",
        "full ×floor",
        "no-change ×restic",
        "daily ×restic",
        "growth/day ×real change",
        "restore ×restic",
        "peak memory ×restic",
    ]
    add("| " + " | ".join(head) + " |")
    add("|" + "---|" * len(head))
    for t in tools:
        r, u = summ[t]["ratios"], summ[t].get("userRatios", {})

        def both(key: str, r: dict = r, u: dict = u) -> str:
            return f"{_fmt_ratio(r.get(key, float('nan')))} / {_fmt_ratio(u.get(key, float('nan')))}"

        add(
            "| "
            + " | ".join(
                [
                    md(t),
                    *[both(k) for k in ("full", "full_floor", "nochange", "daily")],
                    "–" if t in NO_REPOSITORY else _fmt_ratio(r.get("growth", float("nan"))),
                    both("restore"),
                    _fmt_ratio(r.get("memory", float("nan"))),
                ]
            )
            + " |"
        )
    add("")

    if "phoenix" in summ and REFERENCE in summ:
        p, ref = summ["phoenix"], summ[REFERENCE]
        fl = summ.get(FLOOR)
        add("#### Phoenix against the targets of issue #3")
        add("")
        add(
            "Targets are evaluated on wall time"
            + (" medians" if round_count(doc) > 1 else "")
            + "; the user CPU-seconds "
            "ratio beside it is the one the host cannot move. The last column is the same step done by "
            "Phoenix's safety steps alone (`bench/safety.py`: the consistent copies, integrity checks and "
            "SHA-256 the core issue requires, with no repository), measured in this run: no Phoenix step "
            f"can take less. {how}"
        )
        add("")
        add("| figure | Phoenix | reference | ratio | target | met | user CPU-s ratio | safety steps alone |")
        add("|---|---|---|---|---|---|---|---|")

        def label(text: str, step: str) -> str:
            n = p.get("medians", {}).get(step, {}).get("n")
            return f"{text} (median of {n})" if n and n > 1 else text

        rows = [
            (label("full backup", "full"), "full", f"{p['full']:.2f} s", f"restic {ref['full']:.2f} s"),
        ]
        if fl:
            rows.append(
                (label("full backup", "full"), "full_floor", f"{p['full']:.2f} s", f"tar\\|zstd {fl['full']:.2f} s")
            )
        rows += [
            ("no-change backup", "nochange", f"{p['nochange']:.2f} s", f"restic {ref['nochange']:.2f} s"),
            ("daily backup (mean)", "daily", f"{p['daily']:.2f} s", f"restic {ref['daily']:.2f} s"),
            (
                "repository growth per day (mean)",
                "growth",
                _fmt_bytes(p["growthPerDay"]),
                f"real change {_fmt_bytes(total_real / max(1, len(doc['realChange'])))}",
            ),
            (label("restore", "restore"), "restore", f"{p['restore']:.2f} s", f"restic {ref['restore']:.2f} s"),
        ]
        if "restoreAfterDrill" in p:
            theirs = ref.get("medians", {}).get("restoreAfterDrill", {"wall": ref["restore"]})["wall"]
            rows.append(
                (
                    label("restore after `phx drill`", "restoreAfterDrill"),
                    "restoreAfterDrill",
                    f"{p['restoreAfterDrill']:.2f} s",
                    f"restic {theirs:.2f} s" + (" (after the drill too)" if "restoreAfterDrill" in rounds else ""),
                )
            )
        rows.append(("peak memory", "memory", _fmt_bytes(p["memory"]), f"restic {_fmt_bytes(ref['memory'])}"))
        safety = summ.get(SAFETY)
        for name, key, mine, theirs in rows:
            ratio = p["ratios"].get(key, float("nan"))
            limit, _against = TARGETS["restore" if key == "restoreAfterDrill" else key]
            met = "yes" if ratio <= limit else "**no**"
            target = f"≤ {limit}x"
            user = alone = "–"
            if key in p["userRatios"]:  # a timed step: the target in seconds, and the safety steps' time
                step = {"full_floor": "full", "restoreAfterDrill": "restore"}.get(key, key)
                if ratio == ratio and ratio:  # not nan: the reference's seconds times the limit
                    target += f" ({limit * p[key if key != 'full_floor' else 'full'] / ratio:.2f} s)"
                if safety is not None:
                    alone = f"{safety[step]:.2f} s"
                user = _fmt_ratio(p["userRatios"][key])
            add(f"| {name} | {mine} | {theirs} | {_fmt_ratio(ratio)} | {target} | {met} | {user} | {alone} |")
        add("")
    if "phoenix" in summ and WRITE_ONLY in summ:
        lines += write_only_table(summ["phoenix"], summ[WRITE_ONLY])
    if doc["sourceWarnings"]:
        add("**Warnings**: " + "; ".join(doc["sourceWarnings"]) + ".")
        add("")
    return "\n".join(lines)


def round_count(doc: dict) -> int:
    """How many rounds the write-heavy steps ran in (0: a results file from before the rounds)."""
    return max((len(r) for r in doc.get("rounds", {}).values()), default=0)


def rounds_note(doc: dict, *, short: bool = False) -> str:
    """How the rounds were ordered, for the text of the tables."""
    rounds = doc.get("rounds", {})
    n = round_count(doc)
    if n <= 1:
        return "Every step ran once per tool, in the order of the tools above (no rounds)."
    if short:
        order = "; ".join(", ".join(r["order"]) for r in next(iter(rounds.values())))
        return (
            f"Write-heavy steps are medians of {n} rounds, the tools' order changed every round "
            f"({order}; see the table above)."
        )
    titles = {"full": "the full backup into a fresh repository", "restore": "the restore"}
    names = [titles.get(step, "the restore after `phx drill`") for step in rounds]
    steps = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    orders = "; ".join(f"{i + 1}: " + ", ".join(r["order"]) for i, r in enumerate(next(iter(rounds.values()))))
    return (
        f"Write-heavy steps ({steps}) ran in {n} rounds after the daily backups (each restore from a cold "
        "page cache for its repository), the tools' order changed every round (rotated one place every second "
        f"round, reversed in every odd one; {orders}); their figures are medians over the rounds."
    )


def rounds_table(doc: dict) -> list[str]:
    """The write-heavy steps' medians over the rounds, with each round's wall time."""
    rounds, summ = doc.get("rounds", {}), doc["summary"]
    if round_count(doc) <= 1:
        return []
    out = [
        "#### Write-heavy steps in rounds (medians; wall time / user CPU-seconds ratios against restic)",
        "",
        rounds_note(doc),
        "",
        "| step | tool | wall (median) | user CPU-s | system CPU-s | wall ×restic | user ×restic "
        "| wall of each round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    titles = {"full": "full backup", "restore": "restore", "restoreAfterDrill": "after `phx drill`"}
    for step, step_rounds in rounds.items():
        ref = summ.get(REFERENCE, {}).get("medians", {}).get(step)
        for t in doc["tools"]:
            med = summ[t].get("medians", {}).get(step)
            if med is None:
                continue
            walls = " / ".join(f"{r['results'][t]['wall']:.2f}" for r in step_rounds if t in r["results"])
            what = titles[step] if step != "restoreAfterDrill" or t == "phoenix" else "restore (same rounds)"
            ratio = _fmt_ratio(med["wall"] / ref["wall"]) if ref and ref["wall"] else "–"
            user = _fmt_ratio(med["user"] / ref["user"]) if ref and ref["user"] else "–"
            out.append(
                f"| {what} | {md(t)} | {med['wall']:.2f} s | {med['user']:.2f} | {med['sys']:.2f} | {ratio} | {user} "
                f"| {walls} |"
            )
    out.append("")
    return out


def write_only_table(p: dict, w: dict) -> list[str]:
    """Write-only against passphrase mode, both measured in this run (issue 21: within 10 %)."""
    rows = [
        ("full backup", f"{p['full']:.2f} s", f"{w['full']:.2f} s", w["full"] / p["full"]),
        ("no-change backup", f"{p['nochange']:.2f} s", f"{w['nochange']:.2f} s", w["nochange"] / p["nochange"]),
        ("daily backup (mean)", f"{p['daily']:.2f} s", f"{w['daily']:.2f} s", w["daily"] / p["daily"]),
        ("CPU, daily backup (mean)", f"{p['cpuDaily']:.2f} s", f"{w['cpuDaily']:.2f} s", w["cpuDaily"] / p["cpuDaily"]),
        (
            "repository after the full backup",
            _fmt_bytes(p["repoFull"]),
            _fmt_bytes(w["repoFull"]),
            w["repoFull"] / p["repoFull"],
        ),
        (
            "repository growth per day (mean)",
            _fmt_bytes(p["growthPerDay"]),
            _fmt_bytes(w["growthPerDay"]),
            w["growthPerDay"] / p["growthPerDay"],
        ),
        ("peak memory", _fmt_bytes(p["memory"]), _fmt_bytes(w["memory"]), w["memory"] / p["memory"]),
        ("restore (with the identity)", f"{p['restore']:.2f} s", f"{w['restore']:.2f} s", w["restore"] / p["restore"]),
    ]
    out = [
        "#### Write-only repository against passphrase mode (docs/write-only.md)",
        "",
        "| figure | passphrase | write-only | ratio | within 10 % |",
        "|---|---|---|---|---|",
    ]
    for label, a, b, ratio in rows:
        out.append(f"| {label} | {a} | {b} | {_fmt_ratio(ratio)} | {'yes' if ratio <= 1.1 else '**no**'} |")
    out.append("")
    return out


COLORS = {
    "phoenix": "#d1495b",
    "restic": "#00798c",
    "borg": "#edae49",
    "tar.gz": "#66a182",
    "tar|zstd": "#8d96a3",
    SAFETY: "#3d405b",
    WRITE_ONLY: "#7b2d26",
}


def plot(doc: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda y, _pos: f"{y:g}")

    res, summ = doc["results"], doc["summary"]
    tools = doc["tools"]
    steps = [s for s in doc["steps"] if s != "restore"]
    labels = ["full", "no-change", *[f"day {s[3:]}" for s in steps if s.startswith("day")]]
    fig, axes = plt.subplots(2, 2, figsize=(15, 11))
    fig.suptitle(
        f"Phoenix vs restic, borg, tar.gz — {doc['size']} workspace "
        f"({_fmt_bytes(doc['dataset']['totalBytes'])}), {doc['cpus']} cores, load average "
        f"{doc['loadavgStart'][0]:.1f}–{doc['loadavgEnd'][0]:.1f}, {doc['date'][:10]}",
        fontsize=13,
    )

    ax = axes[0][0]
    for t in [t for t in tools if t != SAFETY]:
        ys = [res[t][s]["repoBytes"] / MB for s in steps]
        style = "--" if t == FLOOR else "-"
        label = f"{t} (one archive)" if t == FLOOR else t
        ax.plot(labels, ys, style, marker="o", label=label, color=COLORS.get(t))
    ax.set_yscale("log")
    ax.set_ylabel("repository size (MB, log scale)")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_title("Repository size after each backup")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.tick_params(axis="x", rotation=45)

    ax = axes[0][1]
    step_all = [*steps, "restore"]
    all_labels = [*labels, "restore"]
    width = 0.8 / len(tools)
    for i, t in enumerate(tools):
        xs = [j + (i - (len(tools) - 1) / 2) * width for j in range(len(step_all))]
        ys = [res[t].get(s, {}).get("wall", 0) for s in step_all]
        ax.bar(xs, ys, width, label=t, color=COLORS.get(t))
    ax.set_xticks(range(len(step_all)), all_labels, rotation=45)
    ax.set_yscale("log")
    ax.set_ylabel("wall seconds (log scale)")
    ax.yaxis.set_major_formatter(plain)
    ax.set_title("Time per step")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(tools), loc="upper center", bbox_to_anchor=(0.5, -0.16))

    ax = axes[1][0]
    days = [c for c in doc["realChange"]]
    growth_tools = [t for t in tools if t not in NO_REPOSITORY]
    series = [("real change", [c["realBytes"] / MB for c in days], "#222222")]
    series += [(t, [summ[t]["growth"][f"day{c['day']}"] / MB for c in days], COLORS.get(t)) for t in growth_tools]
    width = 0.8 / len(series)
    for i, (name, ys, color) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(days))]
        ax.bar(xs, ys, width, label=name, color=color)
    ax.set_xticks(range(len(days)), [f"day {c['day']}" for c in days])
    ax.set_yscale("log")
    ax.set_ylabel("MB added to the repository (log scale)")
    ax.yaxis.set_major_formatter(plain)
    ax.set_title("Growth per day vs bytes that really changed (SQLite pages + files)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(series), loc="upper center", bbox_to_anchor=(0.5, -0.08))

    ax = axes[1][1]
    kinds = [("full", "full"), ("no-change", "nochange"), ("daily max", None), ("restore", "restore")]
    width = 0.8 / len(tools)
    for i, t in enumerate(tools):
        xs = [j + (i - (len(tools) - 1) / 2) * width for j in range(len(kinds))]
        ys = []
        for _, key in kinds:
            if key is None:
                ys.append(max(res[t][s]["maxRssKb"] for s in steps if s.startswith("day")) / 1024)
            else:
                ys.append(res[t].get(key, {}).get("maxRssKb", 0) / 1024)
        ax.bar(xs, ys, width, label=t, color=COLORS.get(t))
    ax.set_xticks(range(len(kinds)), [k for k, _ in kinds])
    ax.set_ylabel("peak RSS (MiB)")
    ax.set_title("Peak memory per step")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(tools), loc="upper center", bbox_to_anchor=(0.5, -0.08))

    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def update_readme(size: str, table: str) -> bool:
    start, end = f"<!-- bench:{size}:start -->", f"<!-- bench:{size}:end -->"
    updated = False
    for readme in READMES:
        if not readme.exists():
            continue
        text = readme.read_text()
        if start not in text or end not in text:
            continue
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")
        updated = True
    return updated


def _size(text: str) -> str | int:
    """A size name, or a number of bytes."""
    return int(text) if text.isdigit() else text


def _host_touch_text(doc: dict) -> str:
    """The range of the host's price for fresh memory measured before the steps (`fresh_memory_cost`)."""

    def values(node: object) -> Iterable[float]:
        if isinstance(node, dict):
            v = node.get("hostSysPerGiB")
            if isinstance(v, (int, float)):
                yield float(v)
            for child in node.values():
                yield from values(child)
        elif isinstance(node, list):
            for child in node:
                yield from values(child)

    found = list(values(doc.get("results", {}))) + list(values(doc.get("rounds", {})))
    if not found:
        return ""
    return (
        f" Touching new memory cost {min(found):.2f}–{max(found):.2f} system CPU-s per GiB before the steps "
        "(`fresh_memory_cost`: the host's price moves system times; compare them where it is alike)."
    )


def _daily_change(doc: dict) -> str:
    change = doc.get("dailyChange", doc["size"])
    return "" if change == doc["size"] else f" (each as many changed rows as a day of the `{change}` size)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", default="medium", help="tiny, small (~60 MB), medium (~600 MB), large (~3 GB), or bytes"
    )
    parser.add_argument(
        "--daily-change",
        metavar="SIZE",
        help="each day changes as many rows as a day of this size does (default: --size's own share); "
        "`--size 6000000000 --daily-change medium` is ten times the data with the medium's change",
    )
    parser.add_argument("--days", type=int, default=7, help="simulated days (default 7)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--tools",
        default=",".join(DEFAULT_TOOLS),
        help=f"comma-separated subset of {','.join(TOOLS)} (default: all but {WRITE_ONLY})",
    )
    parser.add_argument("--workdir", help="scratch folder (default bench/work/SIZE); emptied first")
    parser.add_argument("--results", default=str(RESULTS), help="where to write SIZE.md/.json/.png")
    parser.add_argument("--phx", help="run this phx executable (implies --live-source)")
    parser.add_argument(
        "--live-source",
        action="store_true",
        help="run the installed Phoenix as it is at each step, instead of a copy of its source taken at the start",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (repositories, logs)")
    parser.add_argument("--keep-going", action="store_true", help="record a failing step and carry on")
    parser.add_argument(
        "--no-readme", action="store_true", help="do not update the table in docs/benchmarks.md and bench/README.md"
    )
    parser.add_argument(
        "--drill",
        action="store_true",
        help="after the restore, run `phx drill` of the last snapshot and restore it again (steps drill and "
        "restoreAfterDrill, Phoenix only): the restore of a user who drills",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="repeat the restore (and restoreAfterDrill) this many times, and the full backup into a fresh "
        "repository, each round with the tools in another order (A B C, C B A, B C A, ...); the tables give "
        "the medians (default 3 up to the medium size, 1 above it; with 1, no full backup rounds)",
    )
    parser.add_argument("--replot", metavar="JSON", help="only rewrite the table and plot from a results JSON")
    args = parser.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(args.tools) - set(TOOLS)
    if unknown:
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")
    if REFERENCE not in args.tools:
        parser.error("restic is the reference of every ratio; keep it in --tools")
    if args.days < 1:
        parser.error("--days must be at least 1")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if importlib.util.find_spec("matplotlib") is None:  # known before the run, not after its hour
        parser.error("the chart needs matplotlib: pip install matplotlib into this venv, or run bench/run.sh")

    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    if args.replot:
        doc = json.loads(Path(args.replot).read_text())
        doc["summary"] = summarize(doc)
    else:
        doc = run(args)
    size = doc["size"]
    (results / f"{size}.json").write_text(json.dumps(doc, indent=1) + "\n")
    table = markdown(doc)
    (results / f"{size}.md").write_text(table + "\n")
    plot(doc, results / f"{size}.png")
    if not args.no_readme and update_readme(size, table):
        log(f"updated the {size} table in " + " and ".join(str(r) for r in READMES))
    print()
    print(table)
    log(f"wrote {results / f'{size}.md'}, {results / f'{size}.json'}, {results / f'{size}.png'}")
    failed = [
        t
        for t, r in doc["results"].items()
        if not r.get("restore", {}).get("verified", False) or not r.get("restoreAfterDrill", {}).get("verified", True)
    ]
    if failed:
        log(f"restore check failed for: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
