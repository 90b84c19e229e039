"""Wrong values in config fields through the real `phx` entry (in this process): one `phx: error:`
line naming the field and the fix, exit 2, nothing written. Each row of the table stopped a
command with an internal error (exit 1), was taken silently, or blocked for ever, before the
checks in config/parse.py and config/load.py (red36)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, run_phx_here

COMMANDS = (
    ("backup",),
    ("restore", "--dry-run", "--latest"),
    ("doctor",),
    ("status",),
    ("forget", "--dry-run"),
)

# (field path, value, words the error must hold)
BAD_VALUES = [
    ("retention.within", "999999999999y", ("retention.within", "at most 1000 years")),
    ("retention.capturesWithin", "1001y", ("retention.capturesWithin", "at most 1000 years")),
    ("retention.capturesHourlyWithin", "9" * 5000 + "d", ("retention.capturesHourlyWithin", "at most")),
    ("databases.integrityCheckEvery", "366000d", ("databases.integrityCheckEvery", "at most 1000 years")),
    ("retention.keepSafetyDays", 2**200, ("retention.keepSafetyDays", "at most 365250 days")),
    ("workspace", "/tmp/ws\u0000x", ("workspace", "NUL")),
    ("backupDir", "/tmp/re\u0000po", ("backupDir", "NUL")),
    ("exclude", ["*.log", "a\u0000b"], ("exclude[1]", "NUL")),
    ("hooks.preBackup", "echo \u0000", ("hooks.preBackup", "NUL")),
    ("workspace", "~no-such-user-red36/ws", ('no user "no-such-user-red36"', "workspace")),
    ("backupDir", "${HOME/backups", ("backupDir", "unclosed variable reference")),
    # git refused these only at `phx init` or the first push, naming no field.
    ("targets.git.branch", "x:y", ("targets.git.branch", "Git branch name")),
    ("targets.git.branch", "main.lock", ("targets.git.branch", "Git branch name")),
    ("targets.git.branch", "\u001b[31m", ("targets.git.branch", "Git branch name")),
    # Shaped like cron, so config/ took it; doctor said "valid", status named no field.
    ("schedule.every", "99 99 * * *", ("schedule.every", "minute field '99'")),
    ("schedule.every", "0 0 31 2 *", ("schedule.every", "never comes due")),
]


def _write(path: Path, root: Path, field: str, value: object) -> None:
    config: dict[str, Any] = {
        "workspace": str(root / "ws"),
        "backupDir": str(root / "repo"),
        "encryption": {"enabled": False},
    }
    node = config
    *parents, last = field.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    path.write_text(json.dumps(config))


def _env(root: Path, config: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root / "home"),
        "PHX_CONFIG": str(config),
        "PHX_CACHE_DIR": str(root / "cache"),
        "XDG_CACHE_HOME": str(root / "xdg-cache"),
        "XDG_CONFIG_HOME": str(root / "xdg-config"),
        "XDG_DATA_HOME": str(root / "xdg-data"),
        "XDG_STATE_HOME": str(root / "xdg-state"),
    }


@pytest.mark.parametrize(
    ("field", "value", "words"), BAD_VALUES, ids=[f"{r[0]}={str(r[1])[:20]!r}" for r in BAD_VALUES]
)
def test_a_wrong_value_is_one_error_naming_the_field(
    tmp_path: Path, field: str, value: object, words: tuple[str, ...]
) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "home").mkdir()
    config = tmp_path / "phx.json"
    _write(config, tmp_path, field, value)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for command in COMMANDS:
        # doctor reports a config it refuses as its failed check (exit 1), the others exit 2.
        doctor = command == ("doctor",)
        res = run_phx_here(command, _env(tmp_path, config), code=1 if doctor else 2)
        lines = [line for line in res.out.splitlines() if line.startswith("✗ config:")] if doctor else res.error_lines()
        assert len(lines) == 1, res
        for word in words:
            assert word in lines[0], res
        assert "internal error" not in res.out + res.err, res
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "a refused config wrote files"


def test_a_config_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("phoenix_backup.config.load.PIPE_WRITER_WAIT", 0.1)  # 10 s for users
    (tmp_path / "home").mkdir()
    fifo = tmp_path / "phx.json"
    os.mkfifo(fifo)
    res = run_phx_here(("status",), _env(tmp_path, fifo), code=2)
    assert "a pipe that nothing wrote to within 0.1 s" in res.err and str(fifo) in res.err, res
    res = run_phx_here(("status",), _env(tmp_path, Path("/dev/zero")), code=2)
    assert "is a device" in res.err, res


def test_a_config_from_a_pipe_with_a_writer_is_read(tmp_path: Path) -> None:
    """`--config <(generate-config)`: a pipe with its writer is read to its end, as before."""
    (tmp_path / "ws").mkdir()
    (tmp_path / "home").mkdir()
    config = tmp_path / "phx.json"
    _write(config, tmp_path, "schedule.every", "0 0 31 2 *")  # an error that proves the text was read
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, config.read_bytes())
        os.close(write_end)
        res = run_phx_here(("status",), _env(tmp_path, Path(f"/dev/fd/{read_end}")), code=2)
    finally:
        os.close(read_end)
    assert "never comes due" in res.err, res


def test_a_named_pipe_whose_writer_comes_after_the_reader_is_read(tmp_path: Path) -> None:
    """`mkfifo phx.json` and a helper that writes the config once a reader has opened it (it opens
    without blocking until one is there): read before red36; red36 read the pipe before the writer
    came and refused it as "a pipe that nothing writes to"."""
    (tmp_path / "ws").mkdir()
    (tmp_path / "home").mkdir()
    source = tmp_path / "source.json"
    _write(source, tmp_path, "schedule.every", "0 0 31 2 *")  # an error that proves the text was read
    fifo = tmp_path / "phx.json"
    os.mkfifo(fifo)

    def helper() -> None:
        for _ in range(2000):  # at most ~10 s
            try:
                descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while no reader
            except OSError:
                time.sleep(0.005)
                continue
            os.set_blocking(descriptor, True)
            os.write(descriptor, source.read_bytes())
            os.close(descriptor)
            return

    writer = threading.Thread(target=helper, daemon=True)
    writer.start()
    res = run_phx_here(("status",), _env(tmp_path, fifo), code=2)
    writer.join(15)
    assert "never comes due" in res.err, res


def test_a_pipe_whose_writer_is_there_is_not_hurried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--config <(slow-generator)`: a writer that is there but writes late (a prompt, a vault
    call) is waited for as long as it takes; only a pipe with no writer at all has a deadline."""
    monkeypatch.setattr("phoenix_backup.config.load.PIPE_WRITER_WAIT", 0)
    (tmp_path / "ws").mkdir()
    (tmp_path / "home").mkdir()
    source = tmp_path / "source.json"
    _write(source, tmp_path, "schedule.every", "0 0 31 2 *")  # an error that proves the text was read
    read_end, write_end = os.pipe()

    def slow() -> None:
        time.sleep(0.2)  # past the (zero) deadline; there is no event to await in a slow writer
        os.write(write_end, source.read_bytes())
        os.close(write_end)

    writer = threading.Thread(target=slow, daemon=True)
    writer.start()
    try:
        res = run_phx_here(("status",), _env(tmp_path, Path(f"/dev/fd/{read_end}")), code=2)
    finally:
        writer.join(5)
        os.close(read_end)
    assert "never comes due" in res.err, res


def test_the_longest_durations_still_allowed_work(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "home").mkdir()
    config = tmp_path / "phx.json"
    _write(config, tmp_path, "retention", {"within": "1000y", "capturesWithin": "365250d", "keepSafetyDays": 365250})
    # The config is taken: forget gets as far as the repository (none here).
    res = run_phx_here(("forget", "--dry-run"), _env(tmp_path, config), code=1)
    assert "no repository at" in res.err and "internal error" not in res.err, res


def test_a_mistyped_component_restores_nothing_and_says_so(backed_up: Sandbox, tmp_path: Path) -> None:
    """`components.memory: ["memroy/"]`: `restore --memory-only` planned "0 to create" and exited 0,
    as if the memory were back; now it names components.memory (exit 2) and writes nothing."""
    sb = backed_up
    sb.write_config(components={"memory": ["memroy/"]})
    dest = tmp_path / "out"
    for extra in (("--dry-run",), ()):
        res = run_phx_here(("restore", "--latest", "--memory-only", "--to", str(dest), *extra), sb.env, code=2)
        assert "components.memory" in res.err and "memroy/" in res.err, res
    assert not dest.exists()
    sb.write_config(components=None)
    run_phx_here(("restore", "--latest", "--memory-only", "--dry-run", "--to", str(dest)), sb.env)


def test_a_config_link_that_loops_is_called_a_link_not_missing(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "a.json").symlink_to(tmp_path / "b.json")
    (tmp_path / "b.json").symlink_to(tmp_path / "a.json")
    res = run_phx_here(("status",), _env(tmp_path, tmp_path / "a.json"), code=2)
    assert "symbolic link that leads nowhere" in res.err and "does not exist" not in res.err, res


@pytest.mark.parametrize("command", [["list"], ["backup"], ["restore", "--latest", "--dry-run"], ["status"]])
def test_a_relative_cache_folder_is_refused_not_made_where_the_command_runs(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """A relative PHX_CACHE_DIR was taken from the working directory: a scheduled run (which starts
    elsewhere) used another cache, and never found the journals of killed restores and PostgreSQL
    roles the cache holds. It is refused as a relative PHX_DATA_DIR is, and nothing is made."""
    sb = backed_up
    monkeypatch.chdir(tmp_path)
    res = run_phx_here(command, {**sb.env, "PHX_CACHE_DIR": "cache-here"}, code=2)
    assert "'cache-here' is not an absolute path" in res.err and "set PHX_CACHE_DIR to an absolute path" in res.err
    assert not (tmp_path / "cache-here").exists()
