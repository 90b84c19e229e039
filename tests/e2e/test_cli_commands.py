"""The rest of the command-line contract: key slots, dry runs, scoped backups, tags and times, the
state file, and the help text of every command."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_support import DATABASES, Sandbox, assert_error

from phoenix_backup.cli.main import cli

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process


def test_key_add_passwd_remove(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    sb.backup()
    added = sb.phx(
        "key", "add", "--method", "passphrase", "--json", env=sb.env_with(PHX_NEW_PASSPHRASE="second")
    ).json()
    slots = sb.phx_here("key", "list", "--json").json()
    assert {s["id"] for s in slots} >= {added["id"]} and len(slots) == 2
    # Either passphrase opens the same repository.
    assert len(sb.phx("list", "--json", env=sb.env_with(PHX_PASSPHRASE="second")).json()) == 1
    # passwd replaces the slot that opened the repository.
    sb.phx("key", "passwd", env=sb.env_with(PHX_PASSPHRASE="second", PHX_NEW_PASSPHRASE="third"))
    assert_error(sb.phx("list", env=sb.env_with(PHX_PASSPHRASE="second"), check=1), 1, "passphrase")
    assert len(sb.phx("list", "--json", env=sb.env_with(PHX_PASSPHRASE="third")).json()) == 1
    # The last slots can go one by one, but never the very last.
    remaining = sb.phx_here("key", "list", "--json").json()
    assert len(remaining) == 2
    other = next(s["id"] for s in remaining if not s["current"])
    sb.phx("key", "remove", other, env=sb.env_with(PHX_PASSPHRASE=sb.env["PHX_PASSPHRASE"]))
    last = sb.phx_here("key", "list", "--json").json()[0]["id"]
    assert_error(sb.phx_here("key", "remove", last, code=1), 1, "last key slot")
    assert sb.verify("--read-data")["ok"]


def test_dry_run_backup_writes_nothing(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    before = sorted(p.relative_to(sb.repo).as_posix() for p in sb.repo.rglob("*"))
    doc = sb.backup("--dry-run")
    assert doc["dryRun"] is True and doc["id"] is None
    paths = {p["path"] for p in doc["planned"]}
    assert "workspace/MEMORY.md" in paths and set(DATABASES) <= paths
    assert all(p["size"] >= 0 for p in doc["planned"])
    assert sorted(p.relative_to(sb.repo).as_posix() for p in sb.repo.rglob("*")) == before


def test_scoped_backups_hold_only_their_part(make_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    sb = make_sandbox()
    identity = sb.backup("--identity-only")
    memory = sb.backup("--memory-only")
    dbs = sb.backup("--databases-only")
    assert identity["databases"] == []
    assert {d["path"] for d in memory["databases"]} == {"home/.argentos/memory.db", "home/.argentos/observations.db"}
    assert {d["path"] for d in dbs["databases"]} == set(DATABASES)
    out = tmp_path / "identity"
    sb.restore_to(identity["id"], out)
    names = {p.name for p in (out / "workspace").iterdir()}
    assert "SOUL.md" in names and "MEMORY.md" not in names and "memory" not in names
    out = tmp_path / "dbs"
    sb.restore_to(dbs["id"], out)
    assert not (out / "workspace").exists() or not any(p.is_file() for p in (out / "workspace").rglob("*"))
    listed = {s["id"]: s for s in sb.snapshots()}
    assert listed[identity["id"]]["scope"] == "identity" and listed[dbs["id"]]["scope"] == "databases"


def test_tags_and_time_are_recorded_exactly(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    doc = sb.backup("--tag", "nightly", "--tag", "pre-upgrade", "--time", "2026-03-15T14:30:00+01:00")
    snap = sb.snapshots()[0]
    assert snap["id"] == doc["id"] and snap["tags"] == ["nightly", "pre-upgrade"]
    assert snap["time"] == "2026-03-15T14:30:00+01:00" and snap["name"] == "2026-03-15-14-30"
    assert_error(sb.phx("backup", "--time", "2026-03-15 14:30", check=2), 2, "offset")


def test_state_file_records_success_and_failure(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    state_path = sb.home / ".argentos" / "backup" / ".last-backup"
    doc = sb.backup()
    state = json.loads(state_path.read_text())
    assert state["success"] is True and state["snapshotId"] == doc["id"] and state["error"] is None
    assert {"timestamp", "date", "backupPath", "compression"} <= set(state)
    # A failure (wrong passphrase) is recorded too, and keeps the last success.
    sb.phx("backup", env=sb.env_with(PHX_PASSPHRASE="pw-CANARY-91"), check=1)
    failed = json.loads(state_path.read_text())
    assert failed["success"] is False and "passphrase" in failed["error"]
    assert failed["lastSuccess"]["snapshotId"] == doc["id"]
    assert "pw-CANARY-91" not in state_path.read_text()  # never a secret


def test_every_command_has_help_with_an_example() -> None:
    """Docs cannot silently fall behind: each command documents itself with an example."""

    import click

    def walk(group: click.Group, path: str) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)  # imports a lazily loaded command's module
            assert cmd is not None, f"{path} {name} is listed but cannot be loaded"
            out.append((f"{path} {name}", cmd))
            if isinstance(cmd, click.Group):
                out.extend(walk(cmd, f"{path} {name}"))
        return out

    commands = walk(cli, "phx")
    assert len(commands) >= 25
    for name, cmd in commands:
        doc = getattr(cmd, "help", None) or ""
        assert doc.strip(), f"{name} has no help text"
        if not hasattr(cmd, "commands"):
            assert "Example:" in doc, f"{name} has no example in its help"
