"""Attacks on the passphrase-source change (ops/context.py `given_passphrase`, the checks said
before the key's scrypt): what a user's setup relied on before must still work."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
from e2e_support import PASSPHRASE, Sandbox, process_state
from test_key_derivation_memory import run_watched
from test_unlock_ahead_attacks import counting, planted, put

from phoenix_backup.config import Config, load_config
from phoenix_backup.errors import KdfBudgetExceeded, UsageError, WrongPassphrase
from phoenix_backup.ops import context
from phoenix_backup.ops import key as key_ops
from phoenix_backup.repo import keys


def test_a_workspace_that_the_pre_backup_hook_mounts_is_backed_up(backed_up: Sandbox, tmp_path: Path) -> None:
    # The workspace lives on a disk that hooks.preBackup mounts (here: moves back into place);
    # it is missing only until the hook ran, as it always was.
    sb = backed_up
    away = tmp_path / "unmounted"
    sb.workspace.rename(away)
    sb.write_config(hooks={"preBackup": f"mv {away} {sb.workspace}"})
    res = sb.phx("backup", "--json", check=None)
    assert res.code == 0, res.err
    assert (sb.workspace / "SOUL.md").is_file()
    assert len(sb.snapshots()) == 2


def test_a_missing_workspace_is_recorded_as_a_failed_backup_and_costs_no_key(
    backed_up: Sandbox, tmp_path: Path
) -> None:
    # An unattended backup whose workspace disk is not mounted: the failure is said, costs no
    # scrypt, and lands in the state file that monitoring (`phx status`, notifications) reads.
    sb = backed_up
    sb.workspace.rename(tmp_path / "moved")
    code, err, derived = run_watched(sb, tmp_path, "backup")
    assert code != 0 and "the workspace" in err and "does not exist" in err, err
    assert derived == []
    state = json.loads((Path(sb.env["HOME"]) / ".argentos" / "backup" / ".last-backup").read_text())
    assert state["success"] is False, state
    assert "does not exist" in json.dumps(state), state


def planted_and_file(sb: Sandbox, tmp_path: Path, text: str) -> tuple[Path, context.Environment, Config]:
    """keys/ filled up to what one opening tries, and PHX_PASSPHRASE_FILE holding `text`."""
    put(sb.repo / "keys", planted(keys.MAX_PASSPHRASE_SLOTS_TRIED - 1, "planted"))
    file = tmp_path / "passphrase.txt"
    file.write_bytes(text.encode())
    file.chmod(0o600)
    envx = context.Environment(env=sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(file)))
    return file, envx, load_config(sb.config_path, envx.env)


def test_a_wrong_passphrase_saved_with_a_bom_costs_no_more_than_one_opening(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wrong passphrase in a file saved "UTF-8 with BOM", and keys/ filled with planted slots: the
    # try with the mark (for repositories set with it) is the same opening, within its budget.
    _, envx, cfg = planted_and_file(backed_up, tmp_path, "\ufeff" + "a careless guess\r\n")
    runs = counting(monkeypatch)
    context.unlock_ahead(cfg, envx)
    with pytest.raises((KdfBudgetExceeded, WrongPassphrase)):
        context.open_repository(cfg, envx)
    assert len(runs) <= keys.MAX_PASSPHRASE_SLOTS_TRIED, f"{len(runs)} scrypt runs for one command"
    # Without the opening ahead (a FIFO, a command): the same.
    runs.clear()
    monkeypatch.setattr(keys, "_slot_keys", {})
    with pytest.raises((KdfBudgetExceeded, WrongPassphrase)):
        context.open_repository(cfg, envx)
    assert len(runs) <= keys.MAX_PASSPHRASE_SLOTS_TRIED, f"{len(runs)} scrypt runs for one opening"


def test_a_passphrase_file_changed_after_the_opening_ahead_costs_no_more_than_one_opening(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file is rewritten between the opening ahead and the real one (a script that rotates it,
    # or whoever can write it): the slots the first passphrase was tried on are not free for the next.
    file, envx, cfg = planted_and_file(backed_up, tmp_path, "first guess\n")
    runs = counting(monkeypatch)
    context.unlock_ahead(cfg, envx)
    file.write_text("second guess\n")
    with pytest.raises((KdfBudgetExceeded, WrongPassphrase)):
        context.open_repository(cfg, envx)
    assert len(runs) <= keys.MAX_PASSPHRASE_SLOTS_TRIED, f"{len(runs)} scrypt runs for one command"


def test_a_passphrase_command_that_exits_leaving_a_child_with_its_output_gives_the_passphrase(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `pass`/`gpg` may start an agent that keeps the output it inherited: the command printed the
    # passphrase and exited 0, so it is read then, not refused when the agent is still running.
    sb = sandbox
    monkeypatch.setattr(context, "PASSPHRASE_COMMAND_TIMEOUT", 10.0)
    envx = context.Environment(env=sb.env_with(PHX_PASSPHRASE=None))
    for command in (f"printf '%s\\n' '{PASSPHRASE}'; sleep 15 &", f"(sleep 15 &); printf '%s' '{PASSPHRASE}'"):
        sb.write_config(encryption={"enabled": True, "method": "passphrase", "passphraseCommand": command})
        started = time.monotonic()
        assert context.passphrase(load_config(sb.config_path, envx.env), envx) == PASSPHRASE, command
        assert time.monotonic() - started < 8, command
    # Exiting non-zero after printing is still a failure, said at once.
    sb.write_config(
        encryption={"enabled": True, "method": "passphrase", "passphraseCommand": f"echo '{PASSPHRASE}'; exit 3"}
    )
    with pytest.raises(UsageError, match="passphraseCommand failed; run it by hand"):
        context.passphrase(load_config(sb.config_path, envx.env), envx)


def test_init_refuses_a_passphrase_file_that_holds_the_bom_alone(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty file saved by Notepad as "UTF-8 with BOM": no passphrase, not an invisible one that
    # the user could never type (nor keep once the file holds a real passphrase after the mark).
    sb = sandbox
    file = tmp_path / "passphrase.txt"
    file.write_bytes("\ufeff\r\n".encode())
    file.chmod(0o600)
    folder, config = tmp_path / "new-repo", tmp_path / "c.json"
    env = sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(file))
    res = sb.phx("init", "--config", config, "--workspace", sb.workspace, "--repo", folder, env=env, check=None)
    assert res.code != 0 and "no passphrase was given" in res.err, (res.code, res.err)
    assert not (folder / "config").exists()
    # A repository whose passphrase was set from such a file before (the mark itself) still opens.
    # An older Phoenix took the mark alone as a new passphrase; this one refuses it (keys._blank).
    cfg = load_config(sb.config_path, sb.env)
    with monkeypatch.context() as older:
        older.setattr(keys, "_blank", lambda passphrase: False)
        # PHX_NEW_PASSPHRASE is read as every source is now (the mark left out): the mark as it is.
        older.setattr(key_ops, "new_passphrase", lambda _envx: "\ufeff")
        key_ops.key_passwd(cfg, context.Environment(env=sb.env))
    res = sb.phx("list", "--json", env=env, check=None)
    assert res.code == 0 and "byte-order mark" in res.err, (res.code, res.err)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, killed and waiting for its reaper, does not)."""
    return process_state(pid) not in ("", "Z", "X")


@pytest.mark.parametrize("ends", ["runs-past-the-deadline"])
def test_a_passphrase_command_leaves_no_background_child_running(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ends: str
) -> None:
    """A passphrase command that starts a background child holding its output (`sleep 300 &`) and
    overruns its time: before, only the shell was killed at the deadline and the child ran on. Now
    the command is killed with every process below it. (A command that prints the passphrase and
    exits is left alone, with what it chose to leave running: it stays in phx's session, which it
    may need for the terminal; docs/configuration.md.)"""
    sb = sandbox
    monkeypatch.setattr(context, "PASSPHRASE_COMMAND_TIMEOUT", 2.0)
    envx = context.Environment(env=sb.env_with(PHX_PASSPHRASE=None))
    pidfile = tmp_path / "child.pid"
    start = f"sleep 300 & echo $! > {pidfile};"
    if ends == "prints-and-exits":
        command = f"{start} printf '%s' '{PASSPHRASE}'"
    else:
        command = f"{start} sleep 300; printf '%s' '{PASSPHRASE}'"
    sb.write_config(encryption={"enabled": True, "method": "passphrase", "passphraseCommand": command})
    try:
        if ends == "prints-and-exits":
            assert context.passphrase(load_config(sb.config_path, envx.env), envx) == PASSPHRASE
        else:
            with pytest.raises(UsageError, match="stopped after 2 s"):
                context.passphrase(load_config(sb.config_path, envx.env), envx)
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"the command's background child {pid} still runs"
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_a_passphrase_command_may_ask_on_the_terminal(sandbox: Sandbox) -> None:
    """A command that asks on /dev/tty (`age -d` does, or a `read` from the terminal) needs phx's
    session: in a session of its own it found no terminal ("cannot open /dev/tty: No such device
    or address"), printed an empty passphrase and `phx list` said the passphrase was wrong (exit 1).
    The command stays in phx's session (docs/configuration.md)."""
    from e2e_support import on_a_terminal

    sb = sandbox
    sb.backup()
    ask = "printf 'Passphrase for age:' >/dev/tty; IFS= read -r p </dev/tty; printf '%s' \"$p\""
    sb.write_config(encryption={"enabled": True, "method": "passphrase", "passphraseCommand": ask})
    run = on_a_terminal(["list"], sb.env_with(PHX_PASSPHRASE=None), [PASSPHRASE])
    assert run.code == 0, run
    assert "Passphrase for age:" in run.raw and "passphraseCommand failed" not in run.raw, run


def test_ctrl_c_while_the_passphrase_command_asks_leaves_the_terminal_echoing(sandbox: Sandbox) -> None:
    """Ctrl-C while `encryption.passphraseCommand` asks on the terminal, echo turned off for the
    passphrase: `phx` kills the command (here it ignores SIGINT, so `phx`'s kill is what ends it; a
    tool killed at its timeout is the same), which cannot turn the echo back on. `phx` puts the
    terminal's settings back as they were. Before, the shell was left not echoing what is typed."""
    from e2e_support import on_a_terminal

    sb = sandbox
    sb.backup()
    ask = (
        "trap '' INT; stty -echo </dev/tty; printf 'Passphrase:' >/dev/tty; "
        'IFS= read -r p </dev/tty; stty echo </dev/tty; printf "%s" "$p"'
    )
    sb.write_config(encryption={"enabled": True, "method": "passphrase", "passphraseCommand": ask})
    run = on_a_terminal(["list"], sb.env_with(PHX_PASSPHRASE=None), interrupt_after="Passphrase:")
    assert run.code == 130 and "interrupted" in run.raw and "Traceback" not in run.raw, run
    assert run.echoes, f"the terminal was left without echo: {run}"


_STOP_IN_THE_KILL = """
import fcntl, os, signal, termios
from phoenix_backup import shell
from phoenix_backup.cli import app
from phoenix_backup.ops import context

os.setsid()  # a terminal of its own: a pty, phx in its foreground
main, tty = os.openpty()
fcntl.ioctl(tty, termios.TIOCSCTTY, 0)
app.stop_on_signals()
context.PASSPHRASE_COMMAND_TIMEOUT = 1.0
first = shell._wait_stopped


def stopped_then_signal(pid, deadline):  # SIGTERM while the timed-out command is being killed
    first(pid, deadline)
    shell._wait_stopped = first
    os.kill(os.getpid(), signal.SIGTERM)


shell._wait_stopped = stopped_then_signal
try:
    context._run_passphrase_command("stty -echo </dev/tty; sleep 100.4321")
except app.Stopped:
    print("stopped", "echo" if termios.tcgetattr(tty)[3] & termios.ECHO else "no echo")
"""


def test_a_stop_while_the_timed_out_passphrase_command_is_killed_leaves_the_terminal_echoing() -> None:
    """A passphraseCommand that turned the echo off and hangs is killed at its timeout, and a stop
    signal (SIGTERM) comes during that kill: the stop is raised once the kill is done, and the
    terminal's settings are still put back, and the command is not left stopped. Before, the stop
    raised from the kill skipped that, the terminal was left without echo, and the command, stopped
    (SIGSTOP) before its kill, stayed stopped for ever."""
    import subprocess
    import sys

    def left() -> list[str]:
        found = []
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if b"sleep 100.4321" in (entry / "cmdline").read_bytes():
                    found.append(entry.name)
                    os.kill(int(entry.name), signal.SIGKILL)
        return found

    done = subprocess.run([sys.executable, "-c", _STOP_IN_THE_KILL], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "stopped echo", (done.returncode, done.stdout, done.stderr)
    time.sleep(0.3)
    assert left() == [], "the passphraseCommand was left stopped"
