"""`phx status`."""

from __future__ import annotations

from datetime import datetime

from phoenix_backup.cli.app import Out, answer_option, cli, common, load_config
from phoenix_backup.errors import ExitStatus, shown, shown_each
from phoenix_backup.ops import status as status_op
from phoenix_backup.ops.context import Environment
from phoenix_backup.units import human_size


@cli.command()
@common
@answer_option
def status(out: Out, envx: Environment, config_path: str | None, answer_timeout: float) -> ExitStatus:
    """Show the last backup, its age, the next one due and each target's health.

    Exits 1 when the last backup failed or was partial (something it should hold was not saved,
    or a database was saved damaged), or when the last successful one is older than the schedule
    implies, so `phx status || alert` works in monitoring. Never asks for a passphrase.

    Example: phx status --json
    """
    cfg = load_config(out, envx, config_path)
    envx.answer_seconds = answer_timeout
    result = status_op.status(cfg, envx)
    out.result(result.to_json(), render(result), data=True)
    return result.exit_status


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    when = datetime.fromtimestamp(ts).astimezone().isoformat(timespec="minutes")
    return f"{when} ({status_op.human_age(now - ts)} ago)"


def render(r: status_op.StatusResult) -> str:
    state = r.state or {}
    lines = []
    if state:
        outcome = "ok" if state.get("success") else "PARTIAL" if state.get("partial") else "FAILED"
        snap = f", snapshot {shown(state.get('snapshotName'))}" if state.get("snapshotName") else ""
        lines.append(f"last backup:   {_ago(r.last_run, r.now)}, {outcome}{snap}")
        lines.append(f"last success:  {_ago(r.last_success, r.now)}")
    else:
        lines.append("last backup:   never")
    where = f"via {r.scheduler}" if r.scheduler else "not installed"
    due = r.next_due.isoformat(timespec="minutes") if r.next_due else "?"
    lines.append(f"schedule:      {r.spec.describe()} ({where}); next due {due}")
    for name, t in r.targets.items():
        parts = [f"last success {_ago(t.last_success, r.now)}"]
        if t.snapshots is not None:
            parts.append(f"{t.snapshots} snapshots")
        if t.stored is not None:
            parts.append(f"{human_size(t.stored)} stored")
        if t.dedup_ratio is not None and t.logical is not None:
            parts.append(f"{human_size(t.logical)} in snapshots (deduplication {t.dedup_ratio:.1f}x)")
        lines.append(f"target {name}: " + ", ".join(parts))
    lines += [f"warning: {shown(w)}" for w in r.warnings]
    if r.alert:
        lines.insert(0, f"warning: {shown(r.alert)}")
    return shown_each(lines)
