"""The Python API: every documented name is importable from `phoenix_backup` (they load on first
use), and a name it does not have is an AttributeError, as for any module."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import phoenix_backup


@pytest.mark.parametrize("name", phoenix_backup.__all__)
def test_every_api_name_resolves(name: str) -> None:
    value = getattr(phoenix_backup, name)
    assert value is not None
    if name != "__version__":
        assert getattr(importlib.import_module(value.__module__), name) is value


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        phoenix_backup.nothing_here  # noqa: B018
    with pytest.raises(ImportError):
        exec("from phoenix_backup import nothing_here")


def test_a_backup_command_does_not_load_restore_code() -> None:
    code = (
        "import sys, phoenix_backup.cli.app, phoenix_backup.cli.cmd_backup; "
        "print('phoenix_backup.ops.restore' in sys.modules, 'phoenix_backup.ops.verify' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
