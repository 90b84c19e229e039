"""Helpers shared by the end-to-end tests: running `phx`, snapshotting a folder's files and a
database's rows, and comparing them with readable failure messages.

Everything here works on real files and real SQLite databases; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from phoenix_backup.sample import SampleLayout, generate_workspace, layout_for
from phoenix_backup.shell import proc_stat

# The `phx` of the interpreter running the tests (the project's venv), else the one on PATH.
_BESIDE = Path(sys.executable).with_name("phx")
PHX = str(_BESIDE) if _BESIDE.exists() else (shutil.which("phx") or "phx")

# Files that belong to a database: never compared as files, only through SQLite.
DB_SUFFIXES = (".db", ".db-wal", ".db-shm", ".db-journal")


@dataclass
class Result:
    """One finished `phx` run."""

    code: int
    out: str
    err: str
    cmd: Sequence[str]

    def __iter__(self):  # (code, stdout, stderr), so `code, out, err = phx(...)` works
        return iter((self.code, self.out, self.err))

    def json(self) -> Any:
        try:
            return json.loads(self.out)
        except json.JSONDecodeError as exc:  # pragma: no cover - a failure message
            raise AssertionError(f"stdout of {' '.join(self.cmd)} is not one JSON document: {exc}\n{self}") from exc

    def __str__(self) -> str:
        return f"$ {' '.join(self.cmd)}\nexit {self.code}\n--- stdout ---\n{self.out}\n--- stderr ---\n{self.err}"

    def stderr_lines(self) -> list[str]:
        """stderr as plain-text lines: with --json, each JSON notice or error as the line it is
        without --json (`phx: MESSAGE`, `phx: warning: MESSAGE`, `phx: error: MESSAGE`); progress
        lines left out."""
        lines = []
        for line in self.err.splitlines():
            if not line.startswith("{"):
                lines.append(line)
                continue
            doc = json.loads(line)
            if doc["type"] == "error":
                lines.append(f"phx: error: {doc['message']}")
            elif doc["type"] == "notice":
                lines.append(f"phx: {'warning: ' if doc['level'] == 'warning' else ''}{doc['message']}")
        return lines

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr_lines() if line.startswith("phx: error:")]


def run_phx(
    args: Iterable[str],
    env: Mapping[str, str],
    *,
    check: bool | int | None = True,
    prefix: Sequence[str] = (),
    timeout: float = 180,
    cwd: Path | None = None,
) -> Result:
    """Run `phx ARGS` with exactly `env`, stdin closed. `check`: True = expect exit 0, an int = expect
    that exit code, False/None = no check. Output never holds a traceback (unless --verbose)."""
    args = [str(a) for a in args]
    cmd = [PHX, *args]
    if prefix:
        # A wrapper (runuser/setpriv) may reset the environment: pass it explicitly through env(1).
        cmd = [*prefix, "env", "-i", *(f"{k}={v}" for k, v in env.items()), *cmd]
    proc = subprocess.run(
        cmd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    res = Result(proc.returncode, proc.stdout, proc.stderr, ["phx", *args])
    if "--verbose" not in args and "-v" not in args:
        assert "Traceback" not in res.out + res.err, f"traceback in the output:\n{res}"
    if check is True:
        assert res.code == 0, f"expected exit 0:\n{res}"
    elif check is not False and check is not None:
        assert res.code == check, f"expected exit {check}:\n{res}"
    return res


def run_phx_here(args: Iterable[str], env: Mapping[str, str], code: int = 0) -> Result:
    """`phx ARGS` in this process (click's runner), with exactly `env` as the environment for the
    call, expected to exit 0 with no traceback. For the many commands of a test whose point is the
    repository they read, not the process boundary (start-up, signals, exit codes of a failure:
    those run the real `phx` through `run_phx`): a restore of each of 34 snapshots costs the
    interpreter's start and the imports once, not 34 times (docs/development.md). `code`: the exit
    status expected (a finding such as verify's exit 1 needs no process of its own either)."""
    from click.testing import CliRunner

    from phoenix_backup.cli.main import cli

    args = [str(a) for a in args]
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        run = CliRunner().invoke(cli, args, prog_name="phx")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    res = Result(run.exit_code, run.stdout, run.stderr, ["phx", *args])
    assert run.exception is None or isinstance(run.exception, SystemExit), f"{run.exception!r}\n{res}"
    assert "Traceback" not in res.out + res.err, f"traceback in the output:\n{res}"
    assert res.code == code, f"expected exit {code}:\n{res}"
    return res


def assert_error(res: Result, code: int, *needles: str) -> str:
    """The run failed with `code`, said so in exactly one `phx: error:` line on stderr naming every
    needle (case-insensitive), and printed no traceback. Returns that line."""
    assert res.code == code, f"expected exit {code}:\n{res}"
    lines = res.error_lines()
    assert len(lines) == 1, f"expected exactly one 'phx: error:' line on stderr:\n{res}"
    assert "Traceback" not in res.out + res.err, f"traceback in the output:\n{res}"
    line = lines[0]
    for needle in needles:
        assert needle.lower() in line.lower(), f"the error line does not name {needle!r}: {line!r}\n{res}"
    return line


# --------------------------------------------------------------------------------------------
# The sandbox
# --------------------------------------------------------------------------------------------

PASSPHRASE = "correct horse battery staple e2e"
# scrypt parameters of the sandboxes' passphrase slots (see Sandbox.init_repository).
TEST_KDF = {"n": 2**12, "r": 8, "p": 1}
# Logical paths of the sample's databases inside a snapshot / below `restore --to DIR`.
DATABASES = ("home/.argentos/memory.db", "home/.argentos/observations.db", "home/.argentos/data/dashboard.db")
# The config component's files below HOME that a full backup saves beside the databases.
HOME_CONFIG_FILES = ("home/.argentos/argent.json", "home/.argentos/backup.json")
# Seconds to wait so that files are older than "modified within a second of the backup's start".
RACY_WAIT = 1.1


# Whether the sandboxes' helpers (`backup`, `restore_to`, `verify`, `snapshots`) run `phx` in this
# process (`run_phx_here`) rather than as a subprocess: set for the tests of a file marked
# `pytestmark = pytest.mark.phx_in_process` (tests/e2e/conftest.py). A helper called with
# `check=None`/`False`/`2`, or for a sandbox with a wrapper (`prefix`), still starts a process.
HELPERS_IN_PROCESS = False


class Sandbox:
    """One test's world. Layout below `root`:

    sample/workspace/           the agent workspace (the config's `workspace`)
    sample/home/                HOME (so ~/.argentos/*.db are the sample's databases)
    sample/home/.argentos/backup.json   the config (PHX_CONFIG), where `phx init` writes it
    repo/                       the local repository (`backupDir`)
    cache/                      PHX_CACHE_DIR
    """

    def __init__(self, root: Path, layout: SampleLayout, encryption: bool = True) -> None:
        self.root = root
        self.layout = layout
        self.workspace = layout.workspace
        self.home = layout.home
        self.repo = root / "repo"
        self.cache = root / "cache"
        self.config_path = self.home / ".argentos" / "backup.json"
        self.cache.mkdir(exist_ok=True)
        self.env: dict[str, str] = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(self.home),
            "PHX_CONFIG": str(self.config_path),
            "PHX_PASSPHRASE": PASSPHRASE,
            "PHX_CACHE_DIR": str(self.cache),
            "XDG_CACHE_HOME": str(root / "xdg-cache"),
            "XDG_CONFIG_HOME": str(root / "xdg-config"),
            "XDG_DATA_HOME": str(root / "xdg-data"),
        }
        if "TZ" in os.environ:
            self.env["TZ"] = os.environ["TZ"]
        self.config: dict[str, Any] = {
            "workspace": str(self.workspace),
            "backupDir": str(self.repo),
            "include": [],  # the whole workspace
            "exclude": [],  # nothing dropped, so a restore must give back every file
            "encryption": {"enabled": encryption, "method": "passphrase"},
            # Every backup runs the full integrity_check, as before the cadence: the tests of other
            # features see no "not checked" copy, and retention keeps nothing for a check's sake.
            # tests/e2e/test_integrity_cadence.py sets the cadence it tests.
            "databases": {"integrityCheckEvery": "0h"},
        }
        self.write_config()
        self.prefix: Sequence[str] = ()  # a runuser/setpriv wrapper, for permission tests
        self.init_repository()

    def init_repository(self) -> None:
        """Create the repository of the config's first target, as `phx init` does (only init creates
        it; a backup refuses a missing one), pinning its key for this sandbox's user. Passphrase
        slots get scrypt n=2**12 instead of the default 2**15: every `phx` run of the suite derives
        the key again, and the default cost (0.1-0.5 s per run here) would add minutes. Tests of
        init itself run `phx init`."""
        from phoenix_backup.config import load_config
        from phoenix_backup.ops.context import Environment, enabled_targets, open_repository, target_backend

        cfg = load_config(self.config_path, self.env)
        envx = Environment(env=self.env)
        backend = target_backend(cfg, envx, enabled_targets(cfg)[0])
        try:
            exists = backend.exists()
        finally:
            backend.close()
        if not exists:
            open_repository(cfg, envx, create=True, kdf_params=TEST_KDF).close()

    # -- config ------------------------------------------------------------------------

    def write_config(self, **changes: Any) -> dict[str, Any]:
        self.config.update(changes)
        self.config_path.write_text(json.dumps(self.config, indent=2) + "\n")
        return self.config

    def reinit(self, **changes: Any) -> None:
        """The config with `changes` (another encryption, say) and a new, empty repository made for
        it as `phx init` would (the sandbox's own is removed; the new key is pinned)."""
        self.write_config(**changes)
        shutil.rmtree(self.repo, ignore_errors=True)
        self.init_repository()

    # -- running phx -------------------------------------------------------------------

    def phx(
        self,
        *args: str | Path,
        check: bool | int | None = True,
        env: dict[str, str] | None = None,
        timeout: float = 180,
    ) -> Result:
        return run_phx(
            [str(a) for a in args], self.env if env is None else env, check=check, prefix=self.prefix, timeout=timeout
        )

    def phx_here(self, *args: str | Path, code: int = 0) -> Result:
        """`phx ARGS` in this process (`run_phx_here`): exit `code` expected, no wrapper (`prefix`)."""
        assert not self.prefix, "a command run as another user needs its own process"
        return run_phx_here([str(a) for a in args], self.env, code)

    def env_with(self, **changes: str | None) -> dict[str, str]:
        env = dict(self.env)
        for k, v in changes.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def _helper(self, *args: str | Path, check: bool | int | None) -> Result:
        """A helper's command: in this process for a file marked `phx_in_process` (HELPERS_IN_PROCESS)
        when the exit code is known and no wrapper is set, else a real `phx` process (also for exit
        2: a usage error is said by the entry point, `cli.main.main`, which click's runner skips)."""
        if HELPERS_IN_PROCESS and not self.prefix and check is not None and check is not False and check != 2:
            return self.phx_here(*args, code=0 if check is True else check)
        return self.phx(*args, check=check)

    def backup(self, *args: str, check: bool | int | None = True) -> dict[str, Any]:
        res = self._helper("backup", "--json", *args, check=check)
        doc: dict[str, Any] = res.json()
        return doc

    def restore_to(self, ref: str, dest: Path, *args: str, check: bool | int | None = True) -> dict[str, Any]:
        res = self._helper("restore", "--backup", ref, "--to", dest, "--json", *args, check=check)
        doc: dict[str, Any] = res.json()
        return doc

    def verify(self, *args: str, check: bool | int | None = True) -> dict[str, Any]:
        res = self._helper("verify", "--json", *args, check=check)
        doc: dict[str, Any] = res.json()
        return doc

    def snapshots(self) -> list[dict[str, Any]]:
        doc: list[dict[str, Any]] = self._helper("list", "--json", check=True).json()
        return doc

    # -- the state a restore must reproduce -------------------------------------------

    def state(self) -> dict[str, Any]:
        """The workspace's files (content, mode, mtime) and every database's rows, right now."""
        argent = self.home / ".argentos" / "argent.json"
        return {
            "workspace": file_manifest(self.workspace),
            "databases": {logical: db_dump(self.db_path(logical)) for logical in DATABASES},
            "home": {"home/.argentos/argent.json": sha256_file(argent)} if argent.exists() else {},
        }

    def db_path(self, logical: str) -> Path:
        assert logical.startswith("home/")
        return self.home / logical.removeprefix("home/")


def numbered_notes(sb: Sandbox, count: int) -> dict[str, bytes]:
    """`count` small notes of distinct sizes (n000.md: 3200 bytes, each next one 32 more) in the
    workspace's notes folder: {name: bytes}."""
    folder = sb.workspace / "notes"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i in range(count):
        data = hashlib.sha256(str(i).encode()).digest() * (100 + i)
        (folder / f"n{i:03}.md").write_bytes(data)
        files[f"n{i:03}.md"] = data
    return files


def process_state(pid: int) -> str:
    """The process's state letter in /proc/PID/stat (R, S, T, Z, ...), "" when it is gone."""
    fields = proc_stat(pid)
    return fields[0] if fields else ""


def wait_past_racy_window() -> None:
    """Files changed within a second of a backup's start are read again by the next backup."""
    time.sleep(RACY_WAIT)


def assert_restored(state: Mapping[str, Any], dest: Path, what: str, *, ignore: Iterable[str] = ()) -> None:
    """`restore --to DEST` gave back exactly `state`: every workspace file byte-equal with its mode
    and mtime (folders too), nothing extra, and every database row-equal and intact. Workspace
    paths in `ignore` are not compared."""
    skip = set(ignore)
    expected = {k: v for k, v in state["workspace"].items() if k not in skip}
    actual = {k: v for k, v in file_manifest(dest / "workspace").items() if k not in skip}
    assert_same_tree(expected, actual, f"{what}: workspace")
    home_files = sorted(p.relative_to(dest).as_posix() for p in (dest / "home").rglob("*") if not p.is_dir())
    # Besides the databases, home holds the config component: the agent's argent.json and
    # Phoenix's own config (a full backup saves both; the config may change between snapshots).
    others = [f for f in home_files if f not in HOME_CONFIG_FILES]
    assert others == sorted(state["databases"]), f"{what}: files below DEST/home: {home_files}"
    for logical, digest in state.get("home", {}).items():
        if (dest / logical).exists():
            assert sha256_file(dest / logical) == digest, f"{what}: {logical} differs"
    for logical, expected in state["databases"].items():
        path = dest / logical
        assert integrity(path) == ["ok"], f"{what}: {logical} fails integrity_check"
        assert_same_db(expected, db_dump(path), f"{what}: {logical}")


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def file_manifest(base: Path, *, skip_databases: bool = True) -> dict[str, tuple[Any, ...]]:
    """Everything below `base` (not `base` itself), by relative path:
    files (kind, mode, mtime_ns, size, sha256), folders (kind, mode, mtime_ns),
    symlinks (kind, target, mtime_ns). Database files are left out when `skip_databases`."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(base).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", oct(stat.S_IMODE(st.st_mode)), st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                if skip_databases and name.endswith(DB_SUFFIXES):
                    continue
                out[rel] = ("file", oct(stat.S_IMODE(st.st_mode)), st.st_mtime_ns, st.st_size, sha256_file(path))
            else:
                out[rel] = ("other", st.st_mode)
    return out


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def retention_only(**rules: Any) -> dict[str, Any]:
    """A retention section with these rules alone: the defaults (the last day, the last 10, daily 7,
    weekly 4, monthly 12) switched off."""
    off = {"within": "0h", "last": 0, "hourly": 0, "daily": 0, "weekly": 0, "monthly": 0, "yearly": 0}
    return {**off, **rules}


def only_files(manifest: Mapping[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    return {k: v for k, v in manifest.items() if v[0] == "file"}


def assert_same_tree(expected: Mapping[str, tuple[Any, ...]], actual: Mapping[str, tuple[Any, ...]], what: str) -> None:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    differ = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
    problems = []
    if missing:
        problems.append(f"missing: {missing[:20]}")
    if extra:
        problems.append(f"unexpected: {extra[:20]}")
    for k in differ[:20]:
        problems.append(f"differs: {k}: expected {expected[k]}, got {actual[k]}")
    assert not problems, f"{what}:\n" + "\n".join(problems)


# --------------------------------------------------------------------------------------------
# Databases
# --------------------------------------------------------------------------------------------


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def db_dump(path: Path) -> dict[str, Any]:
    """Schema and, per real table, (row count, SHA-256 of every row in rowid/key order).
    Virtual tables (FTS5, vec0) are skipped; their shadow tables are real and compared."""
    assert path.is_file(), f"{path} does not exist"
    con = sqlite3.connect(path)
    try:
        schema = con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        tables: dict[str, tuple[int, str]] = {}
        for name, sql in con.execute("SELECT name, sql FROM sqlite_master WHERE type='table' ORDER BY name"):
            if (sql or "").lstrip().upper().startswith("CREATE VIRTUAL TABLE"):
                continue
            try:
                rows = con.execute(f"SELECT * FROM {_quote(name)} ORDER BY rowid").fetchall()
            except sqlite3.OperationalError:  # WITHOUT ROWID
                rows = con.execute(f"SELECT * FROM {_quote(name)} ORDER BY 1").fetchall()
            h = hashlib.sha256()
            for row in rows:
                h.update(repr(row).encode())
                h.update(b"\n")
            tables[name] = (len(rows), h.hexdigest())
    finally:
        con.close()
    return {"schema": schema, "tables": tables}


def assert_same_db(expected: Mapping[str, Any], actual: Mapping[str, Any], what: str) -> None:
    assert expected["schema"] == actual["schema"], f"{what}: schema differs"
    et, at = expected["tables"], actual["tables"]
    assert set(et) == set(at), f"{what}: tables differ: {sorted(set(et) ^ set(at))}"
    differ = {t: (et[t], at[t]) for t in et if et[t] != at[t]}
    assert not differ, f"{what}: rows differ in tables (count, sha256) expected vs got: {differ}"


def integrity(path: Path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return [str(r[0]) for r in con.execute("PRAGMA integrity_check")]
    finally:
        con.close()


def row_count(path: Path, table: str) -> int:
    con = sqlite3.connect(path, timeout=30)
    try:
        return int(con.execute(f"SELECT COUNT(*) FROM {_quote(table)}").fetchone()[0])
    finally:
        con.close()


def scan_for(root: Path, needles: Sequence[bytes]) -> list[str]:
    """Every (path, needle) where a needle occurs in a file's bytes or in a path name below root."""
    hits = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            for needle in needles:
                if needle in name.encode():
                    hits.append(f"name {Path(dirpath, name)} holds {needle!r}")
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
            for needle in needles:
                if needle in data:
                    hits.append(f"{path} holds {needle!r} at byte {data.find(needle)}")
    return hits


def flip_byte(path: Path, offset: int | None = None) -> int:
    """Invert one byte of a file (its middle byte by default); return the offset."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0xFF
    mode = stat.S_IMODE(path.stat().st_mode)
    path.chmod(0o600)
    path.write_bytes(bytes(data))
    path.chmod(mode)
    return at


def damage_blob(sb: Sandbox, logical: str, snapshot: str = "latest", target: str | None = None) -> Path:
    """Flip one byte inside the first blob of `logical` in `snapshot`, in the local repository at
    `sb.repo`: a blob a restore of that file must read. Return the damaged pack."""
    from phoenix_backup.config import load_config
    from phoenix_backup.ops.context import Environment, open_repository
    from phoenix_backup.repo.pack import pack_name
    from phoenix_backup.repo.walker import find_node

    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env), target=target)
    try:
        repo.load_index()
        node = find_node(repo, repo.find_snapshot(snapshot), logical)
        assert node is not None and node.content, f"{logical} has no content in {snapshot}"
        loc = repo.index.get(node.content[0].blob)
        assert loc is not None
        pack = sb.repo / pack_name(loc.pack_id)
        flip_byte(pack, loc.offset + loc.stored // 2)
        return pack
    finally:
        repo.close()


# --------------------------------------------------------------------------------------------
# File systems
# --------------------------------------------------------------------------------------------


def mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def tmpfs_at(mnt: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (`8m`) mounted at `mnt` (created), unmounted afterwards; the test is
    skipped, with the reason, where mounting is not allowed (not root, a container)."""
    import pytest

    if not shutil.which("mount") or not shutil.which("umount"):
        pytest.skip("mount/umount are not installed")
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mnt.mkdir(parents=True, exist_ok=True)
    proc = mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mnt))
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, stdin=subprocess.DEVNULL)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------------------------
# A terminal
# --------------------------------------------------------------------------------------------


@dataclass
class TerminalRun:
    """One `phx` run on a pseudo-terminal: its exit code and every byte it wrote there."""

    code: int
    raw: str
    # Seconds from the Ctrl-C typed (`interrupt_after`) to the end of the process, if one was typed.
    after_interrupt: float | None = None
    # Whether the terminal echoes what is typed, once the process has ended (as the shell finds it).
    echoes: bool = True

    @property
    def screen(self) -> list[str]:
        return screen_lines(self.raw)

    def __str__(self) -> str:
        return f"exit {self.code}\n--- screen ---\n" + "\n".join(self.screen)


def screen_lines(raw: str) -> list[str]:
    """The lines a person sees on a terminal after `raw` was written to it: a carriage return goes
    back to the start of the line and overwrites, `ESC[2K` / `ESC[K` erase, `ESC[nA` moves up (as
    Rich's live display does), a newline moves on; other control sequences (`ESC[?25l`, colours)
    show nothing."""
    lines: list[list[str]] = [[]]
    row = 0
    col = 0
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\x1b":
            match = re.match(r"\x1b\[([0-9;?]*)([A-Za-z])", raw[i:])
            if match:
                line = lines[row]
                if match.group(2) == "K":
                    mode = match.group(1) or "0"
                    if mode == "2":
                        lines[row] = [" "] * len(line)
                    elif mode == "0":
                        del line[col:]
                elif match.group(2) == "A":
                    row = max(0, row - int(match.group(1) or "1"))
                i += len(match.group(0))
                continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row += 1
            if row == len(lines):
                lines.append([])
            col = 0
        else:
            line = lines[row]
            if col < len(line):
                line[col] = ch
            else:
                line.extend(" " * (col - len(line)))
                line.append(ch)
            col += 1
        i += 1
    return [text for text in ("".join(line).rstrip() for line in lines) if text]


def on_a_terminal(
    args: Sequence[str],
    env: Mapping[str, str],
    answers: Sequence[str] = (),
    *,
    interrupt_after: str | None = None,
    timeout: float = 120,
) -> TerminalRun:
    """Run `phx ARGS` with a pseudo-terminal as its controlling terminal (stdin, stdout and stderr),
    typing each of `answers` at each prompt in turn (a line ending in ':' since the last answer),
    and typing Ctrl-C once the output shows `interrupt_after`."""
    import pty
    import select
    import signal
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # the child: phx with exactly `env`
        # As a command typed at a terminal: Ctrl-C interrupts it even when these tests run as a
        # background job of a script, which starts with SIGINT ignored (exec would pass that on).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execve(PHX, [PHX, *[str(a) for a in args]], dict(env))
    output = b""
    pending = list(answers)
    answered = 0
    interrupted: float | None = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _w, _x = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child has exited
                break
            if not chunk:
                break
            output += chunk
            # A new prompt since the last answer: answer it (earlier input would be discarded).
            if pending and output[answered:].rstrip().endswith(b":"):
                os.write(fd, pending.pop(0).encode() + b"\n")
                answered = len(output)
            if interrupt_after is not None and interrupted is None and interrupt_after.encode() in output:
                os.write(fd, b"\x03")  # the terminal turns it into SIGINT and echoes ^C
                interrupted = time.monotonic()
        echoes = bool(termios.tcgetattr(fd)[3] & termios.ECHO)
    finally:
        os.close(fd)
    if time.monotonic() >= deadline:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"phx {' '.join(map(str, args))} on a terminal did not finish:\n{output.decode()}")
    _pid, status = os.waitpid(pid, 0)
    took = time.monotonic() - interrupted if interrupted is not None else None  # to the process's end
    return TerminalRun(os.waitstatus_to_exitcode(status), output.decode(errors="replace"), took, echoes)


# --------------------------------------------------------------------------------------------
# Notifications
# --------------------------------------------------------------------------------------------

# The token of the receiver's URL, as in real Apprise URLs: it must never be echoed.
NOTIFY_TOKEN = "tok-CANARY-0815"


class Receiver:
    """A loopback HTTP server that records every POSTed JSON body."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                received.append({"path": self.path, "body": json.loads(body), "raw": body.decode()})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.port}/{path}?token={NOTIFY_TOKEN}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# Where `new_sandbox` keeps the tiny samples it generated, one per seed, to copy for the next
# sandbox (tests/e2e/conftest.py sets it to a folder of the session): a sample is the same bytes
# wherever it is generated, and a copy costs a twentieth of generating it again.
SAMPLE_CACHE: Path | None = None


def generated_sample(dest: Path, size: str | int, seed: int) -> SampleLayout:
    """`generate_workspace(dest, size, seed)`; a tiny one at a new `dest` copied from SAMPLE_CACHE
    (the copy's files and folders are new, as a generated sample's: modified now)."""
    if SAMPLE_CACHE is None or size != "tiny" or dest.exists():
        return generate_workspace(dest, size=size, seed=seed)
    template = SAMPLE_CACHE / f"tiny-{seed}"
    if not template.exists():
        generate_workspace(template.with_name(template.name + ".new"), size=size, seed=seed)
        template.with_name(template.name + ".new").rename(template)
    shutil.copytree(template, dest, symlinks=True, copy_function=shutil.copy)
    for folder, _dirs, _files in os.walk(dest):
        os.utime(folder)
    return layout_for(dest)


def new_sandbox(root: Path, size: str | int = "tiny", seed: int = 7, encryption: bool = True) -> Sandbox:
    """A sandbox at `root` with a generated sample (the `sandbox` fixtures' maker, for a fixture of
    wider scope)."""
    return Sandbox(root, generated_sample(root / "sample", size, seed), encryption)


def new_machine(tmp_path: Path, **secrets: str) -> dict[str, str]:
    """A machine that never ran Phoenix: its own HOME and data dirs, and only `secrets`."""
    home = tmp_path / "new-machine"
    home.mkdir()
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        **secrets,
    }


def remove_chain(top: Path) -> None:
    """Remove the chain of folders `top/d/d/…` a level at a time (the deepest moved up under `top`):
    shutil.rmtree and pytest's clean-up of old temporary folders recurse, and fail past ~1,000."""
    link = top / "d"
    while link.is_dir():
        for entry in link.iterdir():
            if entry.name != "d":
                entry.unlink()
        if (link / "d").is_dir():
            os.rename(link / "d", top / ".next")
            link.rmdir()
            os.rename(top / ".next", link)
        else:
            link.rmdir()
