"""Bad input in what `phx` says, the leftovers (task esc4):

1. Every plain-text result joins its lines with `errors.shown_each`: a backup's per-target
   `FAILED: …` line (a target's path or a server's message), `retention not applied …`, `forgot …
   because …`, `phx forget`'s and `phx prune`'s target lines, a snapshot's name in an empty `phx ls`,
   a key slot's label: each put a name's newline or escape raw on the terminal.
2. `shown` escapes Unicode's bidirectional controls and line separators (`\\u202e`): a file named
   with RIGHT-TO-LEFT OVERRIDE showed, in `phx ls`, `diff` and `restore --dry-run`, as another name
   (the "Trojan Source" trick). JSON carries the exact name.
"""

from __future__ import annotations

import json
import re

from e2e_support import Sandbox

from phoenix_backup.cli import render
from phoenix_backup.cli.app import stderr_line
from phoenix_backup.errors import shown

# A newline, an ANSI "clear screen", a RIGHT-TO-LEFT OVERRIDE.
HOSTILE = "bad\n\x1b[2J\u202eend"
ESCAPED = "bad\\n\\x1b[2J\\u202eend"
# Any control character but the newline that ends a line, and what reorders or breaks a line.
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
REORDERING = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c\u2028\u2029"


def _lines(text: str) -> list[str]:
    """The lines of `text`: none holds a control character, none is the rest of a broken one."""
    assert CONTROL.search(text) is None, repr(text)
    lines = text.splitlines()
    assert not any(line.startswith("end") for line in lines), text
    return lines


def test_bidi_controls_and_line_separators_are_escaped_once() -> None:
    """Before: `shown` passed each of them as it was (none is a control character)."""
    for c in REORDERING:
        assert shown(f"a{c}b") == f"a\\u{ord(c):04x}b", repr(c)
        assert shown(shown(f"a{c}b")) == shown(f"a{c}b")  # what it escaped is plain text
        assert stderr_line("error", f"no {c}", as_json=False) == f"phx: error: no \\u{ord(c):04x}"
        assert json.loads(stderr_line("error", f"no {c}", as_json=True))["message"] == f"no {c}"  # exact
    assert shown("日本語 émoji 👩‍👩‍👧 Ω") == "日本語 émoji 👩‍👩‍👧 Ω"  # printable text (and a joiner) as it is
    from phoenix_backup.errors import shown_each

    assert shown_each(["one", f"two{HOSTILE}", "three"]) == f"one\ntwo{ESCAPED}\nthree"


def test_a_name_with_a_right_to_left_override_shows_its_real_characters(backed_up: Sandbox) -> None:
    """`report\\u202egpj.exe`, shown raw, reads `reportexe.jpg` on a terminal: in `ls`, `diff` and a
    restore's plan it is now `report\\u202egpj.exe`; `--json` holds the exact name."""
    sb = backed_up
    first = sb.snapshots()[0]
    name = "report\u202egpj.exe"
    (sb.workspace / name).write_bytes(b"x\n")
    second = sb.backup()
    ls = _lines(sb.phx_here("ls", second["id"], "workspace").out)
    assert any(line.endswith("workspace/report\\u202egpj.exe") for line in ls), ls
    entries = sb.phx_here("ls", second["id"], "workspace", "--json").json()["entries"]
    assert f"workspace/{name}" in [e["path"] for e in entries]
    diff = _lines(sb.phx_here("diff", first["id"], second["id"]).out)
    assert any("added    workspace/report\\u202egpj.exe" in line for line in diff), diff
    plan = sb.phx_here("restore", "--latest", "--to", sb.root / "dest", "--path", name, "--dry-run").out
    assert any(line.startswith("create") and line.endswith("/workspace/report\\u202egpj.exe") for line in _lines(plan))


def test_a_failed_targets_line_stays_on_its_line(sandbox: Sandbox) -> None:
    """A Git target whose folder's name holds a newline and escapes is missing: its error names it.
    Before: `target git: FAILED: there is no Git repository at …/gbad` then `end.git; create it …`
    a line of its own, the ESC raw, in `phx backup`, `phx forget --dry-run` and `phx prune --dry-run`."""
    sb = sandbox
    sb.env["PHX_DATA_DIR"] = str(sb.root / "data")
    git = {"enabled": True, "repo": str(sb.root / f"g{HOSTILE}.git"), "branch": "main"}
    sb.write_config(targets={"local": {"enabled": True}, "git": git})
    said = f"target git: FAILED: there is no Git repository at {sb.root}/g{ESCAPED}.git; create it"
    for args in (["backup"], ["forget", "--dry-run"], ["prune", "--dry-run"]):
        res = sb.phx(*args, check=3)
        assert any(line.startswith(said) or line.startswith(f"  {said}") for line in _lines(res.out)), res
        _lines(res.err)


def test_a_backups_retention_lines_stay_on_their_lines() -> None:
    """The lines of a backup's retention (a snapshot forgotten and why, a target whose retention runs
    elsewhere, a failed target, a snapshot's name): before, each carried a name's newline raw."""
    from phoenix_backup.ops.backup import BackupResult
    from phoenix_backup.ops.prune import RetentionOutcome
    from phoenix_backup.state import TargetOutcome

    result = BackupResult(
        id="0123456789abcdef",
        name=f"n{HOSTILE}",
        time="2026-12-06T00:00:00+00:00",
        scope="full",
        files=1,
        size=1,
        added=1,
        files_read=1,
        databases=[],
        targets={"local": TargetOutcome(True), "git": TargetOutcome(False, f"e{HOSTILE}")},
        retention=RetentionOutcome(
            removed={"local": [{"id": "fedcba9876543210", "name": f"s{HOSTILE}", "why": f"w{HOSTILE}"}]},
            elsewhere={"s3": f"r{HOSTILE}"},
        ),
    )
    lines = _lines(render.backup(result, verbose=False))
    assert f"  target git: FAILED: e{ESCAPED}" in lines, lines
    assert f"  forgot fedcba98 (s{ESCAPED}) on local: w{ESCAPED}" in lines, lines
    assert f"  retention not applied: r{ESCAPED}" in lines, lines
