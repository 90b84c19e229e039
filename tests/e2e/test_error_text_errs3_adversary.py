"""The adversary of errs3: a restore's destination (`--to`, a path with a newline) was put raw into
the result line and the dry run's plan line, so that the line broke in two; now escaped (`shown`)
like the snapshot's name beside it."""

from __future__ import annotations

from e2e_support import Sandbox


def test_a_restore_destination_with_a_newline_stays_on_its_line(backed_up: Sandbox) -> None:
    sb = backed_up
    to = sb.root / "to\nwhere"
    plan = sb.phx("restore", "--latest", "--to", to, "--dry-run")
    assert "to\\nwhere: " in plan.out and "\nwhere" not in plan.out, plan.out
    done = sb.phx("restore", "--latest", "--to", to, "--yes")
    assert "to\\nwhere" in done.out and "\nwhere" not in done.out, done.out
    assert (to / "workspace" / "SOUL.md").exists() or any(to.iterdir())
