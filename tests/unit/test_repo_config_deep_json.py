"""A repository config nested 50,000 deep or holding a 5,000-digit number is one error naming it
and the fix, not json.loads's advice to call sys.set_int_max_str_digits()."""

from __future__ import annotations

import pytest

from phoenix_backup.errors import CorruptObject
from phoenix_backup.repo.repository import RepoConfig

PLANTED = {
    "nested 50,000 deep": (b"[" * 50_000 + b"]" * 50_000, "nested too deep"),
    "a 5,000-digit number": (b'{"version":' + b"1" * 5_000 + b"}", "a number too long to read"),
}


@pytest.mark.parametrize("kind", PLANTED)
def test_a_config_nested_deep_or_with_a_long_number_names_the_fix(kind: str) -> None:
    raw, why = PLANTED[kind]
    with pytest.raises(CorruptObject) as caught:
        RepoConfig.from_bytes(raw, "/r")
    text = str(caught.value)
    assert f"the repository config at /r is malformed ({why}); restore the config object" in text, text
    assert "sys.set_int_max_str_digits" not in text and "recursion" not in text, text
