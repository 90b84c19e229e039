"""`phx schedule install|status|remove` and `phx schedule run` (what the scheduler runs)."""

from __future__ import annotations

import time

import click

from phoenix_backup import schedule as schedule_lib
from phoenix_backup.cli import render
from phoenix_backup.cli.app import Out, cli, common, load_config
from phoenix_backup.errors import ExitStatus, PhoenixError
from phoenix_backup.ops import backup as backup_op
from phoenix_backup.ops.context import Environment
from phoenix_backup.schedule.runlog import RunLog, log_dir
from phoenix_backup.state import state_path, write_state


@cli.group()
def schedule() -> None:
    """Scheduled backups: a systemd user timer, a crontab entry, or a launchd agent on macOS."""


@schedule.command()
@click.option(
    "--every",
    help="hourly, daily, weekly or a 5-field cron expression (default: the config's schedule.every, else daily).",
)
@click.option("--at", "at", help="Time of day HH:MM for daily and weekly (default: schedule.at, else 02:00).")
@click.option(
    "--scheduler",
    type=click.Choice(schedule_lib.SCHEDULERS),
    help="Use this scheduler instead of the one detected (systemd --user, else cron; launchd on macOS).",
)
@common
def install(
    out: Out, envx: Environment, config_path: str | None, every: str | None, at: str | None, scheduler: str | None
) -> ExitStatus:
    """Install (or replace) the backup schedule for the current user.

    Scheduled runs log to ~/.argentos/backup/logs/backup.log (rotated). They need a passphrase
    without a terminal: encryption.passphraseCommand, or PHX_PASSPHRASE_FILE set when installing.

    Example: phx schedule install --every daily --at 02:30
    """
    cfg = load_config(out, envx, config_path)
    result = schedule_lib.install(
        cfg,
        envx.env,
        envx.home,
        every=every,
        at=at,
        scheduler=scheduler,
        notice=lambda warning: out.notice(f"warning: {warning}"),
    )
    text = (
        f"installed with {result.scheduler}: {result.spec.describe()}; next run "
        f"{result.next_due.isoformat(timespec='minutes')}; log {result.log}/backup.log"
    )
    out.result(result.to_json(), text)
    return ExitStatus.OK


@schedule.command(name="status")
@common
def status_cmd(out: Out, envx: Environment, config_path: str | None) -> ExitStatus:
    """Show which scheduler holds the backup schedule and when it runs next.

    Example: phx schedule status
    """
    result = schedule_lib.status(envx.env, envx.home)
    if not result.installed:
        text = "no backup schedule is installed; run `phx schedule install`"
    else:
        due = result.next_due.isoformat(timespec="minutes") if result.next_due else "unknown"
        what = result.spec.describe() if result.spec else "unknown schedule"
        text = f"installed with {', '.join(result.installed)}: {what}; next run {due}"
        if result.last_log_line:
            text += f"\nlast log line: {result.last_log_line}"
    out.result(result.to_json(), text)
    return ExitStatus.OK


@schedule.command()
@common
def remove(out: Out, envx: Environment, config_path: str | None) -> ExitStatus:
    """Remove the backup schedule (timer, crontab entry or launchd agent).

    Example: phx schedule remove
    """
    result = schedule_lib.remove(envx.env, envx.home)
    text = f"removed the schedule from {', '.join(result.removed)}" if result.removed else "no schedule was installed"
    out.result(result.to_json(), text)
    return ExitStatus.OK


@schedule.command()
@common
def run(out: Out, envx: Environment, config_path: str | None) -> ExitStatus:
    """Run one backup as the scheduler does, logging to ~/.argentos/backup/logs/backup.log.

    Example: phx schedule run --config ~/.argentos/backup.json
    """
    log = RunLog(log_dir(envx.home))
    # No terminal: notices and the result go to the log; the exit code tells the scheduler.
    envx.interactive = False
    envx.prompt = None
    envx.confirm = None
    envx.progress = None
    envx.notice = lambda message: log.write(f"phx: {message}")
    log.write(f"scheduled backup starting (config {config_path or 'default'})")
    try:
        cfg = load_config(Out(False, False), envx, config_path)
    except PhoenixError as exc:
        # Without a config there is no notification setting either: the log and the state file
        # (which `phx status` reads) are the only places to say it.
        log.write(f"phx: error: {exc}")
        log.write(f"scheduled backup finished: exit {int(exc.exit_status)}")
        write_state(
            timestamp=time.time(),
            backup_path="",
            compression=False,
            success=False,
            snapshot_id=None,
            snapshot_name=None,
            error=str(exc),
            targets={},
            scope="full",
            path=state_path(envx.home),
        )
        return exc.exit_status
    try:
        result = backup_op.backup(cfg, envx)
    except PhoenixError as exc:
        log.write(f"phx: error: {exc}")
        log.write(f"scheduled backup finished: exit {int(exc.exit_status)}")
        return exc.exit_status
    except Exception as exc:  # the log is the only place a scheduled run can say what happened
        log.write(f"phx: error: unexpected {type(exc).__name__}: {exc}")
        log.write(f"scheduled backup finished: exit {int(ExitStatus.FAILURE)}")
        return ExitStatus.FAILURE
    log.write(render.backup(result, False))
    log.write(f"scheduled backup finished: exit {int(result.exit_status)}")
    if out.as_json:
        out.result(result.to_json(), "")
    return result.exit_status
