"""With `--json` every line a command prints is JSON: one document on stdout, and on stderr only
JSON objects (progress, notices, warnings, errors). Notices used to be text lines between the
progress lines, which a program reading stderr line by line had to tell apart by guessing.

Commands are run as a script would run them, with conditions that make them say things: a config
warning, a dead restore's leftovers to remove, a usage error, an unknown snapshot, a refused
in-place restore."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from e2e_support import PHX, Result, Sandbox

from phoenix_backup.repo.locks import boot_id, pid_namespace

KINDS = {"progress", "notice", "error"}


def every_line_is_json(res: Result) -> list[dict[str, Any]]:
    """stdout is empty or one JSON document; every stderr line a JSON object of a known type.
    Returns the stderr objects."""
    if res.out.strip():
        res.json()
    docs = []
    for line in res.err.splitlines():
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"a stderr line of `{' '.join(res.cmd)}` is not JSON: {line!r}\n{res}") from None
        assert isinstance(doc, dict) and doc.get("type") in KINDS, f"{line!r}\n{res}"
        if doc["type"] != "progress":
            assert isinstance(doc["message"], str) and doc["message"], doc
        if doc["type"] == "notice":
            assert doc["level"] in ("info", "warning", "problem"), doc
        docs.append(doc)
    return docs


def plant_leftovers(sb: Sandbox, folder: Path) -> Path:
    """A dead restore's journal and temporary file: the next command removes it, with a notice."""
    dead_pid = 2**22 + 11
    leftover = folder / f".phx-tmp-{dead_pid}-55-00aa11bb22cc"
    leftover.write_bytes(b"half a copy")
    journals = sb.cache / "restore-journal"
    journals.mkdir(mode=0o700, exist_ok=True)
    head = {"bootId": boot_id(), "pidNamespace": pid_namespace(), "pid": dead_pid, "start": 55}
    (journals / f"{dead_pid}-55").write_text(json.dumps(head) + "\n" + json.dumps(str(folder)) + "\n")
    return leftover


def test_every_line_of_every_command_with_json_is_json(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    # A config warning on every command that loads the config, and one in the backup's report.
    sb.write_config(include=["workspace/", "no-such-folder/"])
    sb.config_path.chmod(0o664)
    leftover = plant_leftovers(sb, sb.workspace)
    said: list[dict[str, Any]] = []

    def run(*args: str | Path, check: bool | int | None = True) -> Result:
        res = sb.phx(*args, "--json", check=check)
        said.extend(every_line_is_json(res))
        return res

    first = run("list").json()[0]["id"]
    assert not leftover.exists()
    (sb.workspace / "MEMORY.md").write_text("changed for the second snapshot\n")
    second = run("backup").json()["id"]
    for args in (
        ("status",),
        ("ls", second),
        ("diff", first, second),
        ("verify", "--read-data"),
        ("restore", "--backup", first, "--to", tmp_path / "out"),
        ("drill", "--backup", second),
        ("forget", "--dry-run"),
        ("prune", "--dry-run"),
        ("key", "list"),
        ("unlock",),
        ("export", "--format", "json", "--backup", second, "--output", tmp_path / "export"),
    ):
        run(*args)
    run("doctor", check=None)
    run("ls", "nosuchsnapshot", check=2)
    run("restore", "--backup", first, check=2)  # in place, no --yes, no terminal: refused
    run("list", "--no-such-option", check=2)
    run("--no-such-option", "list", check=2)

    kinds = {(d["type"], d.get("level")) for d in said}
    assert ("notice", "warning") in kinds, said  # the config's warning
    assert ("notice", "info") in kinds, said  # the leftovers removed
    assert ("error", None) in kinds, said
    assert ("progress", None) in kinds, said
    assert any("can be changed by other users" in d["message"] for d in said if d["type"] == "notice"), said
    assert any("no snapshot named" in d["message"] for d in said if d["type"] == "error"), said
    assert any("--no-such-option" in d["message"] for d in said if d["type"] == "error"), said


def test_text_mode_is_unchanged(backed_up: Sandbox) -> None:
    sb = backed_up
    sb.config_path.chmod(0o664)
    res = sb.phx("list")
    assert res.err.startswith("phx: warning: config file ") and "can be changed by other users" in res.err, res
    res = sb.phx("ls", "nosuchsnapshot", check=2)
    assert res.err.splitlines()[-1].startswith("phx: error: no snapshot named") and "{" not in res.err, res
    res = sb.phx("list", "--no-such-option", check=2)
    assert res.err.startswith("phx: error: "), res


def test_a_missing_option_value_names_the_help_of_its_command(sandbox: Sandbox) -> None:
    """click says `Option '--to' requires an argument` without the command it parsed: the hint
    pointed at `phx --help`, which does not list `--to`. It names the command's own help now, with
    `--json` and global options before it too (docs/cli.md, usage errors)."""
    res = sandbox.phx("restore", "--latest", "--to", check=2)
    assert res.err.strip() == "phx: error: Option '--to' requires an argument; see `phx restore --help`", res
    res = sandbox.phx("--json", "--config", "x.json", "schedule", "install", "--every", check=2)
    assert res.json()["error"] == "Option '--every' requires an argument; see `phx schedule install --help`", res


def test_repo_after_a_command_that_does_not_take_it_says_so(sandbox: Sandbox) -> None:
    """Options of `phx` go before or after the command, but `phx backup --repo X` said `No such
    option '--repo'. Did you mean '--help'?` where `phx --repo X backup` said what to do; both say
    it now (docs/troubleshooting.md, "does not take --repo")."""
    for args in (("--repo", "/tmp/r", "backup"), ("backup", "--repo", "/tmp/r")):
        res = sandbox.phx(*args, check=2)
        assert res.err.strip().startswith("phx: error: `phx backup` does not take --repo: it works on the config's"), (
            res
        )


def test_verbose_and_a_missing_command_keep_every_line_json(backed_up: Sandbox) -> None:
    """`--verbose` used to print its traceback as plain lines, and a group run without its command
    (`phx --json key`) its help text: a program reading stderr line by line met lines that do not
    parse. The traceback is now a field of the error's line."""
    sb = backed_up
    res = sb.phx("ls", "nosuchsnapshot", "--json", "--verbose", check=2)
    errors = [d for d in every_line_is_json(res) if d["type"] == "error"]
    assert len(errors) == 1 and "no snapshot named" in errors[0]["message"], res
    assert "Traceback (most recent call last)" in errors[0]["traceback"], res
    res = sb.phx("list", "--json", "--verbose", env={**sb.env, "PHX_PASSPHRASE": "not the passphrase"}, check=1)
    assert [d["type"] for d in every_line_is_json(res)] == ["error"], res
    res = sb.phx("--json", "key", check=2)
    assert [d["message"] for d in every_line_is_json(res)] == ["missing command; see `phx key --help`"], res
    assert res.json() == {"ok": False, "error": "missing command; see `phx key --help`", "errorType": "UsageError"}
    # A usage error is an error like any other: stdout gets its document too (docs/cli.md).
    res = sb.phx("list", "--json", "--no-such-option", check=2)
    doc = res.json()
    assert doc["ok"] is False and doc["errorType"] == "UsageError" and "--no-such-option" in doc["error"], res
    # Text mode as before: the traceback as text, the help of the group.
    res = sb.phx("ls", "nosuchsnapshot", "--verbose", check=2)
    assert "Traceback (most recent call last)" in res.err and res.err.splitlines()[-1].startswith("phx: error: "), res
    assert "Usage: phx key" in sb.phx("key", check=2).err


def test_an_interrupted_command_says_so_in_json_on_both_streams(backed_up: Sandbox, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) during a backup with --json: stderr's lines are JSON, and stdout gets the
    document every failed command prints, where it printed nothing before."""
    sb = backed_up
    started = tmp_path / "hook-started"
    sb.write_config(hooks={"preBackup": f"touch {started}; sleep 30"})
    proc = subprocess.Popen(
        [PHX, "backup", "--json"],
        env=sb.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    res = Result(proc.returncode, out, err, ["phx", "backup", "--json"])
    assert res.code == 130, res
    assert any("interrupted" in d["message"] for d in every_line_is_json(res) if d["type"] != "progress"), res
    doc = res.json()
    assert doc["ok"] is False and doc["errorType"] == "Interrupted" and "interrupted" in doc["error"], res


def test_the_version_is_a_json_document_with_json() -> None:
    for args in (["--version", "--json"], ["--json", "--version"]):
        proc = subprocess.run([PHX, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert proc.returncode == 0 and proc.stderr == "", proc
        doc = json.loads(proc.stdout)
        assert doc["name"] == "phx" and doc["version"][0].isdigit(), doc
    text = subprocess.run([PHX, "--version"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert text.stdout.startswith("phx, version "), text
