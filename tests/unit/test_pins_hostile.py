"""The pin file against damage and careless setups: whatever its bytes, whatever folder it is
asked to live in, Phoenix ends in one clear error (never a traceback, never a silent first use),
and two processes that pin the same repository at once cannot both win."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phoenix_backup.dirs import data_dir
from phoenix_backup.errors import ConfigError, KeyChanged
from phoenix_backup.repo.pins import Pins

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
BUDGET = settings(max_examples=5_000 if HEAVY else 100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REPO = "ab" * 16
KEY = ":".join(["1234"] * 8)
OTHER = ":".join(["5678"] * 8)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=12,
)


@pytest.mark.parametrize(
    "content",
    [
        f'{{"version": 1, "repositories": {{"{REPO}": {{"fingerprint": "x", "format": 1e400}}}}}}',
        f'{{"version": 1, "repositories": {{"{REPO}": {{"fingerprint": "x", "format": NaN}}}}}}',
        "[" * 100_000,
        '{"version": 1, "repositories": []}',
        f'{{"version": 1, "repositories": {{"{REPO}": "x"}}}}',
        f'{{"version": 1, "repositories": {{"{REPO}": {{"fingerprint": "x", "locations": 5}}}}}}',
    ],
)
def test_a_damaged_pin_file_is_one_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "pins.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=r"pin file .* is damaged"):
        Pins(path).get(REPO)


@BUDGET
@given(entry=json_values)
def test_any_pin_entry_reads_or_is_one_clear_error(tmp_path_factory: pytest.TempPathFactory, entry: object) -> None:
    path = tmp_path_factory.mktemp("pins") / "pins.json"
    path.write_text(json.dumps({"version": 1, "repositories": {REPO: entry}}))
    with contextlib.suppress(ConfigError):
        Pins(path).get(REPO)


def test_a_pin_file_that_cannot_be_written_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".pins.lock").mkdir()  # the lock file cannot be opened for writing
    # The file that failed is named: the lock, not pins.json, which was never touched.
    lock = re.escape(str(tmp_path / "data" / ".pins.lock"))
    with pytest.raises(ConfigError, match=rf"cannot write the pin file's lock {lock} .*PHX_DATA_DIR"):
        Pins(tmp_path / "data" / "pins.json").record(REPO, "/repo", KEY, format=2)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"cannot write the pin file's folder .*PHX_DATA_DIR"):
        Pins(tmp_path / "file" / "sub" / "pins.json").record(REPO, "/repo", KEY, format=2)


def test_two_first_uses_at_once_cannot_both_pin(tmp_path: Path) -> None:
    """Two processes open the repository for the first time; between their reads, its key
    changed. The second must not silently replace the pin the first one made."""
    first, second = Pins(tmp_path / "pins.json"), Pins(tmp_path / "pins.json")
    assert first.get(REPO) is None and second.get(REPO) is None  # both see a first use
    first.record(REPO, "/repo", KEY, format=2, first=True)
    with pytest.raises(KeyChanged, match="at the same time"):
        second.record(REPO, "/repo", OTHER, format=2, first=True)
    pin = Pins(tmp_path / "pins.json").get(REPO)
    assert pin is not None and pin.fingerprint == KEY
    second.record(REPO, "/repo", KEY, format=2, first=True)  # the same key: fine
    assert Pins(tmp_path / "pins.json").get(REPO) == pin


def test_the_data_dir_is_never_relative(tmp_path: Path) -> None:
    assert data_dir({"XDG_DATA_HOME": "relative", "HOME": str(tmp_path)}).is_absolute()  # ignored (XDG spec)
    assert data_dir({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "phoenix"
    with pytest.raises(ConfigError, match=r"not an absolute path.*PHX_DATA_DIR"):
        data_dir({"PHX_DATA_DIR": "somewhere"})


@pytest.mark.parametrize(("owner", "mode"), [(65534, 0o600), (None, 0o666), (None, 0o620)])
def test_a_pin_file_someone_else_can_write_is_not_trusted(tmp_path: Path, owner: int | None, mode: int) -> None:
    """Whoever can write the pin file decides which repository keys are trusted: another user's
    file (a shared data dir, say) pinning their own key is refused, not used."""
    pins = Pins(tmp_path / "pins.json")
    pins.record(REPO, "/repo", KEY, format=2)
    if owner is not None:
        if os.geteuid() != 0:
            pytest.skip("only root can give a file to another user")
        os.chown(pins.path, owner, -1)
    pins.path.chmod(mode)
    with pytest.raises(ConfigError, match="belongs to another user or others can write it"):
        pins.get(REPO)
