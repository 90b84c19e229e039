"""A hand-edited or damaged state file (`~/.argentos/backup/.last-backup`) fed to `phx status` and
`phx doctor`: a field of a type Phoenix never writes (`failedParts` not a list, `lastSuccess` a
number), a timestamp no clock can show, a file that is not UTF-8 or not JSON. Each crashed one
or both ("unexpected internal error ... a bug in Phoenix"); each is now one line naming the state
file and what is wrong with it, and the rest of the report goes on."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from e2e_support import Result, Sandbox

from phoenix_backup.state import state_path

pytestmark = pytest.mark.phx_in_process

PARTIAL = {"success": False, "partial": True, "scope": "identity"}  # every reader of failedParts runs
FIELDS: list[tuple[str, Any]] = [
    ("failedParts", 5),
    ("failedParts", "postgres/main"),
    ("lastFull", {"success": False, "partial": True, "failedParts": 5}),
    ("timestamp", 10**400),
    ("timestamp", 1e308),
    ("timestamp", -1e20),
    ("lastSuccess", 5),
    ("lastSuccess", {"timestamp": 10**30}),
    ("targets", [1]),
    ("targetsLastSuccess", {"local": "yesterday"}),
    ("targetsLastSuccess", {"local": {"timestamp": 10**30}}),
]


def _one_line(sb: Sandbox, needle: str) -> None:
    for args, code in ((("status",), 1), (("doctor",), None)):
        res = sb.phx_here(*args, code=1) if code else _doctor(sb)
        text = res.out + res.err
        assert "unexpected internal error" not in text, text
        lines = [line for line in text.splitlines() if needle in line]
        assert len(lines) == 1 and str(state_path(sb.home)) in lines[0], text
    doc = sb.phx_here("status", "--json", code=1).json()
    assert needle in json.dumps(doc), doc


def _doctor(sb: Sandbox) -> Result:
    """`phx doctor`, whose exit code depends on what the damage hides (a last success or not)."""
    try:
        return sb.phx_here("doctor")
    except AssertionError as exc:
        if "expected exit 0" not in str(exc):
            raise
        return sb.phx_here("doctor", code=1)


def test_a_field_of_the_wrong_type_or_range_is_one_line(backed_up: Sandbox) -> None:
    sb = backed_up
    path = state_path(sb.home)
    good = json.loads(path.read_text())
    for key, value in FIELDS:
        path.write_text(json.dumps({**good, **PARTIAL, key: value}))
        _one_line(sb, f"({key}")


@pytest.mark.parametrize(("raw", "why"), [(b'\xff{"timestamp": 1}', "not UTF-8"), (b'{"timestamp": 1', "not JSON")])
def test_a_state_file_that_cannot_be_read_is_one_line(backed_up: Sandbox, raw: bytes, why: str) -> None:
    state_path(backed_up.home).write_bytes(raw)
    _one_line(backed_up, f"cannot be read ({why})")


def test_a_drill_report_whose_errors_are_not_a_list_is_said(backed_up: Sandbox) -> None:
    """A failed drill's report (`~/.argentos/backup/drills/*.json`) whose `errors` is a number:
    `phx doctor` stopped with "unexpected internal error (TypeError ...)"; it now says the drill
    failed."""
    folder = backed_up.home / ".argentos/backup/drills"
    folder.mkdir(parents=True, exist_ok=True)
    report = {"ok": False, "started": "2026-12-01T02:00:00+00:00", "name": "drill-1", "errors": 5}
    (folder / "20261201T020000Z.json").write_text(json.dumps(report))
    res = backed_up.phx_here("doctor", code=1)
    assert "last drill: last drill (drill-1)" in res.out and "FAILED with some error(s)" in res.out, res


def test_a_timestamp_in_the_last_hours_of_year_9999_is_one_line_east_of_utc(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timestamp below year 10000 in UTC passed the check, but `phx status` shows it in local
    time: at UTC+14 (Kiribati) it is in year 10000, and status stopped with 'unexpected internal
    error (ValueError: year 10000 is out of range)'. A timestamp of the last day of 9999 is now
    out of range too, said in the one line."""
    sb = backed_up
    path = state_path(sb.home)
    good = json.loads(path.read_text())
    monkeypatch.setenv("TZ", "KIR-14")  # POSIX: 14 hours east of UTC, no time zone data needed
    time.tzset()
    try:
        for key, value in (("timestamp", 253402300000), ("lastSuccess", {"timestamp": 253402300000})):
            path.write_text(json.dumps({**good, **PARTIAL, key: value}))
            _one_line(sb, f"({key}")
        path.write_text(json.dumps({**good, "targetsLastSuccess": {"local": {"timestamp": 253402300000}}}))
        res = sb.phx_here("status")
        assert "(targetsLastSuccess.local.timestamp)" in res.out + res.err, res
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def _strict(text: str) -> Any:
    """The document as a JSON reader other than Python's reads it: no NaN, no Infinity."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is no JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("targets", '{"local": {"ok": true, "seconds": NaN}}'),
        ("lastFailure", '{"timestamp": 5, "took": Infinity}'),
        ("failedParts", '[{"path": "a", "error": "b", "x": ' + "[" * 900 + "]" * 900 + "}]"),
    ],
)
def test_a_value_no_json_reader_takes_is_one_line(backed_up: Sandbox, key: str, value: str) -> None:
    """Fields `phx status --json` passes on as they are (`targets`, `failedParts`, extra keys of
    `lastFailure`) holding a NaN or Infinity (Python's JSON reads them) went out as such, which no
    other JSON reader (jq, a monitoring agent) takes; nested 900 levels they stopped it with
    'unexpected internal error (RecursionError)'. Such a field is now left out, said in the one line."""
    sb = backed_up
    path = state_path(sb.home)
    good = json.dumps({**json.loads(path.read_text()), **PARTIAL})
    path.write_text(f'{good[:-1]}, "{key}": {value}}}')
    _one_line(sb, f"({key}")
    res = sb.phx_here("status", "--json", code=1)
    assert "not saved or are damaged" in json.dumps(_strict(res.out))
