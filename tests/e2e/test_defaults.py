"""Issue 16: defaults a user can trust, tried as a new user would, through the `phx` command.

1. A full backup saves every component (identity, memory, config, databases) whatever `include`
   says; `include` adds; `backup --dry-run` shows per component what will be saved.
2. What exists but cannot be read is named as not saved, exits 3, and the state file, `status` and
   notifications say so; "does not exist" is said only of what does not exist.
5. No repository on a missing disk: only `phx init` creates the first target's repository.
6. `phx init` encrypts unless told otherwise, asks twice on a terminal, says the key fingerprint,
   that a lost passphrase cannot be recovered and what to do next; a missing workspace is a warning.
9. Conflicting scope flags are a usage error.
11. User-facing text never says "seed".
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
from e2e_support import Sandbox, assert_error, on_a_terminal, run_phx
from test_notify import Receiver
from test_unreadable_file import unprivileged

from phoenix_backup.config.defaults import DEFAULT_EXCLUDE, DEFAULT_INCLUDE

ROOT = Path(__file__).resolve().parents[2]
# The identity files the ArgentOS example `include` lacks (issue 16.1).
LEFT_OUT = ("TOOLS.md", "HEARTBEAT.md", "CONTEMPLATION.md", ".argent-alignment-integrity.json")


def as_init_writes_it(sb: Sandbox, **changes: Any) -> None:
    """The sandbox's config with the `include`/`exclude` that `phx init` writes."""
    sb.write_config(**{"include": list(DEFAULT_INCLUDE), "exclude": list(DEFAULT_EXCLUDE), **changes})


def state_file(sb: Sandbox) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((sb.home / ".argentos" / "backup" / ".last-backup").read_text())
    return doc


# -- 1. every component ---------------------------------------------------------------------


def test_a_full_backup_saves_every_component_whatever_include_says(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    (sb.workspace / "notes").mkdir()
    (sb.workspace / "notes" / "added-by-include.md").write_text("only `include` names this\n")
    (sb.workspace / "stray.txt").write_text("no component and no include: not saved\n")
    as_init_writes_it(sb, include=[*DEFAULT_INCLUDE, "notes/"])
    for name in LEFT_OUT:
        assert (sb.workspace / name).is_file(), f"the sample lacks {name}"

    dry = sb.phx("backup", "--dry-run", "--json").json()
    components = dry["components"]
    identity = set(components["identity"]["paths"])
    assert {f"workspace/{n}" for n in (*LEFT_OUT, "SOUL.md", "IDENTITY.md", "USER.md", "AGENTS.md")} <= identity
    assert components["identity"]["absent"] == []
    assert "workspace/MEMORY.md" in components["memory"]["paths"]
    assert "home/.argentos/memory.db" in components["memory"]["paths"]
    assert "home/.argentos/argent.json" in components["config"]["paths"]
    assert "workspace/config/models.json" in components["config"]["paths"]
    assert set(components["databases"]["paths"]) >= {"home/.argentos/memory.db", "home/.argentos/data/dashboard.db"}
    assert components["include"]["paths"] == ["workspace/notes/added-by-include.md"] or (
        "workspace/notes/added-by-include.md" in components["include"]["paths"]
    )
    assert "workspace/stray.txt" not in {p["path"] for p in dry["planned"]}
    text = sb.phx("backup", "--dry-run").out
    for line_start in ("identity: ", "memory: ", "config: ", "databases: ", "added by `include`: "):
        assert any(line.startswith(line_start) for line in text.splitlines()), f"no {line_start!r} line:\n{text}"
    assert "TOOLS.md" in text

    doc = sb.backup()
    saved = {e["path"] for e in sb.phx("ls", doc["id"], "--json").json()["entries"]}
    for name in LEFT_OUT:
        assert f"workspace/{name}" in saved, f"a full backup left out {name}"
    assert {"home/.argentos/argent.json", "workspace/notes/added-by-include.md"} <= saved
    assert "workspace/stray.txt" not in saved

    # The alignment manifest came with the identity files: a restore finds it consistent.
    restored = sb.restore_to("latest", tmp_path / "r")
    assert not [w for w in restored["warnings"] if "alignment" in w.lower()], restored["warnings"]
    for name in LEFT_OUT:
        assert (tmp_path / "r" / "workspace" / name).read_bytes() == (sb.workspace / name).read_bytes()


# -- 2. unreadable is not missing -----------------------------------------------------------


def test_an_unreadable_memory_folder_is_named_partial_and_alerts(
    make_sandbox: Callable[..., Sandbox], public_tmp: Path
) -> None:
    sb = make_sandbox(root=public_tmp / "sb")
    receiver = Receiver()
    try:
        as_init_writes_it(sb, notifications={"enabled": True, "urls": [receiver.url()]})
        prefix, who = unprivileged(public_tmp)
        print(f"running phx as {who}")
        memory = sb.workspace / "memory"
        memory.chmod(0o000)
        sb.prefix = prefix
        try:
            dry = sb.phx("backup", "--dry-run", check=None)
            res = sb.phx("backup", check=3)
            status = sb.phx("status", check=1)
            status_doc = sb.phx("status", "--json", check=1).json()
        finally:
            sb.prefix = ()
            memory.chmod(0o755)
    finally:
        receiver.stop()
    for run in (dry, res):
        assert "does not exist" not in run.out + run.err, f"an unreadable folder was called missing:\n{run}"
        assert "workspace/memory" in run.out, f"the unreadable folder is not named:\n{run}"
    assert "Permission denied" in res.out

    state = state_file(sb)
    assert state["success"] is False and state["partial"] is True, state
    assert [i["path"] for i in state["failedParts"]] == ["workspace/memory"], state["failedParts"]
    assert "workspace/memory" in state["lastFailure"]["error"]
    assert "lastSuccess" not in state, "a partial backup is not a success"

    assert "PARTIAL" in status.out and "workspace/memory" in status.out, status
    assert status_doc["ok"] is False and status_doc["lastBackup"]["partial"] is True

    assert len(receiver.received) == 1, receiver.received
    body = receiver.received[0]["body"]
    assert body["type"] == "failure" and "workspace/memory" in body["message"], body


def test_does_not_exist_is_said_of_what_does_not_exist(sandbox: Sandbox) -> None:
    sb = sandbox
    as_init_writes_it(sb, include=[*DEFAULT_INCLUDE, "no-such-folder/"])
    res = sb.phx("backup")
    assert "warning: no-such-folder/ does not exist (skipped)" in res.out
    # The components' own defaults that this agent lacks are not warned about.
    (sb.workspace / "TOOLS.md").unlink()
    res = sb.phx("backup")
    assert "TOOLS.md" not in res.out + res.err
    assert "TOOLS.md" in sb.phx("backup", "--dry-run").out, "the dry run says what is not present"


# -- 5. no repository on a missing disk -------------------------------------------------------


def test_no_command_but_init_creates_the_repository(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    mount_point = tmp_path / "media" / "usb-disk"  # not mounted: not even the mount point exists
    repo = mount_point / "argent"
    sb.write_config(backupDir=str(repo))
    for args in (("backup",), ("list",), ("verify",), ("restore", "--latest", "--to", tmp_path / "x")):
        res = sb.phx(*args, check=None)
        assert_error(res, 1, str(repo), "mount", "phx init")
    for args in (("forget",), ("prune",)):  # these report per target
        res = sb.phx(*args, check=1)
        assert f"target local: FAILED: no repository at {repo}" in res.out and "phx init" in res.out, res
    assert not mount_point.exists(), "a command created the repository's folder"
    said = sb.phx("status", check=1).out
    assert f"target local: no repository at {repo}" in said and "not mounted" in said and "`phx init`" in said

    # An empty folder (a mount point whose disk is not mounted) is no repository either.
    repo.mkdir(parents=True)
    assert_error(sb.phx("backup", check=None), 1, str(repo), "phx init")
    assert list(repo.iterdir()) == []

    res = sb.phx("init")
    assert "using the existing config" in res.out and f"created repository {repo}" in res.out
    doc = sb.backup()
    assert [s["id"] for s in sb.snapshots()] == [doc["id"]]


# -- 6. encrypted unless told otherwise --------------------------------------------------------


def _init(sb: Sandbox, tmp_path: Path, *args: str, env: dict[str, str] | None = None, check: Any = True) -> Any:
    return sb.phx(
        "init", "--config", tmp_path / "c.json", "--workspace", sb.workspace, "--repo", tmp_path / "repo", *args,
        env=env if env is not None else sb.env_with(PHX_CONFIG=None), check=check,
    )  # fmt: skip


def test_init_encrypts_by_default_and_says_what_matters(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    # No passphrase and no terminal: refused, nothing written.
    res = _init(sb, tmp_path, env=sb.env_with(PHX_CONFIG=None, PHX_PASSPHRASE=None), check=None)
    assert_error(res, 2, "PHX_PASSPHRASE", "--encryption none")
    assert not (tmp_path / "c.json").exists() and not (tmp_path / "repo").exists()

    secret = tmp_path / "passphrase.txt"
    secret.write_text("a passphrase from a file\n")
    res = _init(sb, tmp_path, env=sb.env_with(PHX_CONFIG=None, PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(secret)))
    written = json.loads((tmp_path / "c.json").read_text())
    assert written["encryption"] == {"enabled": True, "method": "passphrase"}
    assert json.loads((tmp_path / "repo" / "config").read_text())["encryption"] != "none"
    fingerprint = re.search(r"key fingerprint: ((?:[0-9a-f]{4}:){7}[0-9a-f]{4})", res.out)
    assert fingerprint, res.out
    assert "cannot be recovered" in res.out and "next steps" in res.out and "phx backup" in res.out
    # The same repository, the same fingerprint; the passphrase from the file opens it.
    again = sb.phx(
        "init", "--config", tmp_path / "c.json", "--json",
        env=sb.env_with(PHX_CONFIG=None, PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(secret)),
    ).json()  # fmt: skip
    assert again["repositoryCreated"] is False and again["fingerprint"] == fingerprint.group(1)
    assert_error(
        sb.phx("list", "--config", tmp_path / "c.json", env=sb.env_with(PHX_CONFIG=None), check=None), 1, "passphrase"
    )


def test_init_without_encryption_is_explicit_and_warned(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    missing_ws = tmp_path / "not-yet"
    res = sb.phx(
        "init", "--config", tmp_path / "c.json", "--workspace", missing_ws, "--repo", tmp_path / "repo",
        "--encryption", "none", env=sb.env_with(PHX_CONFIG=None, PHX_PASSPHRASE=None),
    )  # fmt: skip
    assert "not encrypted" in res.err and "NOT encrypted" in res.out
    assert f"the workspace {missing_ws} does not exist yet" in res.err
    assert json.loads((tmp_path / "repo" / "config").read_text())["encryption"] == "none"


def test_init_asks_for_the_passphrase_twice_on_a_terminal(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    env = sb.env_with(PHX_CONFIG=None, PHX_PASSPHRASE=None)
    base = ["init", "--config", str(tmp_path / "c.json"), "--workspace", str(sb.workspace)]
    run = on_a_terminal([*base, "--repo", str(tmp_path / "r1")], env, ["typed once", "typed twice"])
    assert run.code == 2 and "do not match" in run.raw, run
    assert not (tmp_path / "c.json").exists()
    run = on_a_terminal([*base, "--repo", str(tmp_path / "r2")], env, ["typed right", "typed right"])
    assert run.code == 0 and run.raw.count("assphrase") >= 2 and "key fingerprint" in run.raw, run
    listed = run_phx(["list", "--config", tmp_path / "c.json", "--json"], sb.env_with(PHX_PASSPHRASE="typed right"))
    assert listed.json() == []


# -- 9. conflicting scopes ------------------------------------------------------------------


def test_conflicting_scope_flags_are_refused(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    before = sb.snapshots()
    res = sb.phx("backup", "--memory-only", "--identity-only", check=None)
    assert_error(res, 2, "--memory-only", "--identity-only")
    assert sb.snapshots() == before, "a refused backup made a snapshot"
    res = sb.phx("restore", "--latest", "--databases-only", "--config-only", "--to", tmp_path / "r", check=None)
    assert_error(res, 2, "--databases-only", "--config-only")
    assert not (tmp_path / "r").exists()


# -- 11. words users know ---------------------------------------------------------------------


def _help_texts() -> dict[str, str]:
    """`--help` of every command and subcommand, through the same click application `phx` runs
    (in this process: thirty interpreter starts would cost seconds for the same text)."""
    from click.testing import CliRunner

    from phoenix_backup.cli.main import cli

    runner = CliRunner()
    texts = {"phx": runner.invoke(cli, ["--help"]).output}
    for name in cli.list_commands(None):  # type: ignore[arg-type]
        texts[name] = runner.invoke(cli, [name, "--help"]).output
        group = cli.get_command(None, name)  # type: ignore[arg-type]
        if isinstance(group, click.Group):  # schedule, key, repair: every subcommand too
            for sub in group.list_commands(None):  # type: ignore[arg-type]
                texts[f"{name} {sub}"] = runner.invoke(cli, [name, sub, "--help"]).output
    assert all("Usage: " in text for text in texts.values()), texts
    return texts


def _strings_in_messages() -> list[tuple[str, int, str]]:
    """String constants of the package that are not docstrings (messages, help, output)."""
    out = []
    for path in sorted((ROOT / "src" / "phoenix_backup").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    docstrings.add(id(first.value))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                out.append((path.relative_to(ROOT).as_posix(), node.lineno, node.value))
    return out


def _says_seed(text: str) -> bool:
    # `chunkerSeed` is a field of the repository format (docs/repository-format.md), not a word.
    return "seed" in text.replace("chunkerSeed", "").lower()


def test_user_facing_text_never_says_seed() -> None:
    for command, text in _help_texts().items():
        assert not _says_seed(text), f"`phx {command} --help` says 'seed':\n{text}"
    for path in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        lines = [f"{i}: {line}" for i, line in enumerate(path.read_text().splitlines(), 1) if _says_seed(line)]
        assert not lines, f"{path.name} says 'seed':\n" + "\n".join(lines)
    said = [f"{p}:{n}: {s!r}" for p, n, s in _strings_in_messages() if _says_seed(s)]
    assert not said, "messages say 'seed':\n" + "\n".join(said)


@pytest.mark.parametrize("command", ["init"])
def test_init_help_names_the_argentos_defaults(sandbox: Sandbox, command: str) -> None:
    text = run_phx([command, "--help"], sandbox.env).out
    assert "ArgentOS defaults" in text and "passphrase" in text
