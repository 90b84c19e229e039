"""`phx schedule install|status|remove` and `phx schedule run` (what the scheduler runs), for the
backup job and, with `--drill`, the restore-drill job."""

from __future__ import annotations

import time

import click

from phoenix_backup import schedule as schedule_lib
from phoenix_backup.cli import render
from phoenix_backup.cli.app import Out, cli, command_group, common, known_secrets, load_config, redacted
from phoenix_backup.cli.cmd_drill import render as render_drill
from phoenix_backup.config import Config
from phoenix_backup.errors import ExitStatus, PhoenixError, UsageError
from phoenix_backup.ops import backup as backup_op
from phoenix_backup.ops import drill as drill_op
from phoenix_backup.ops.context import Environment
from phoenix_backup.reporting import Silent
from phoenix_backup.schedule.runlog import RunLog, holding, log_dir, log_name
from phoenix_backup.state import state_path, write_state


@cli.group()
@command_group
def schedule() -> None:
    """Scheduled backups (and restore drills): a systemd user timer, a crontab entry, or a launchd agent."""


@schedule.command()
@click.option(
    "--every",
    help="hourly, daily, weekly, monthly or a 5-field cron expression (default: the config's schedule.every, "
    "else daily).",
)
@click.option(
    "--drill",
    "drill_every",
    metavar="EVERY",
    help="Install the restore-drill job instead (`phx drill` of the latest snapshot), beside the backup job: "
    "monthly (the 1st), weekly, daily or a 5-field cron expression; --at defaults to 03:00.",
)
@click.option("--at", "at", help="Time of day HH:MM for daily, weekly and monthly (default: schedule.at, else 02:00).")
@click.option(
    "--watch",
    is_flag=True,
    help="Install `phx watch` as a service that always runs (systemd user service or launchd agent) instead.",
)
@click.option(
    "--scheduler",
    type=click.Choice(schedule_lib.SCHEDULERS),
    help="Use this scheduler instead of the one detected (systemd --user, else cron; launchd on macOS).",
)
@common
def install(
    out: Out,
    envx: Environment,
    config_path: str | None,
    every: str | None,
    drill_every: str | None,
    at: str | None,
    watch: bool,
    scheduler: str | None,
) -> ExitStatus:
    """Install (or replace) the backup schedule, or with --drill the restore-drill schedule.

    Scheduled runs log to ~/.argentos/backup/logs/backup.log (drills: drill.log; rotated). They
    need a passphrase without a terminal: encryption.passphraseCommand, or PHX_PASSPHRASE_FILE set
    when installing. Each job is installed and replaced on its own; the other one stays.

    Example: phx schedule install --every daily --at 02:30

    Example: phx schedule install --drill monthly

    Example: phx schedule install --watch
    """
    if watch:
        return _install_watch(out, envx, config_path, every, drill_every, at, scheduler)
    if drill_every is not None and every is not None:
        raise UsageError("--every is the backup's schedule; give the drill's schedule to --drill alone")
    kind = "backup" if drill_every is None else "drill"
    cfg = load_config(out, envx, config_path)
    result = schedule_lib.install(
        cfg,
        envx.env,
        envx.home,
        every=every if drill_every is None else drill_every,
        at=at,
        scheduler=scheduler,
        notice=lambda warning: out.notice(f"warning: {warning}"),
        kind=kind,
    )
    what = "the drill " if kind == "drill" else ""
    text = (
        f"installed {what}with {result.scheduler}: {result.spec.describe()}; next run "
        f"{result.next_due.isoformat(timespec='minutes')}; log {result.log}/{log_name(kind)}"
    )
    out.result(result.to_json(), text)
    return ExitStatus.OK


def _install_watch(
    out: Out,
    envx: Environment,
    config_path: str | None,
    every: str | None,
    drill_every: str | None,
    at: str | None,
    scheduler: str | None,
) -> ExitStatus:
    from phoenix_backup.schedule import service

    if every is not None or drill_every is not None or at is not None:
        raise UsageError("--watch runs all the time: leave out --every, --drill and --at")
    cfg = load_config(out, envx, config_path)
    if cfg.source is None:
        raise UsageError("the config has no file to point the service at; write one with `phx init`")
    for warning in schedule_lib.passphrase_warnings(cfg, envx.env):
        out.notice(f"warning: {warning}")
    chosen = scheduler or schedule_lib.detect(envx.env)
    path = service.install(cfg.source.resolve(), envx.env, envx.home, chosen)
    out.result(
        {"job": "watch", "scheduler": chosen, "file": str(path), "command": list(service.argv(cfg.source.resolve()))},
        f"installed `phx watch` as a {chosen} service ({path}); it starts now and with every session",
    )
    return ExitStatus.OK


@schedule.command(name="status")
@common
def status_cmd(out: Out, envx: Environment, config_path: str | None) -> ExitStatus:
    """Show which scheduler holds the backup (and drill) schedule and when each runs next.

    Example: phx schedule status
    """
    result = schedule_lib.status(envx.env, envx.home)
    drill = schedule_lib.status(envx.env, envx.home, "drill")
    lines = [_status_text(result, "backup")]
    if drill.installed:
        lines.append(_status_text(drill, "drill"))
    out.result({**result.to_json(), "drill": drill.to_json()}, "\n".join(lines), data=True)
    return ExitStatus.OK


def _status_text(result: schedule_lib.ScheduleStatus, kind: str) -> str:
    if not result.installed:
        text = f"no {kind} schedule is installed; run `phx schedule install`"
        for scheduler, details in result.inactive.items():
            state = details.get("active") if isinstance(details, dict) else None
            text += f"\n{scheduler} holds the {kind} job's files but does not run them ({state})"
        return text
    due = result.next_due.isoformat(timespec="minutes") if result.next_due else "unknown"
    what = result.spec.describe() if result.spec else "unknown schedule"
    prefix = "drill " if kind == "drill" else ""
    text = f"{prefix}installed with {', '.join(result.installed)}: {what}; next run {due}"
    if twice := result.twice(kind):
        text += f"\nwarning: {twice}"
    if result.last_log_line:
        text += f"\nlast {prefix}log line: {result.last_log_line}"
    return text


@schedule.command()
@click.option("--drill", is_flag=True, help="Remove only the restore-drill job; the backup schedule stays.")
@click.option("--watch", is_flag=True, help="Stop and remove only the `phx watch` service; the schedules stay.")
@common
def remove(out: Out, envx: Environment, config_path: str | None, drill: bool, watch: bool) -> ExitStatus:
    """Remove the backup and drill schedules (timers, crontab entries or launchd agents).

    Example: phx schedule remove --drill

    Example: phx schedule remove --watch
    """
    if watch:
        from phoenix_backup.schedule import service

        if drill:
            raise UsageError("give --drill or --watch, not both")
        gone = service.remove(envx.env, envx.home)
        text = f"removed the watch service from {', '.join(gone)}" if gone else "no watch service was installed"
        out.result({"watchRemoved": gone}, text)
        return ExitStatus.OK
    result = schedule_lib.remove(envx.env, envx.home, ("drill",) if drill else schedule_lib.KINDS)
    parts = []
    if result.removed:
        parts.append(f"removed the schedule from {', '.join(result.removed)}")
    if result.drill_removed:
        parts.append(f"removed the drill schedule from {', '.join(result.drill_removed)}")
    text = "\n".join(parts) or f"no {'drill ' if drill else ''}schedule was installed"
    out.result(result.to_json(), text)
    return ExitStatus.OK


@schedule.command()
@click.option("--drill", is_flag=True, help="Run a restore drill of the latest snapshot instead of a backup.")
@common
def run(out: Out, envx: Environment, config_path: str | None, drill: bool) -> ExitStatus:
    """Run one backup (or drill) as the scheduler does, logging to ~/.argentos/backup/logs/backup.log
    (drill.log); a failed drill exits 1, its report in ~/.argentos/backup/drills/.

    Example: phx schedule run --config ~/.argentos/backup.json
    """
    kind = "drill" if drill else "backup"
    log = RunLog(log_dir(envx.home), name=log_name(kind), secrets=known_secrets)
    # No terminal: notices and the result go to the log; the exit code tells the scheduler.
    envx.interactive = False
    envx.prompt = None
    envx.confirm = None
    envx.progress = Silent()
    envx.notice = lambda message: log.write(f"phx: {message}")
    # Held until the run ends, however it ends: `phx status` tells a run still going from a killed one.
    with holding(log.folder, log.name):
        log.write(f"scheduled {kind} starting (config {config_path or 'default'})")
        try:
            cfg = load_config(Out(False, False), envx, config_path)
        except PhoenixError as exc:
            # Without a config there is no notification setting either: the log and the state file
            # (which `phx status` reads) are the only places to say it.
            log.write(f"phx: error: {exc}")
            log.write(f"scheduled {kind} finished: exit {int(exc.exit_status)}")
            if kind == "backup":  # the state file is the last backup's
                write_state(
                    timestamp=time.time(),
                    backup_path="",
                    compression=False,
                    success=False,
                    snapshot_id=None,
                    snapshot_name=None,
                    error=redacted(str(exc)),
                    targets={},
                    scope="full",
                    path=state_path(envx.home),
                )
            return exc.exit_status
        try:
            status, doc, text = _run_job(kind, cfg, envx)
        except PhoenixError as exc:
            log.write(f"phx: error: {exc}")
            log.write(f"scheduled {kind} finished: exit {int(exc.exit_status)}")
            return exc.exit_status
        except Exception as exc:  # the log is the only place a scheduled run can say what happened
            log.write(f"phx: error: unexpected {type(exc).__name__}: {exc}")
            log.write(f"scheduled {kind} finished: exit {int(ExitStatus.FAILURE)}")
            return ExitStatus.FAILURE
        log.write(text, report=True)
        log.write(f"scheduled {kind} finished: exit {int(status)}")
        if out.as_json:
            out.result(doc, "")
        return status


def _run_job(kind: str, cfg: Config, envx: Environment) -> tuple[ExitStatus, dict[str, object], str]:
    """One scheduled backup or drill (of the latest snapshot): exit status, JSON and log text."""
    if kind == "drill":
        drilled = drill_op.drill(cfg, envx)
        return drilled.exit_status, drilled.to_json(), render_drill(drilled, False)
    result = backup_op.backup(cfg, envx)
    return result.exit_status, result.to_json(), render.backup(result, False)
