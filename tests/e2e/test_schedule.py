"""`phx schedule` through the command.

- cron, for real: as a throwaway user this test creates (never the crontab of the user running
  the tests), install, status, the entry's command run exactly as cron would run it (a backup
  lands and is logged), replace, and remove, leaving the user's own crontab lines alone; and the
  drill job (`install --drill monthly`) beside the backup job, its entry run as cron would;
- systemd: the user service and timer written below a temporary HOME and checked with
  `systemd-analyze verify`; systemd --user does not run in CI, so activation fails with a clear
  error and the files stay, ready to enable;
- launchd: the plist written below a temporary HOME (launchctl exists only on macOS);
- a clear error when no scheduler is usable;
- `phx schedule run` logging to ~/.argentos/backup/logs/backup.log.
"""

from __future__ import annotations

import json
import os
import plistlib
import pwd
import secrets
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from e2e_support import Sandbox, assert_error, run_phx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import phoenix_backup
from services import change_users

SRC = Path(phoenix_backup.__file__).resolve().parents[1]


# -- a throwaway user ---------------------------------------------------------------------


class ThrowawayUser:
    def __init__(self, name: str, home: Path) -> None:
        self.name = name
        self.home = home
        self.pw = pwd.getpwnam(name)

    def run(self, argv: list[str], env: dict[str, str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        runuser = shutil.which("runuser")
        assert runuser is not None
        cmd = [runuser, "-u", self.name, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd="/", **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.fixture
def throwaway_user(public_tmp: Path) -> Iterator[ThrowawayUser]:
    if os.geteuid() != 0:
        pytest.skip("creating a throwaway user for the crontab test needs root (CI runs as root)")
    for tool in ("useradd", "userdel", "runuser", "crontab"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/test.sh installs cron and passwd)")
    name = f"phxs{secrets.token_hex(4)}"
    home = public_tmp / "home"
    home.mkdir()
    made = change_users(["useradd", "--home-dir", str(home), "--shell", "/bin/sh", "--no-create-home", name])
    assert made.returncode == 0, made.stderr
    try:
        yield ThrowawayUser(name, home)
    finally:
        subprocess.run(["crontab", "-r", "-u", name], capture_output=True)  # the throwaway user's, not ours
        change_users(["userdel", name])


def python_for(user: ThrowawayUser, shims: Path) -> tuple[list[str], dict[str, str]]:
    """How `user` can start Phoenix: this interpreter if they may run it, else the system
    Python 3 of the same minor version with the project's packages on PYTHONPATH.

    (CI's interpreter may live below root's 0700 home. The system Python may be a patch release
    older than 3.11.3, for which redis-py imports `async_timeout` instead of asyncio's `timeout`;
    a one-line shim supplies it. Nothing Phoenix runs here uses it.)"""
    env = {"HOME": str(user.home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    probe = ["-c", "import phoenix_backup.cli.main"]
    if user.run([sys.executable, *probe], env).returncode == 0:
        return [sys.executable], env
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    shims.mkdir(exist_ok=True)
    (shims / "async_timeout.py").write_text("from asyncio import timeout  # noqa: F401\n")
    site = sysconfig.get_paths()["purelib"]
    env_pp = {**env, "PYTHONPATH": f"{SRC}:{site}:{shims}"}
    if system.exists():
        probed = user.run([str(system), *probe], env_pp)
        if probed.returncode == 0:
            return [str(system)], env_pp
        why = (probed.stderr.strip().splitlines() or ["?"])[-1]
    else:
        why = f"{system} does not exist"
    pytest.skip(f"the throwaway user can run neither {sys.executable} nor {system} with Phoenix ({why})")


def cron_sandbox(
    user: ThrowawayUser, make_sandbox: Callable[..., Sandbox], public_tmp: Path
) -> tuple[Sandbox, list[str], dict[str, str], dict[str, str]]:
    """A sandbox owned by `user` (its HOME theirs), with their own crontab line: (sandbox, how to
    start phx, the user's environment, and that with PHX_PASSPHRASE_FILE for installing)."""
    sb = make_sandbox(root=public_tmp / "sb")
    # The sandbox's HOME (with the sample's databases) becomes the user's home.
    subprocess.run(["usermod", "--home", str(sb.home), user.name], check=True)
    user.home = sb.home
    python, env = python_for(user, public_tmp / "shims")
    passfile = sb.root / "passphrase"
    passfile.write_text(sb.env["PHX_PASSPHRASE"] + "\n")
    sb.write_config(schedule={"every": "daily", "at": "03:30"})
    for dirpath, dirnames, filenames in os.walk(public_tmp):
        for entry in [".", *dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, entry), user.pw.pw_uid, user.pw.pw_gid)
    env["HOME"] = str(sb.home)
    phx = [*python, "-m", "phoenix_backup.cli.main"]

    # The user's own crontab line must survive everything Phoenix does.
    subprocess.run(
        ["crontab", "-u", user.name, "-"], input="17 4 * * * /bin/true # my own job\n", text=True, check=True
    )
    if user.run(["systemctl", "--user", "show-environment"], env).returncode == 0:
        pytest.skip("systemd --user runs for the throwaway user: install would (rightly) pick it over cron")
    return sb, phx, env, {**env, "PHX_PASSPHRASE_FILE": str(passfile)}


def crontab_entries(user: ThrowawayUser) -> list[str]:
    table = subprocess.run(["crontab", "-l", "-u", user.name], capture_output=True, text=True, check=True).stdout
    return [line for line in table.splitlines() if line and not line.startswith("#")]


def run_as_cron(user: ThrowawayUser, sb: Sandbox, entry: str) -> subprocess.CompletedProcess[str]:
    """The entry's command run exactly as cron does: /bin/sh -c, a minimal environment."""
    command = entry.split(" ", 5)[5]
    cron_env = {"HOME": str(sb.home), "LOGNAME": user.name, "PATH": "/usr/bin:/bin", "SHELL": "/bin/sh"}
    return user.run(["/bin/sh", "-c", command], cron_env)


def test_cron_install_run_status_remove_as_a_throwaway_user(
    throwaway_user: ThrowawayUser, make_sandbox: Callable[..., Sandbox], public_tmp: Path
) -> None:
    user = throwaway_user
    sb, phx, env, install_env = cron_sandbox(user, make_sandbox, public_tmp)
    passfile = sb.root / "passphrase"
    res = user.run([*phx, "schedule", "install", "--config", str(sb.config_path), "--json"], install_env)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["scheduler"] == "cron" and doc["description"] == "daily at 03:30" and doc["warnings"] == []
    assert datetime.fromisoformat(doc["nextDue"]).strftime("%H:%M") == "03:30"
    table = subprocess.run(["crontab", "-l", "-u", user.name], capture_output=True, text=True, check=True).stdout
    entries = [line for line in table.splitlines() if line and not line.startswith("#")]
    assert entries[0] == "17 4 * * * /bin/true # my own job"
    assert len(entries) == 2 and entries[1].startswith("30 3 * * * ")
    assert f"PHX_PASSPHRASE_FILE={passfile}" in entries[1] and "schedule run --config" in entries[1]
    assert sb.env["PHX_PASSPHRASE"] not in table, "a crontab is no place for a passphrase"

    status = json.loads(user.run([*phx, "schedule", "status", "--json"], env).stdout)
    assert status["installed"] and status["scheduler"] == "cron" and status["at"] == "03:30"
    assert status["lastRun"] is None

    # Run the entry's command exactly as cron does: /bin/sh -c, a minimal environment.
    ran = run_as_cron(user, sb, entries[1])
    assert ran.returncode == 0, ran.stderr
    status = json.loads(user.run([*phx, "schedule", "status", "--json"], env).stdout)
    assert (datetime.now().astimezone() - datetime.fromisoformat(status["lastRun"])).total_seconds() < 300
    # Doctor: an entry runs only where a cron daemon does; then it says when the job last ran.
    report = json.loads(user.run([*phx, "doctor", "--json", "--config", str(sb.config_path)], install_env).stdout)
    check = next(c for c in report["checks"] if c["name"] == "schedule")
    if status["details"]["cron"]["daemonRunning"]:
        assert check["status"] == "ok" and "last scheduled run" in check["message"], check
    else:
        assert check["status"] == "fail" and "no cron daemon runs" in check["message"], check
    log = (sb.home / ".argentos" / "backup" / "logs" / "backup.log").read_text()
    assert "scheduled backup starting" in log and "scheduled backup finished: exit 0" in log
    assert "saved:" in log and sb.env["PHX_PASSPHRASE"] not in log
    snaps = json.loads(user.run([*phx, "list", "--json", "--config", str(sb.config_path)], install_env).stdout)
    assert len(snaps) == 1
    overview = json.loads(user.run([*phx, "status", "--json", "--config", str(sb.config_path)], install_env).stdout)
    assert overview["ok"] and overview["schedule"]["scheduler"] == "cron"
    assert overview["schedule"]["description"] == "daily at 03:30"

    # Installing again replaces the entry; removing leaves the user's own line.
    res = user.run([*phx, "schedule", "install", "--config", str(sb.config_path), "--every", "hourly"], install_env)
    assert res.returncode == 0, res.stderr
    table = subprocess.run(["crontab", "-l", "-u", user.name], capture_output=True, text=True, check=True).stdout
    assert table.count("# BEGIN phoenix-backup") == 1 and "\n0 * * * * " in table
    # Switching to a scheduler that cannot take the job (no user manager runs for this user) is
    # an error, and the job the user had keeps running: never no schedule at all.
    res = user.run([*phx, "schedule", "install", "--scheduler", "systemd", "--every", "daily"], install_env)
    assert res.returncode == 2 and "systemctl --user" in res.stderr, res.stderr
    assert crontab_entries(user)[1].startswith("0 * * * * "), "the cron job survived the failed switch"
    status = json.loads(user.run([*phx, "schedule", "status", "--json"], env).stdout)
    assert status["installed"] and status["scheduler"] == "cron" and status["every"] == "hourly", status
    res = user.run([*phx, "schedule", "remove"], env)
    # ... and removing takes the job from cron and the failed switch's unit files from systemd.
    assert res.returncode == 0 and res.stdout == "removed the schedule from systemd, cron\n", res.stdout
    table = subprocess.run(["crontab", "-l", "-u", user.name], capture_output=True, text=True).stdout
    assert table.strip() == "17 4 * * * /bin/true # my own job"
    status = json.loads(user.run([*phx, "schedule", "status", "--json"], env).stdout)
    assert status["installed"] is False


def test_cron_drill_job_beside_the_backup_job_as_a_throwaway_user(
    throwaway_user: ThrowawayUser, make_sandbox: Callable[..., Sandbox], public_tmp: Path
) -> None:
    user = throwaway_user
    sb, phx, env, install_env = cron_sandbox(user, make_sandbox, public_tmp)
    config = ["--config", str(sb.config_path)]
    res = user.run([*phx, "schedule", "install", *config], install_env)
    assert res.returncode == 0, res.stderr
    res = user.run([*phx, "schedule", "install", "--drill", "monthly", *config, "--json"], install_env)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["job"] == "drill" and doc["scheduler"] == "cron" and doc["description"] == "monthly on the 1st at 03:00"
    assert datetime.fromisoformat(doc["nextDue"]).strftime("%d %H:%M") == "01 03:00"
    # A second entry of its own: the user's line and the backup entry stay.
    entries = crontab_entries(user)
    assert len(entries) == 3 and entries[0] == "17 4 * * * /bin/true # my own job"
    assert entries[1].startswith("30 3 * * * ") and "schedule run --config" in entries[1]
    assert entries[2].startswith("0 3 1 * * ") and "schedule run --drill --config" in entries[2]
    table = subprocess.run(["crontab", "-l", "-u", user.name], capture_output=True, text=True, check=True).stdout
    assert "# BEGIN phoenix-backup" in table and "# BEGIN phoenix-drill" in table
    entries_before = entries

    status = json.loads(user.run([*phx, "schedule", "status", "--json"], env).stdout)
    assert status["installed"] and status["description"] == "daily at 03:30"
    assert status["drill"]["installed"] and status["drill"]["scheduler"] == "cron"
    assert status["drill"]["description"] == "monthly on the 1st at 03:00"
    text = user.run([*phx, "schedule", "status"], env).stdout
    assert "installed with cron: daily at 03:30" in text and "drill installed with cron: monthly on the 1st" in text

    # Installing the backup again replaces its entry and leaves the drill entry alone.
    res = user.run([*phx, "schedule", "install", *config, "--every", "hourly"], install_env)
    assert res.returncode == 0, res.stderr
    entries = crontab_entries(user)
    backup = [e for e in entries if "schedule run --config" in e]
    drill = [e for e in entries if "schedule run --drill --config" in e]
    assert len(entries) == 3 and len(backup) == 1 and len(drill) == 1
    assert backup[0].startswith("0 * * * * ") and drill[0] == entries_before[2]

    # The backup entry, then the drill entry, run exactly as cron runs them: the drill passes.
    assert run_as_cron(user, sb, backup[0]).returncode == 0
    ran = run_as_cron(user, sb, drill[0])
    assert ran.returncode == 0, ran.stderr
    logs = sb.home / ".argentos" / "backup" / "logs"
    log = (logs / "drill.log").read_text()
    assert "scheduled drill starting" in log and "drill passed" in log and "scheduled drill finished: exit 0" in log
    assert sb.env["PHX_PASSPHRASE"] not in log and "scheduled drill" not in (logs / "backup.log").read_text()
    assert oct((logs / "drill.log").stat().st_mode & 0o777) == "0o600"
    reports = list((sb.home / ".argentos" / "backup" / "drills").glob("*.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())["ok"] is True

    # remove --drill removes only the drill entry; remove then the backup's.
    res = user.run([*phx, "schedule", "remove", "--drill"], env)
    assert res.returncode == 0 and res.stdout.strip() == "removed the drill schedule from cron"
    assert crontab_entries(user) == ["17 4 * * * /bin/true # my own job", backup[0]]
    status = json.loads(user.run([*phx, "schedule", "status", "--json"], env).stdout)
    assert status["installed"] and status["drill"]["installed"] is False
    res = user.run([*phx, "schedule", "remove"], env)
    assert res.returncode == 0 and res.stdout.strip() == "removed the schedule from cron"
    assert crontab_entries(user) == ["17 4 * * * /bin/true # my own job"]


# -- systemd and launchd files below a temporary HOME ---------------------------------------


def isolated_env(sb: Sandbox, tmp_path: Path) -> dict[str, str]:
    """No session bus and an empty runtime folder: systemctl --user can reach no real manager."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = sb.env_with(XDG_RUNTIME_DIR=str(runtime), DBUS_SESSION_BUS_ADDRESS=None, XDG_CONFIG_HOME=None)
    return env


def test_systemd_units_are_written_below_home_and_removed(make_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    sb = make_sandbox()
    env = isolated_env(sb, tmp_path)
    if subprocess.run(["systemctl", "--user", "show-environment"], env=env, capture_output=True).returncode == 0:
        pytest.skip("a user systemd answers even without a session: not touching it")
    res = sb.phx(
        "schedule", "install", "--scheduler", "systemd", "--every", "weekly", "--at", "04:15", env=env, check=2
    )
    unit_dir = sb.home / ".config" / "systemd" / "user"
    line = assert_error(res, 2, "systemctl --user", str(unit_dir), "enable --now phoenix-backup.timer")
    assert "passphrase" in res.err, "warned that a scheduled run has no passphrase source"
    service = (unit_dir / "phoenix-backup.service").read_text()
    timer = (unit_dir / "phoenix-backup.timer").read_text()
    assert "Type=oneshot" in service and f"schedule run --config {sb.config_path}" in service
    assert "OnCalendar=Sun *-*-* 04:15:00" in timer and "Persistent=true" in timer
    assert "WantedBy=timers.target" in timer
    for text in (service, timer, line):
        assert sb.env["PHX_PASSPHRASE"] not in text
    analyze = shutil.which("systemd-analyze")
    if analyze:
        check = subprocess.run(
            [analyze, "verify", str(unit_dir / "phoenix-backup.timer"), str(unit_dir / "phoenix-backup.service")],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0 and check.stderr == "", check.stderr
    # Issue 16.10: what did not install is not reported installed, nor recorded.
    status = sb.phx("schedule", "status", "--json", env=env).json()
    assert status["installed"] is False and status["scheduler"] is None, status
    assert set(status["inactive"]) == {"systemd"} and status["inactive"]["systemd"]["active"] != "active"
    assert "systemd holds the backup job's files but does not run them" in sb.phx("schedule", "status", env=env).out
    assert not (sb.home / ".argentos" / "backup" / "schedule.json").exists()
    overview = sb.phx("status", "--json", env=env, check=None).json()
    assert overview["schedule"]["installed"] is False and overview["schedule"]["nextDue"] is not None
    assert any("no schedule is installed" in w for w in overview["warnings"]), overview["warnings"]
    doctor = {c["name"]: c for c in sb.phx("doctor", "--json", env=env, check=None).json()["checks"]}
    assert doctor["schedule"]["status"] == "warn", doctor["schedule"]
    assert "no backup schedule is installed" in doctor["schedule"]["message"]
    assert "systemd holds its files" in doctor["schedule"]["message"]
    # A record left by an older Phoenix (or written by hand) that no scheduler runs: doctor fails.
    record = sb.home / ".argentos" / "backup" / "schedule.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"job": "backup", "scheduler": "systemd", "every": "weekly", "at": "04:15"}))
    doctor = {c["name"]: c for c in sb.phx("doctor", "--json", env=env, check=1).json()["checks"]}
    assert doctor["schedule"]["status"] == "fail" and "no scheduler runs it" in doctor["schedule"]["message"]
    assert "enable --now phoenix-backup.timer" in doctor["schedule"]["fix"]
    record.unlink()
    # The drill job: units of its own beside the backup's.
    res = sb.phx("schedule", "install", "--scheduler", "systemd", "--drill", "monthly", env=env, check=2)
    assert_error(res, 2, "enable --now phoenix-drill.timer")
    drill_service = (unit_dir / "phoenix-drill.service").read_text()
    drill_timer = (unit_dir / "phoenix-drill.timer").read_text()
    assert f"schedule run --drill --config {sb.config_path}" in drill_service
    assert "OnCalendar=*-*-01 03:00:00" in drill_timer and "Unit=phoenix-drill.service" in drill_timer
    assert "OnCalendar=Sun *-*-* 04:15:00" in (unit_dir / "phoenix-backup.timer").read_text()
    if analyze:
        check = subprocess.run(
            [analyze, "verify", str(unit_dir / "phoenix-drill.timer"), str(unit_dir / "phoenix-drill.service")],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0 and check.stderr == "", check.stderr
    drill_status = sb.phx("schedule", "status", "--json", env=env).json()["drill"]
    assert drill_status["installed"] is False and "systemd" in drill_status["inactive"]
    assert sb.phx("schedule", "remove", env=env).out.strip().splitlines() == [
        "removed the schedule from systemd",
        "removed the drill schedule from systemd",
    ]
    assert not (unit_dir / "phoenix-backup.timer").exists() and not (unit_dir / "phoenix-backup.service").exists()
    assert not (unit_dir / "phoenix-drill.timer").exists()
    assert sb.phx("schedule", "status", "--json", env=env).json()["installed"] is False


@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS this would load a real launchd agent")
def test_launchd_plist_is_written_below_home(make_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    sb = make_sandbox()
    env = sb.env_with(PHX_PASSPHRASE_FILE=str(tmp_path / "pw"))
    res = sb.phx("schedule", "install", "--scheduler", "launchd", "--every", "daily", "--at", "03:30", env=env, check=2)
    assert_error(res, 2, "launchctl bootstrap")
    plist = plistlib.loads((sb.home / "Library" / "LaunchAgents" / "com.argentos.phoenix-backup.plist").read_bytes())
    assert plist["Label"] == "com.argentos.phoenix-backup"
    assert plist["ProgramArguments"][-4:] == ["schedule", "run", "--config", str(sb.config_path)]
    assert plist["StartCalendarInterval"] == {"Hour": 3, "Minute": 30}
    assert plist["EnvironmentVariables"]["PHX_PASSPHRASE_FILE"] == str(tmp_path / "pw")
    assert "PHX_PASSPHRASE" not in plist["EnvironmentVariables"]
    assert sb.phx("schedule", "remove", env=env).out.strip() == "removed the schedule from launchd"


def test_no_usable_scheduler_is_a_clear_error(make_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    sb = make_sandbox()
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = sb.env_with(PATH=str(empty))  # neither systemctl nor crontab can be found
    res = run_phx(["schedule", "install"], env, check=2)
    assert_error(res, 2, "no scheduler is usable", "cron", "systemd")
    assert not (sb.home / ".argentos" / "backup" / "schedule.json").exists()


def test_schedule_run_logs_the_backup_and_its_failure(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    sb.phx("schedule", "run")
    log = sb.home / ".argentos" / "backup" / "logs" / "backup.log"
    text = log.read_text()
    assert "saved:" in text and "scheduled backup finished: exit 0" in text
    res = sb.phx("schedule", "run", env=sb.env_with(PHX_PASSPHRASE="pw-CANARY-schedule"), check=1)
    assert res.out == "" and res.err == "", "a scheduled run says everything in its log"
    text = log.read_text()
    assert "phx: error: wrong passphrase" in text and "scheduled backup finished: exit 1" in text
    assert "pw-CANARY-schedule" not in text
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    # A config that cannot be read: logged, and recorded for `phx status`.
    res = sb.phx("schedule", "run", "--config", str(sb.root / "missing.json"), check=2)
    assert res.out == "" and res.err == ""
    assert "scheduled backup finished: exit 2" in log.read_text()
    state = json.loads((sb.home / ".argentos" / "backup" / ".last-backup").read_text())
    assert state["success"] is False and "missing.json" in state["error"]
