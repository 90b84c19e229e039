"""Phoenix: backup and restore for AI agent workspaces.

The Python API is the product; the `phx` command is a thin layer over it. Every use case takes a
validated `Config` and an `Environment` (environment variables, whether a person can be asked,
where notices go) and returns a typed result object::

    from phoenix_backup import Environment, backup, find_config_path, load_config, restore

    env = Environment()
    cfg = load_config(find_config_path())
    result = backup(cfg, env, tags=("nightly",))
    print(result.id, result.added, result.exit_status)
    restore(cfg, env, ref=result.id, to=Path("/tmp/check"))

Errors are `phoenix_backup.errors.PhoenixError` subclasses whose message names cause and fix.
"""

import importlib
from typing import TYPE_CHECKING, Any

from phoenix_backup._version import __version__

if TYPE_CHECKING:
    from phoenix_backup.config import Config, find_config_path, load_config, parse_config
    from phoenix_backup.ops.backup import BackupResult, backup
    from phoenix_backup.ops.context import Environment
    from phoenix_backup.ops.init import InitResult, init
    from phoenix_backup.ops.list import SnapshotSummary, list_snapshots
    from phoenix_backup.ops.restore import RestoreResult, restore
    from phoenix_backup.ops.unlock import unlock
    from phoenix_backup.ops.verify import verify
    from phoenix_backup.repo.checker import VerifyResult

# The API's names are imported on first use (PEP 562), so `phx backup` does not load the restore
# and verify code, nor `phx list` the backup code.
_API = {
    "phoenix_backup.config": ("Config", "find_config_path", "load_config", "parse_config"),
    "phoenix_backup.ops.backup": ("BackupResult", "backup"),
    "phoenix_backup.ops.context": ("Environment",),
    "phoenix_backup.ops.init": ("InitResult", "init"),
    "phoenix_backup.ops.list": ("SnapshotSummary", "list_snapshots"),
    "phoenix_backup.ops.unlock": ("unlock",),
    "phoenix_backup.ops.restore": ("RestoreResult", "restore"),
    "phoenix_backup.ops.verify": ("verify",),
    "phoenix_backup.repo.checker": ("VerifyResult",),
}
_WHERE = {name: module for module, names in _API.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'phoenix_backup' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "BackupResult",
    "Config",
    "Environment",
    "InitResult",
    "RestoreResult",
    "SnapshotSummary",
    "VerifyResult",
    "__version__",
    "backup",
    "find_config_path",
    "init",
    "list_snapshots",
    "load_config",
    "parse_config",
    "restore",
    "unlock",
    "verify",
]
