"""Every field of a full config given every kind of wrong value (red36): parse_config either takes
it or raises one ConfigError naming the field, never another exception; a NUL character is refused
in every string field, naming it (before, it reached the operating system as an internal error)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from phoenix_backup.config import parse_config
from phoenix_backup.errors import ConfigError

FULL: dict[str, Any] = {
    "workspace": "/w",
    "backupDir": "/b",
    "targets": {
        "local": {"enabled": True, "path": "/b", "appendOnly": False},
        "git": {"enabled": True, "repo": "/g", "branch": "main", "autoCommit": True, "appendOnly": False},
        "s3": {
            "enabled": True,
            "bucket": "abc",
            "prefix": "p",
            "endpoint": "http://x",
            "region": "r",
            "accessKeyId": "a",
            "secretAccessKey": "b",
            "appendOnly": False,
            "storageClass": "STANDARD",
            "objectLock": {"mode": "governance", "days": 3},
        },
        "r2": {
            "enabled": True,
            "bucket": "abd",
            "prefix": "p",
            "accountId": "0" * 32,
            "region": "r",
            "accessKeyId": "a",
            "secretAccessKey": "b",
            "appendOnly": False,
        },
    },
    "include": ["a"],
    "exclude": ["b"],
    "compression": {"enabled": True, "algorithm": "zstd", "level": 3},
    "retention": {
        "hourly": 1,
        "daily": 1,
        "weekly": 1,
        "monthly": 1,
        "yearly": 1,
        "last": 1,
        "within": "1d",
        "keepSafetyDays": 1,
        "prune": True,
        "capturesWithin": "1d",
        "capturesHourlyWithin": "7d",
    },
    "notifications": {"enabled": True, "onSuccess": "silent", "onFailure": "alert", "urls": ["ntfy://x"]},
    "encryption": {
        "enabled": True,
        "method": "passphrase",
        "keyId": "k",
        "identityFile": "/x",
        "passphraseEnv": "X",
        "passphraseCommand": "c",
        "writeOnly": False,
    },
    "databases": {
        "sqlite": ["a.db"],
        "postgres": [{"name": "p", "host": "h", "port": 5, "database": "d", "user": "u", "passwordEnv": "P"}],
        "redis": [{"name": "r", "url": "redis://x", "match": "*"}],
        "integrityCheckEvery": "1h",
    },
    "components": {"identity": ["a"], "memory": ["b"], "config": ["c"]},
    "gateway": {"stop": "s", "start": "s", "timeoutSeconds": 5},
    "hooks": {"preBackup": "s", "postBackup": "s", "timeoutSeconds": 5},
    "schedule": {"every": "daily", "at": "02:00"},
}
WRONG: list[object] = [
    None, True, 0, -1, 1.5, 2**63, 2**200, "", "x", "1x", "-1d", "999999999999y", "a\nb", "\x1b[31m",
    "x" * 5000, "../..", "~no-such-user-red36/x", "$NOPE", "${X", "${}", [], [None], [1], {}, {"a": 1},
]  # fmt: skip
ENV = {"HOME": "/home/agent", "X": "1"}


def _fields(node: dict[str, Any], path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], object]]:
    for key, value in node.items():
        here = (*path, key)
        yield here, value
        if isinstance(value, dict):
            yield from _fields(value, here)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for index, item in enumerate(value):
                yield from _fields(item, (*here, index))


def _with(path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    data = copy.deepcopy(FULL)
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def _name(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if i else k) for i, k in enumerate(path))


FIELDS = list(_fields(FULL))


def test_the_full_config_is_valid() -> None:
    parse_config(FULL, env=ENV)


@pytest.mark.parametrize(("path", "_value"), FIELDS, ids=[_name(p) for p, _v in FIELDS])
def test_a_wrong_value_is_taken_or_one_config_error_naming_the_field(
    path: tuple[str | int, ...], _value: object
) -> None:
    for wrong in WRONG:
        try:
            parse_config(_with(path, wrong), env=ENV)
        except ConfigError as error:
            assert str(path[-1]) in str(error) or _name(path) in str(error), (wrong, str(error))


@pytest.mark.parametrize(
    "path", [p for p, v in FIELDS if isinstance(v, str)], ids=[_name(p) for p, v in FIELDS if isinstance(v, str)]
)
def test_a_nul_in_any_string_field_is_refused_naming_it(path: tuple[str | int, ...]) -> None:
    with pytest.raises(ConfigError, match="NUL") as caught:
        parse_config(_with(path, "a\x00b"), env=ENV)
    assert _name(path) in str(caught.value)


@pytest.mark.parametrize("path", [(), ("targets",), ("retention",), ("databases", "postgres", 0)])
def test_a_nul_in_a_key_is_refused_naming_it(path: tuple[str | int, ...]) -> None:
    """A key "daily\\u0000" was "unknown key" with the raw NUL in the message (shown as nothing or a
    space: 'unknown key "retention.daily "; did you mean "retention.daily"?')."""
    data = copy.deepcopy(FULL)
    node: Any = data
    for key in path:
        node = node[key]
    node["daily\x00"] = 1
    with pytest.raises(ConfigError, match="NUL") as caught:
        parse_config(data, env=ENV)
    assert "\x00" not in str(caught.value) and "daily\\u0000" in str(caught.value)


def test_a_tilde_user_that_does_not_exist_is_refused_also_when_a_variable_puts_it_first() -> None:
    """`"workspace": "$WS/ws"` with WS=~no-such-user: the variable is expanded first, then the
    leading ~ (no such user, kept as written): the workspace was a folder "~no-such-user" beside the
    config, while the same text written out was refused (red36)."""
    env = {**ENV, "WS": "~no-such-user-advred36"}
    with pytest.raises(ConfigError, match="workspace starts with ~no-such-user-advred36 \\(as \\$WS/ws expands\\)"):
        parse_config({**FULL, "workspace": "$WS/ws"}, env=env)
    env = {**ENV, "WS": "~root"}  # a user that exists: taken, as before
    assert str(parse_config({**FULL, "workspace": "$WS/ws"}, env=env).workspace).endswith("/ws")
