"""The snapshots a machine saw, kept beside its pin (repo/pins.py `observe`): what counts as lost,
what never does, and a pin file damaged there is one clear error."""

from __future__ import annotations

import errno
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from phoenix_backup import dirs
from phoenix_backup.errors import ConfigError
from phoenix_backup.repo.pins import FORGOT_KEPT, SEEN_KEPT, Pins

REPO = "ab" * 16
KEY = ":".join(["1234"] * 8)
AT = "/backups/repo"


def _pins(tmp_path: Path) -> Pins:
    pins = Pins(tmp_path / "pins.json")
    pins.record(REPO, AT, KEY, format=4, first=True)
    return pins


def _t(hour: int) -> str:
    return f"2026-03-15T{hour:02d}:00:00+00:00"


def gone(_sid: str) -> bool:
    return False


def test_a_snapshot_written_while_the_listing_was_taken_is_not_lost(tmp_path: Path) -> None:
    """A backup of this machine writes and remembers snapshot c after a listing was taken (a
    `phx list` beside a scheduled backup): it is looked at again, and found."""
    pins = _pins(tmp_path)
    assert pins.observe(REPO, AT, {"a": _t(1), "b": _t(2)}, gone) == []
    pins.remember(REPO, AT, "c", _t(3))
    assert pins.observe(REPO, AT, {"a": _t(1), "b": _t(2)}, lambda sid: sid == "c") == []
    assert pins.observe(REPO, AT, {"a": _t(1), "b": _t(2)}, gone) == [("c", _t(3))]


def test_older_snapshots_gone_and_this_machines_own_forgets_are_not_lost(tmp_path: Path) -> None:
    pins = _pins(tmp_path)
    pins.observe(REPO, AT, {"a": _t(1), "b": _t(2), "c": _t(3)}, gone)
    assert pins.observe(REPO, AT, {"b": _t(2), "c": _t(3)}, gone) == []  # forgotten elsewhere
    pins.forgetting(REPO, ["c"])
    assert pins.observe(REPO, AT, {"b": _t(2)}, gone) == []
    # Another location of the same repository keeps its own record.
    assert pins.observe(REPO, "s3:bucket/x", {}, gone) == []


def test_lost_stays_after_a_backup_on_top_until_back_or_trusted(tmp_path: Path) -> None:
    pins = _pins(tmp_path)
    pins.observe(REPO, AT, {"a": _t(1), "b": _t(2)}, gone)
    assert pins.observe(REPO, AT, {"a": _t(1)}, gone) == [("b", _t(2))]
    pins.remember(REPO, AT, "d", _t(4))
    assert pins.observe(REPO, AT, {"a": _t(1), "d": _t(4)}, gone) == [("b", _t(2))]
    assert pins.observe(REPO, AT, {"a": _t(1), "b": _t(2), "d": _t(4)}, gone) == []  # put forward again
    assert pins.observe(REPO, AT, {"a": _t(1)}, gone) == [("d", _t(4)), ("b", _t(2))]
    pins.record(REPO, AT, KEY, format=4, retrust=True)
    assert pins.observe(REPO, AT, {"a": _t(1)}, gone) == []


def test_the_record_is_bounded(tmp_path: Path) -> None:
    pins = _pins(tmp_path)
    pins.observe(REPO, AT, {f"s{h}": _t(h) for h in range(24)}, gone)
    pin = pins.get(REPO)
    assert pin is not None and len(pin.seen[AT]) == SEEN_KEPT and pin.seen[AT][0] == ("s23", _t(23))


@pytest.mark.parametrize(
    "snapshots", ['{"x": {"seen": [["a"]]}}', '{"x": {"seen": [["a", "not a time"]]}}', '["x"]', '{"x": 1}']
)
def test_a_damaged_record_is_one_clear_error(tmp_path: Path, snapshots: str) -> None:
    path = tmp_path / "pins.json"
    path.write_text(
        f'{{"version": 1, "repositories": {{"{REPO}": {{"fingerprint": "{KEY}", "snapshots": {snapshots}}}}}}}'
    )
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="is damaged"):
        Pins(path).get(REPO)


def test_a_forget_of_more_than_the_forgot_record_holds_is_no_loss(tmp_path: Path) -> None:
    """`phx forget NEWEST a b c ...` (a runaway loop's snapshots, named on the command line) forgets
    them one by one: the newest, the first one named, falls out of the record of ids this machine
    forgot before the run ends, and its absence must still not read as a rollback (that would stop
    every later retention)."""
    pins = _pins(tmp_path)
    times = {f"s{i:03d}": f"2026-03-15T10:{i // 60:02d}:{i % 60:02d}+00:00" for i in range(100)}
    pins.observe(REPO, AT, times, gone)
    doomed = sorted(times, reverse=True)[: FORGOT_KEPT + 10]  # newest first, as named
    for sid in doomed:
        pins.forgetting(REPO, [sid])  # Repository.delete_snapshot: one id at a time
    left = {sid: t for sid, t in times.items() if sid not in doomed}
    assert pins.observe(REPO, AT, left, gone) == []


def test_a_snapshot_dated_ahead_of_this_clock_is_neither_the_newest_seen_nor_lost(tmp_path: Path) -> None:
    """Another machine's clock is a day ahead: its snapshot, the newest by date though written
    first, is forgotten there (the retention notice says to). That is no rollback here; and an
    older copy of the storage put back that still holds it is one."""
    ahead = (datetime.now(UTC) + timedelta(days=1)).isoformat(timespec="seconds")
    pins = _pins(tmp_path)
    pins.observe(REPO, AT, {"a": _t(1), "f": ahead, "b": _t(2)}, gone)
    assert pins.observe(REPO, AT, {"a": _t(1), "b": _t(2)}, gone) == []  # forgotten on its machine
    pins.observe(REPO, AT, {"a": _t(1), "f": ahead, "b": _t(2)}, gone)
    assert pins.observe(REPO, AT, {"a": _t(1), "f": ahead}, gone) == [("b", _t(2))]  # rolled back


def test_a_data_dir_that_cannot_be_written_still_checks_and_never_fails_a_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The home disk is full (or mounted read-only on a recovery boot): a listing or a restore
    must still run (before the snapshots seen were recorded, they only read the pin file). What
    was recorded is still compared, and the reason nothing more is recorded is kept to be said."""
    pins = _pins(tmp_path)
    pins.observe(REPO, AT, {"a": _t(1), "b": _t(2)}, gone)
    before = (tmp_path / "pins.json").read_bytes()

    def read_only(*_args: object, **_kwargs: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(dirs.tempfile, "mkstemp", read_only)  # the temp file of every rewrite cannot be made
    assert pins.observe(REPO, AT, {"a": _t(1), "c": _t(3)}, gone) == []
    pins.remember(REPO, AT, "d", _t(4))
    assert pins.observe(REPO, AT, {"a": _t(1)}, gone) == [("b", _t(2))]  # b: recorded before
    assert (tmp_path / "pins.json").read_bytes() == before
    assert pins.unwritable is not None and "cannot write the pin file" in pins.unwritable
    # A forget is refused instead: its ids unrecorded, their absence would later look like a loss.
    with pytest.raises(ConfigError, match="cannot write the pin file"):
        pins.forgetting(REPO, ["a"])
