"""`phx doctor`."""

from __future__ import annotations

from phoenix_backup.cli.app import Out, answer_option, cli, common
from phoenix_backup.errors import ExitStatus, shown, shown_each
from phoenix_backup.ops import doctor as doctor_op
from phoenix_backup.ops.context import Environment

SYMBOLS = {"ok": "✓", "fail": "✗", "warn": "!"}


@cli.command()
@common
@answer_option
def doctor(out: Out, envx: Environment, config_path: str | None, answer_timeout: float) -> ExitStatus:
    """Check that backups and restores can work here: config, paths, disk space, tools,
    credentials, targets (write, read back, delete a probe), locks, last backup and last drill.

    One line per check: ✓ ok, ✗ a problem with its fix (exit 1), ! advice.

    Example: phx doctor
    """
    envx.answer_seconds = answer_timeout
    result = doctor_op.doctor(envx, config_path)
    out.result(result.to_json(), render(result), data=True)
    return result.exit_status


def render(r: doctor_op.DoctorResult) -> str:
    lines = []
    for c in r.checks:
        # One line a check: a name's newline, a server's or a program's words (a PostgreSQL error,
        # pg_dump's version line) shown escaped, never a line that looks like another check.
        line = f"{SYMBOLS[c.status]} {shown(c.name)}: {shown(c.message)}"
        if c.fix and c.status != "ok":
            line += f" — fix: {shown(c.fix)}"
        lines.append(line)
    failed = sum(1 for c in r.checks if c.status == "fail")
    lines.append("all checks passed" if not failed else f"{failed} check(s) failed")
    return shown_each(lines)
