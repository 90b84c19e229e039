"""The conventions a restic, borg or kopia user expects of `phx` (issue 18): options before or after
the command, --quiet, progress that never runs into other output, selecting snapshots, shell
completion, one meaning per exit code, prompts that forgive a typo, and wording that says what is
meant. Every run is the real `phx` in a subprocess or on a pseudo-terminal."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
from e2e_support import PASSPHRASE, PHX, Sandbox, assert_error, on_a_terminal, run_phx

# The sandboxes' helpers (backup, restore_to, verify, snapshots) run phx in this process
pytestmark = pytest.mark.phx_in_process

# -- 5. global options anywhere -------------------------------------------------------------------


def test_global_options_before_the_command_mean_what_they_mean_after_it(backed_up: Sandbox) -> None:
    sb = backed_up
    after = sb.phx("list", "--json").json()
    before = sb.phx("--json", "list").json()
    assert before == after and len(before) == 1

    # --config before the command, with PHX_CONFIG unset: the config named is the one used.
    env = sb.env_with(PHX_CONFIG=None)
    doc = run_phx(["--config", sb.config_path, "--json", "backup"], env).json()
    assert doc["id"] and doc["targets"]["local"]["ok"] is True
    assert [s["id"] for s in run_phx(["--config", sb.config_path, "list", "--json"], env).json()][-1] == doc["id"]

    # --repo before a reading command, with no config at all: a new machine's first command.
    listed = run_phx(["--repo", sb.repo, "--json", "list"], env).json()
    assert {s["id"] for s in listed} == {s["id"] for s in after} | {doc["id"]}

    # --repo before a command that writes the config's targets is refused, not ignored.
    res = run_phx(["--repo", sb.repo, "backup"], sb.env, check=2)
    assert_error(res, 2, "does not take --repo")
    # Contradictions are usage errors.
    assert_error(sb.phx("--config", "/a.json", "list", "--config", "/b.json", check=2), 2, "--config is given twice")
    assert_error(sb.phx("-q", "list", "--verbose", check=2), 2, "--quiet and --verbose")
    # Twice on one side of the command too (click kept the last silently: B was read, exit 0).
    for argv in (
        ["--config", "/a.json", "--config", "/b.json", "list"],
        ["list", "--config", "/a.json", "--config", "/b.json"],
        ["list", "--repo", "/a", "--repo", "/b"],
        ["--repo", "/a", "--repo", "/b", "list"],
        ["init", "--repo", "/a", "--repo", "/b"],
    ):
        assert_error(sb.phx(*argv, check=2), 2, "is given twice (/a", "give it once")


def test_global_options_after_a_group_name_and_on_completion(backed_up: Sandbox) -> None:
    sb = backed_up
    slots = sb.phx("key", "list", "--json").json()
    assert sb.phx("key", "--json", "list").json() == slots and sb.phx("--json", "key", "list").json() == slots
    env = sb.env_with(PHX_CONFIG=None)
    assert run_phx(["key", "--config", sb.config_path, "--json", "list"], env).json() == slots
    assert run_phx(["repair", "--config", sb.config_path, "--json", "snapshots"], env).json()["ok"] is True
    assert_error(
        sb.phx("--config", "/a.json", "key", "--config", "/b.json", "list", check=2), 2, "--config is given twice"
    )
    # `completion` takes them too: --json wraps the script, --quiet keeps it (it is the data).
    script = sb.phx("completion", "bash").out
    assert "_phx_completion" in script
    doc = sb.phx("--json", "completion", "bash").json()
    assert doc["shell"] == "bash" and doc["script"].strip() == script.strip()
    assert sb.phx("completion", "--quiet", "bash").out == script
    assert sb.phx("--config", sb.config_path, "completion", "zsh").code == 0


def test_quiet_prints_errors_only(backed_up: Sandbox) -> None:
    sb = backed_up
    res = sb.phx("backup", "-q")
    assert res.out == "" and res.err == "", res
    res = sb.phx("--quiet", "forget", "--dry-run")
    assert res.out == "" and res.err == "", res
    # A listing still shows what it exists to show.
    assert "NAME" in sb.phx("list", "-q").out
    # An error is still one line.
    assert_error(sb.phx("-q", "ls", "nosuchsnapshot", check=2), 2, "no snapshot named")
    # A part that could not be saved is still named (exit 3): a database server that is not there.
    sb.write_config(
        databases={"postgres": [{"name": "main", "host": "127.0.0.1", "port": 9, "database": "x", "user": "x"}]}
    )
    res = sb.phx("backup", "-q", check=3)
    assert res.out == "" and "phx: not saved: postgres/main" in res.err, res


def test_a_target_that_failed_is_said_on_stderr_by_forget_prune_and_sync(backed_up: Sandbox) -> None:
    """A soak of every command at once (bench/soak.py) met `phx prune` and `phx forget` exiting 1
    (every target locked) or 3 with nothing on stderr: the failure was only in the report on
    stdout, where a script reading stdout as data (or `--json`) finds no `phx:` line. `phx backup`
    said it on stderr too; now forget, prune and sync do the same."""
    sb = backed_up
    missing = sb.root / "no-such-remote.git"
    sb.write_config(
        targets={"local": {"enabled": True}, "git": {"enabled": True, "repo": str(missing), "branch": "main"}}
    )
    for args in (["forget"], ["prune"], ["sync"], ["forget", "--json"], ["prune", "--json"], ["sync", "--json"]):
        code = 1 if args[0] == "sync" else 3  # sync has no target of its own left to succeed
        res = sb.phx_here(*args, code=code)
        said = [line for line in res.err.splitlines() if "target git failed" in line]
        assert len(said) == 1, res
        assert (json.loads(said[0])["message"] if "--json" in args else said[0]).startswith(
            "target git failed:" if "--json" in args else "phx: target git failed:"
        ), res


def test_json_backup_streams_progress_lines_on_stderr(backed_up: Sandbox) -> None:
    sb = backed_up
    (sb.workspace / "MEMORY.md").write_text("changed\n")
    with sqlite3.connect(sb.layout.memory_db) as con:  # a database to capture again
        con.execute("CREATE TABLE IF NOT EXISTS progress_probe (x)")
    res = sb.phx("backup", "--json")
    doc = res.json()  # stdout is still one document
    lines = [json.loads(line) for line in res.err.splitlines()]
    assert lines and all(d["type"] == "progress" for d in lines), res.err
    fields = {"phase", "doing", "done", "total", "bytesDone", "bytesTotal", "percent", "rate", "eta", "seconds"}
    assert all(fields <= d.keys() for d in lines), lines[0]
    phases = list(dict.fromkeys(d["phase"] for d in lines))
    assert phases[:3] == ["scanning", "reading the index", "reading files"], phases
    assert "writing trees and index" in phases, phases
    reading = [d for d in lines if d["phase"] == "reading files"]
    # The progress ends where the result does: the counts agree, bytes included.
    assert reading[-1]["done"] == reading[-1]["total"] == doc["files"], (reading[-1], doc["files"])
    # Every byte saved was counted (the total is the files' sizes when scanned: a database's
    # write-ahead log may add pages to it).
    assert reading[-1]["bytesDone"] == doc["size"] and reading[-1]["bytesTotal"] > 0, (reading[-1], doc["size"])
    assert reading[-1]["percent"] == 100.0, reading[-1]
    # The database phase says what it captures and checks.
    doing = {d["doing"] for d in reading if d["doing"]}
    assert any(d.startswith("capturing memory.db (") for d in doing), doing
    assert "checking memory.db" in doing, doing
    assert sb.phx("backup", "--json", "--quiet").err == ""


def test_json_restore_and_verify_stream_bytes_of_their_totals(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    res = sb.phx("restore", "--latest", "--to", str(tmp_path / "out"), "--yes", "--json")
    lines = [d for line in res.err.splitlines() if (d := json.loads(line))["type"] == "progress"]
    writing = [d for d in lines if d["phase"] == "writing files"]
    assert writing, res.err
    last = writing[-1]
    assert last["done"] == last["total"] > 0 and last["bytesDone"] == last["bytesTotal"] > 0, last
    assert last["percent"] == 100.0 and last["unit"] == "files", last
    res = sb.phx("verify", "--read-data", "--json")
    packs = [json.loads(line) for line in res.err.splitlines() if '"reading packs"' in line]
    assert packs and packs[-1]["done"] == packs[-1]["total"] == res.json()["checked"]["packs"], packs
    assert packs[-1]["unit"] == "packs" and packs[-1]["bytesDone"] == packs[-1]["bytesTotal"] > 0, packs


# -- 6. selecting snapshots ----------------------------------------------------------------------


def test_list_selects_by_host_scope_tag_and_last(backed_up: Sandbox) -> None:
    sb = backed_up
    first = sb.snapshots()[0]
    tagged = sb.backup("--tag", "before-upgrade", "--time", "2030-01-01T10:00:00+00:00")
    memory = sb.backup("--memory-only", "--tag", "before-upgrade", "--time", "2030-01-02T10:00:00+00:00")

    def ids(*args: str) -> list[str]:
        return [s["id"] for s in sb.phx("list", "--json", *args).json()]

    assert ids() == [first["id"], tagged["id"], memory["id"]]
    assert ids("--tag", "before-upgrade") == [tagged["id"], memory["id"]]
    assert ids("--tag", "before-upgrade", "--scope", "full") == [tagged["id"]]
    assert ids("--scope", "memory") == [memory["id"]]
    assert ids("--last", "2") == [tagged["id"], memory["id"]]
    assert ids("--scope", "full", "--last", "1") == [tagged["id"]]
    assert ids("--host", first["host"], "--tag", "before-upgrade", "--last", "1") == [memory["id"]]
    assert ids("--host", "another-machine") == []
    assert "none of the 3 snapshots is selected" in sb.phx("list", "--host", "another-machine").out
    assert_error(sb.phx("list", "--last", "0", check=2), 2, "--last")


def test_a_prefix_shorter_than_4_characters_says_so(backed_up: Sandbox) -> None:
    sb = backed_up
    sid = sb.snapshots()[0]["id"]
    assert_error(sb.phx("ls", sid[:3], check=2), 2, "at least 4 characters")
    assert sb.phx("ls", sid[:4], "--json").json()["snapshot"] == sid


def test_an_unknown_snapshot_and_an_unknown_key_slot_exit_alike(backed_up: Sandbox) -> None:
    sb = backed_up
    snapshot = sb.phx("forget", "00000000deadbeef", check=None)
    slot = sb.phx("key", "remove", "00000000deadbeef", check=None)
    assert snapshot.code == slot.code == 2, (snapshot, slot)
    assert_error(slot, 2, "no key slot 00000000deadbeef", "phx key list")


# -- 7. shell completion -----------------------------------------------------------------------


def _complete(sb: Sandbox, words: str, cword: int, **env: str | None) -> list[str]:
    res = run_phx([], sb.env_with(_PHX_COMPLETE="bash_complete", COMP_WORDS=words, COMP_CWORD=str(cword), **env))
    return [line.split(",", 1)[1] for line in res.out.splitlines() if line]


def test_snapshot_ids_complete_without_a_passphrase(backed_up: Sandbox) -> None:
    sb = backed_up
    second = sb.backup()
    ids = sorted(s["id"] for s in sb.snapshots())
    # No passphrase: the ids are the names of the snapshot objects, nothing is decrypted or asked.
    assert _complete(sb, "phx ls ", 2, PHX_PASSPHRASE=None) == [i[:8] for i in ids] + ["latest"]
    assert _complete(sb, f"phx restore --backup {second['id'][:3]}", 3) == [second["id"][:8]]
    assert _complete(sb, f"phx forget {second['id'][:10]}", 2) == [second["id"]]
    # Commands and options are completed too, global options before the command included.
    assert "list" in _complete(sb, "phx --json l", 2)
    assert "--last" in _complete(sb, "phx list --la", 2)
    # A broken config completes nothing and prints nothing.
    assert _complete(sb, "phx ls ", 2, PHX_CONFIG=str(sb.root / "missing.json")) == []


def test_completion_script_completes_in_bash(backed_up: Sandbox) -> None:
    sb = backed_up
    sid = sb.snapshots()[0]["id"]
    script = run_phx(["completion", "bash"], sb.env).out
    env = dict(sb.env, PATH=f"{os.path.dirname(PHX)}:{sb.env['PATH']}")
    shell = (
        f"eval \"$(cat <<'EOF'\n{script}\nEOF\n)\"\n"
        'COMP_WORDS=(phx dump ""); COMP_CWORD=2; _phx_completion phx; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    out = subprocess.run(["bash", "-c", shell], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == [sid[:8], "latest"], out
    for name in ("zsh", "fish"):
        text = run_phx(["completion", name], sb.env).out
        assert "_PHX_COMPLETE" in text and f"{name}_complete" in text
    assert_error(sb.phx("completion", "tcsh", check=2), 2, "tcsh")


# -- 8. prompts ---------------------------------------------------------------------------------


def test_a_wrong_passphrase_typed_at_the_prompt_may_be_typed_again(backed_up: Sandbox) -> None:
    sb = backed_up
    env = sb.env_with(PHX_PASSPHRASE=None)
    run = on_a_terminal(["list"], env, ["typo one", "typo two", PASSPHRASE])
    assert run.code == 0, run
    assert run.raw.count("Passphrase for the repository:") == 3, run
    assert "wrong passphrase; try again (2 more)" in run.raw and "NAME" in run.raw, run
    # Three wrong tries: one error, exit 1, no fourth question.
    run = on_a_terminal(["list"], env, ["no", "no", "no", "no"])
    assert run.code == 1 and run.raw.count("Passphrase for the repository:") == 3, run
    assert sum("phx: error: wrong passphrase" in line for line in run.screen) == 1, run
    # A wrong passphrase from the environment is not asked again (no terminal question at all).
    run = on_a_terminal(["list"], sb.env_with(PHX_PASSPHRASE="wrong"), [])
    assert run.code == 1 and "Passphrase for" not in run.raw, run


# -- 2. clean lines ------------------------------------------------------------------------------


def test_the_progress_line_is_gone_before_the_summary(backed_up: Sandbox) -> None:
    sb = backed_up
    (sb.workspace / "MEMORY.md").write_text("changed again\n")
    with sqlite3.connect(sb.layout.memory_db) as con:  # a database to capture again
        con.execute("CREATE TABLE IF NOT EXISTS progress_probe (x)")
    # A large sparse file keeps the reading phase on screen long enough to be redrawn.
    with open(sb.workspace / "big.bin", "wb") as f:
        f.truncate(64 << 20)
    run = on_a_terminal(["backup"], sb.env)
    assert run.code == 0, run
    # What the terminal showed along the way: phases, a percentage, bytes of a total, files.
    shown = _progress_lines(run.raw)
    assert any(" reading files: " in line for line in shown), shown
    assert any(re.search(r"^\[0:\d\d\] \d+\.\d% ", line) for line in shown), shown
    assert any(re.search(r"\d+(\.\d)? (B|KiB|MiB) of 6\d\.\d MiB", line) for line in shown), shown
    assert any(re.search(r"\d+ of \d+ files", line) for line in shown), shown
    # A database's capture is on the line (which one may be drawn over by another's, read at once).
    assert any(re.search(r"\] [\d.]+% (capturing \S+\.db \(|checking \S+\.db)", line) for line in shown), shown
    # What stays on screen: the summary on a line of its own, no progress line.
    summary = [line for line in run.screen if "saved:" in line]
    assert len(summary) == 1 and summary[0].startswith("snapshot "), run
    assert not any(line.startswith("[") for line in run.screen), run


def test_verify_and_restore_show_their_phases_on_a_terminal(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    run = on_a_terminal(["verify", "--read-data"], sb.env)
    assert run.code == 0, run
    shown = _progress_lines(run.raw)
    assert any(re.search(r"\] \d+\.\d% reading packs: \d+ of \d+ packs, ", line) for line in shown), shown
    # The last phase: every distinct file read back and proved against its SHA-256.
    proved = r"\] 100\.0% proving files against their SHA-256: (\d+) of \1 files, "
    assert any(re.search(proved, line) for line in shown), shown
    assert not any(line.startswith("[") for line in run.screen), run
    run = on_a_terminal(["restore", "--latest", "--to", str(tmp_path / "out"), "--yes"], sb.env)
    assert run.code == 0, run
    shown = _progress_lines(run.raw)
    assert any(" writing files: " in line for line in shown), shown
    assert not any(line.startswith("[") for line in run.screen), run


def _progress_lines(raw: str) -> list[str]:
    """Every progress line drawn on the terminal (each redraw starts with `[M:SS]`)."""
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "\n", raw)
    return [line.strip() for line in plain.replace("\r", "\n").splitlines() if re.match(r"\s*\[\d+:\d\d\]", line)]


def test_ctrl_c_leaves_one_clean_line_at_once(backed_up: Sandbox) -> None:
    sb = backed_up
    # A large sparse file keeps the backup busy after the small files are done: Ctrl-C must not
    # wait for it to be read whole (3 GiB took 36 s), nor leave anything behind but packs.
    with open(sb.workspace / "big.bin", "wb") as f:
        f.truncate(3 << 30)
    snapshots = set((sb.repo / "snapshots").iterdir())
    run = on_a_terminal(["backup"], sb.env, interrupt_after="reading files")
    assert run.code == 130, run
    assert run.after_interrupt is not None and run.after_interrupt < 3, (run.after_interrupt, str(run))
    last = run.screen[-1]
    assert last.startswith("phx: interrupted"), run
    assert not any("^C" in line and "phx:" in line for line in run.screen), run
    assert set((sb.repo / "snapshots").iterdir()) == snapshots, "an interrupted backup committed a snapshot"
    assert not list((sb.repo / "locks").iterdir()), "the lock was left behind"


# -- 9. wording, and counts that agree -------------------------------------------------------------


def test_dry_runs_say_what_would_happen_and_reasons_are_said_once(backed_up: Sandbox) -> None:
    sb = backed_up
    # Two snapshots of this copy's workspace folder (one retention group; the template's snapshot
    # records the template's folder, another group).
    sb.backup()
    sb.backup()
    out = sb.phx("prune", "--dry-run").out
    assert "would delete" in out and "would free" in out, out
    assert " deleted" not in out.replace("would delete", ""), out
    out = sb.phx("forget", "--dry-run").out
    for line in out.splitlines():
        assert line.count("oldest snapshot") <= 1, line
    assert "oldest snapshot, daily (" in out and "budget left" in out, out


def test_status_of_an_empty_repository(sandbox: Sandbox) -> None:
    res = sandbox.phx("status", check=1)
    assert "0.0x" not in res.out and "deduplication" not in res.out, res
    prefixes = {line.split(":", 1)[0] for line in res.out.splitlines() if line.lower().startswith("warning")}
    assert prefixes == {"warning"}, res
    assert sandbox.phx("status", "--json", check=1).json()["targets"]["local"]["dedupRatio"] is None


def test_backup_and_drill_count_the_same_files(backed_up: Sandbox) -> None:
    sb = backed_up
    os.symlink("MEMORY.md", sb.workspace / "memory-link.md")
    doc = sb.backup()
    drill = sb.phx("drill", "--json").json()
    checked = drill["checked"]
    assert doc["files"] == checked["files"] + checked["symlinks"] + checked["databases"], (doc["files"], checked)
    text = sb.phx("backup").out.splitlines()[0]
    files = checked["files"] + checked["symlinks"]
    assert f"saved: {files} files, {checked['databases']} databases" in text, text
    drilled = sb.phx("drill").out
    assert f" {files} files ({checked['symlinks']} of them symlinks)" in drilled, drilled


def test_verify_says_a_notice_once_with_its_count(backed_up: Sandbox) -> None:
    """After an interrupted backup every pack it left is a notice; the text groups them."""
    sb = backed_up
    index_before = set((sb.repo / "index").iterdir())
    (sb.workspace / "MEMORY.md").write_text("a change whose backup is then undone\n")
    doc = sb.backup()
    # Undo the commit: the snapshot and the index it wrote go, its packs stay (as after Ctrl-C).
    (sb.repo / "snapshots" / doc["id"]).unlink()
    for obj in set((sb.repo / "index").iterdir()) - index_before:
        obj.unlink()
    every = sb.phx("verify", "--json").json()["notices"]
    left = [n for n in every if "is not in the index and no snapshot needs it" in n]
    assert len(left) >= 2, every
    text = [line for line in sb.phx("verify").out.splitlines() if line.startswith("notice:")]
    grouped = [line for line in text if "no snapshot needs it" in line]
    assert len(grouped) == 1 and grouped[0].startswith(f"notice: {len(left)} objects are not in the index"), text
    verbose = sb.phx("verify", "--verbose").out
    assert all(n in verbose for n in left), verbose


# -- 4. the backup summary --------------------------------------------------------------------------


# The bound on dataAdded below is the trees of the changed folders: with the suite's small extent
# lists, the tree of home/.argentos names hundreds of list blobs of its databases (34 KB a backup).
@pytest.mark.real_extent_lists
def test_backup_summary_counts_new_changed_and_unmodified(backed_up: Sandbox) -> None:
    sb = backed_up
    first = sb.backup()  # the copied sample has new inodes: this run is the baseline
    again = sb.backup()
    total_files = again["filesNew"] + again["filesChanged"] + again["filesUnmodified"]
    assert (again["filesNew"], again["filesChanged"]) == (0, 0), again
    assert again["databasesCaptured"] == 0 and again["databasesUnchanged"] == len(first["databases"]), again
    # A folder is changed when its tree is (the state file's folder has a new time after each run).
    assert again["dirsNew"] == 0 and again["dataAdded"] < 4096, again
    # One file changed, two added in a new folder, one database written to.
    (sb.workspace / "MEMORY.md").write_text("a change the summary must count\n")
    (sb.workspace / "summary-probe").mkdir()
    (sb.workspace / "summary-probe" / "a.md").write_text("new a\n" * 1000)
    (sb.workspace / "summary-probe" / "b.md").write_text("new b\n")
    with sqlite3.connect(sb.layout.memory_db) as con:
        con.execute("CREATE TABLE summary_probe (x)")
    doc = sb.backup()
    assert (doc["filesNew"], doc["filesChanged"], doc["filesUnmodified"]) == (2, 1, total_files - 1), doc
    assert (doc["databasesCaptured"], doc["databasesUnchanged"]) == (1, len(first["databases"]) - 1), doc
    assert doc["dirsNew"] == 1 and doc["dirsChanged"] >= 1, doc
    # Before compression: at least the new bytes; stored: what the repository grew by.
    assert doc["dataAdded"] >= 6006 and doc["added"] > 0, doc
    text = sb.phx("backup").out.splitlines()
    assert text[1] == f"  files:     0 new, 0 changed, {total_files + 2} unmodified", text
    counts = re.fullmatch(r"  databases: (\d+) captured, (\d+) unchanged", text[3])
    assert counts and int(counts[1]) + int(counts[2]) == len(first["databases"]), text
    assert re.fullmatch(r"  added to the repository: \d+(\.\d)? (B|KiB) \(\d+(\.\d)? (B|KiB) stored\)", text[4]), text


def test_drill_of_a_partial_snapshot_says_what_it_lacks(backed_up: Sandbox) -> None:
    sb = backed_up
    # A database server that is not there: the backup is partial (exit 3), the rest is saved.
    sb.write_config(
        databases={"postgres": [{"name": "main", "host": "127.0.0.1", "port": 9, "database": "x", "user": "x"}]}
    )
    partial = sb.backup(check=3)["id"]
    res = sb.phx("drill", "--backup", partial, check=3)
    assert "drill passed\n" not in res.out + "\n", res.out
    assert "the snapshot is PARTIAL: it lacks 1 part(s)" in res.out, res.out
    assert "  not in the snapshot: postgres/main: " in res.out, res.out
    doc = sb.phx("drill", "--backup", partial, "--json", check=3).json()
    assert doc["ok"] is True and doc["partial"] is True and [i["path"] for i in doc["lacking"]] == ["postgres/main"]
    report = Path(doc["report"]["markdown"]).read_text()
    assert "## Not in the snapshot" in report and "- postgres/main: " in report
    # A complete snapshot still passes, exit 0.
    sb.write_config(databases={})
    sb.backup()
    assert sb.phx("drill").out.rstrip().endswith("drill passed")


def test_prune_and_drill_stream_their_phases(backed_up: Sandbox) -> None:
    sb = backed_up
    (sb.workspace / "MEMORY.md").write_text("a change only the snapshot to forget holds\n" * 500)
    doomed = sb.backup()["id"]
    (sb.workspace / "MEMORY.md").write_text("the kept version\n")
    sb.backup()
    sb.phx("forget", doomed)
    res = sb.phx("prune", "--json")
    docs = [d for line in res.err.splitlines() if (d := json.loads(line))["type"] == "progress"]
    phases = list(dict.fromkeys(d["phase"] for d in docs))
    assert phases[0] == "finding the data snapshots use" and "deleting packs" in phases, phases
    deleting = [d for d in docs if d["phase"] == "deleting packs"][-1]
    # (Packs this young are kept for a later prune: none may be deleted yet, but all are counted.)
    assert deleting["done"] == deleting["total"] and deleting["unit"] == "packs", deleting
    res = sb.phx("drill", "--json")
    docs = [d for line in res.err.splitlines() if (d := json.loads(line))["type"] == "progress"]  # notices aside
    restoring = [d for d in docs if d["phase"] == "restoring into scratch space"][-1]
    checked = res.json()["checked"]
    assert restoring["done"] == restoring["total"] == checked["files"] + checked["databases"], (restoring, checked)
    assert restoring["bytesDone"] == restoring["bytesTotal"] > 0, restoring


def test_archive_and_export_stream_their_phases(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    res = sb.phx("archive", "latest", "--output", tmp_path / "agent.tar.gz", "--json")
    writing = [json.loads(line) for line in res.err.splitlines() if '"writing the archive"' in line]
    assert writing and writing[-1]["done"] == writing[-1]["total"] > 0 and writing[-1]["unit"] == "entries", writing
    assert writing[-1]["bytesDone"] == writing[-1]["bytesTotal"] > 0, writing
    res = sb.phx("export", "--format", "json", "--backup", "latest", "--output", tmp_path / "export", "--json")
    docs = [d for line in res.err.splitlines() if (d := json.loads(line))["type"] == "progress"]
    phases = list(dict.fromkeys(d["phase"] for d in docs))
    assert phases == ["reading the snapshot's databases", "exporting databases"], phases
    assert any((d["doing"] or "").startswith("copying memory.db (") for d in docs), docs
    last = docs[-1]
    assert last["done"] == last["total"] == len(res.json()["databases"]) and last["unit"] == "databases", last


# -- a bug, and --json as an option's value ------------------------------------------------------

# A bug planted in `phx list` (what no input can be trusted to reach): a KeyError from its library;
# "leaky": an exception quoting what a library had in hand, the passphrase and a URL's credentials.
# Where: in the command, or outside any command (click resolving the command's name).
BUG = """
import os
if os.environ.get("PHX_TEST_PLANT_BUG"):
    import click
    from phoenix_backup.ops import list as _list
    def _bug(*args, **kwargs):
        leak = (
            "cannot use " + os.environ["PHX_PASSPHRASE"]
            + " with https://AKIDLEAK:s3cr3tLEAK@s3.example.com/b?X-Amz-Signature=SIGLEAK and CFGSECRETLEAK"
        )
        if os.environ["PHX_TEST_PLANT_BUG"] == "leaky":
            raise ValueError(leak)
        if os.environ["PHX_TEST_PLANT_BUG"] == "phoenix":
            from phoenix_backup.errors import SourceError
            try:
                raise ValueError(leak)
            except ValueError as exc:
                raise SourceError("the target refused " + os.environ["PHX_PASSPHRASE"] + "; fix it") from exc
        raise KeyError("planted")
    if os.environ.get("PHX_TEST_BUG_WHERE") == "outside":
        click.Group.resolve_command = _bug
    else:
        _list.list_snapshots = _bug
"""
WHERE = ["in a command", "outside"]


def _plant_bug(sandbox: Sandbox, tmp_path: Path, kind: str = "1", where: str = "in a command") -> dict[str, str]:
    """The environment in which `phx list` meets the bug BUG plants."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BUG, encoding="utf-8")
    return sandbox.env_with(PYTHONPATH=str(site), PHX_TEST_PLANT_BUG=kind, PHX_TEST_BUG_WHERE=where)


@pytest.mark.parametrize("where", WHERE)
def test_a_bug_is_one_error_line_and_with_json_the_error_document(sandbox: Sandbox, tmp_path: Path, where: str) -> None:
    env = _plant_bug(sandbox, tmp_path, where=where)
    line = assert_error(run_phx(["list"], env, check=None), 1, "a bug in Phoenix", "--verbose", "KeyError")
    assert line.startswith("phx: error: ")

    res = run_phx(["list", "--json"], env, check=None)
    assert res.code == 1, res
    doc = json.loads(res.out)
    assert doc["ok"] is False and doc["errorType"] == "InternalError" and "--verbose" in doc["error"], doc
    err = [json.loads(x) for x in res.err.splitlines()]
    assert err == [{"type": "error", "message": doc["error"]}], res.err

    res = run_phx(["list", "--json", "--verbose"], env, check=None)
    assert res.code == 1 and json.loads(res.out)["errorType"] == "InternalError", res
    (line,) = [json.loads(x) for x in res.err.splitlines() if '"error"' in x]
    assert "KeyError" in line["traceback"], res.err

    res = run_phx(["list", "--verbose"], env, check=None)
    assert res.code == 1 and "Traceback" in res.err and "phx: error: " in res.err, res


@pytest.mark.parametrize("where", WHERE)
def test_a_bug_s_message_and_traceback_never_show_a_secret(sandbox: Sandbox, tmp_path: Path, where: str) -> None:
    env = _plant_bug(sandbox, tmp_path, "leaky", where)
    for args in (["list"], ["list", "--json"], ["list", "--verbose"], ["list", "--json", "--verbose"]):
        res = run_phx(args, env, check=None)
        assert res.code == 1 and "a bug in Phoenix" in res.err + res.out, res
        assert "ValueError" in res.err + res.out and "s3.example.com" in res.err + res.out, res
        for secret in (PASSPHRASE, "s3cr3tLEAK", "AKIDLEAK", "SIGLEAK"):
            assert secret not in res.err + res.out, (args, res)


def test_a_phoenix_error_s_message_and_verbose_traceback_never_show_a_secret(sandbox: Sandbox, tmp_path: Path) -> None:
    """A Phoenix error raised from a library's exception that quoted what it had in hand: the
    passphrase (environment), a URL's credentials and a key of the config file. Its traceback under
    --verbose holds that exception's text; neither it nor the message shows a secret."""
    s3 = {"enabled": False, "bucket": "b", "accessKeyId": "AKIDCFG", "secretAccessKey": "CFGSECRETLEAK"}
    sandbox.write_config(targets={**sandbox.config.get("targets", {}), "s3": s3})
    env = _plant_bug(sandbox, tmp_path, "phoenix")
    for args in (["list"], ["list", "--json"], ["list", "--verbose"], ["list", "--json", "--verbose"]):
        res = run_phx(args, env, check=None)
        shown = res.err + res.out
        assert res.code == 1 and "the target refused" in shown and "a bug" not in shown, (args, res)
        if "--verbose" in args:
            assert "Traceback" in shown and "ValueError" in shown and "s3.example.com" in shown, (args, res)
        for secret in (PASSPHRASE, "s3cr3tLEAK", "AKIDLEAK", "SIGLEAK", "CFGSECRETLEAK"):
            assert secret not in shown, (args, secret, res)


def test_json_as_the_value_of_an_option_does_not_make_the_errors_json(sandbox: Sandbox) -> None:
    """`--to --json` restores into a folder named `--json`: a usage error after it is said in
    plain text, as without --json; a real --json still makes it the JSON error document."""
    res = sandbox.phx("restore", "--to", "--json", "--bogus", check=2)
    assert res.out == "", res
    assert res.err.startswith("phx: error: No such option '--bogus'"), res
    res = sandbox.phx("restore", "--to", "x", "--json", "--bogus", check=2)
    assert json.loads(res.out)["errorType"] == "UsageError", res
    # The error before the command's name: what follows that name is still the command's.
    res = sandbox.phx("--bogus", "restore", "--to", "--json", check=2)
    assert res.out == "" and res.err.startswith("phx: error: No such option '--bogus'"), res
    res = sandbox.phx("--bogus", "restore", "--to", "x", "--json", check=2)
    assert json.loads(res.out)["errorType"] == "UsageError", res


def test_restore_to_a_path_through_dot_dot_creates_nothing_on_the_way(backed_up: Sandbox, tmp_path: Path) -> None:
    """`--to x/../y` is `y`: no empty `x` is left beside it. A symlink before the `..` is followed,
    as the system follows it (`link/../y` is `y` beside the link's target)."""
    sb = backed_up
    work = tmp_path / "work"
    (work / "elsewhere" / "deep").mkdir(parents=True)
    (work / "link").symlink_to(work / "elsewhere" / "deep")
    for to, where in (("x/../y", work / "y"), ("link/../z", work / "elsewhere" / "z")):
        res = run_phx(["restore", "--latest", "--to", to, "--json"], sb.env, cwd=work)
        assert res.json()["destination"] == str(where), res
        assert (where / "home").is_dir(), res
    assert sorted(p.name for p in work.iterdir()) == ["elsewhere", "link", "y"]


def test_restore_to_through_a_symlink_loop_or_a_dangling_link_is_one_error_creating_nothing(
    backed_up: Sandbox, tmp_path: Path
) -> None:
    """`--to loop/../y` (a link to itself) and `--to dangling/../y` (a link to nowhere): the
    system cannot go through either; one error naming the folder, exit 2, nothing created
    anywhere (not the dangling link's missing target)."""
    sb = backed_up
    work = tmp_path / "work"
    work.mkdir()
    (work / "loop").symlink_to(work / "loop")
    nowhere = tmp_path / "nowhere"
    (work / "dangling").symlink_to(nowhere / "deeper")
    for to, link in (("loop/../y", "loop"), ("dangling/../y", "dangling"), ("dangling/sub/../../y", "dangling")):
        res = run_phx(["restore", "--latest", "--to", to], sb.env, cwd=work, check=None)
        line = assert_error(res, 2, f"{work / link} is a symbolic link to a missing folder", "give the folder")
        assert line.startswith(f"phx: error: {to}: "), res
    assert sorted(p.name for p in work.iterdir()) == ["dangling", "loop"]
    assert not nowhere.exists()
