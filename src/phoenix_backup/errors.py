"""Every error Phoenix reports, each with its exit code and a one-line message naming cause and fix.

The CLI maps these to exit codes in one place (`cli.main`); the Python API raises them as they are.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """The exit codes of `phx`, a scripting contract (README, "Exit codes")."""

    OK = 0
    FAILURE = 1
    USAGE = 2  # bad usage or bad config
    PARTIAL = 3  # some part failed (a file unreadable, a target down), the rest was done


class PhoenixError(Exception):
    """Base class: `str(error)` is one sentence naming the cause and the fix."""

    exit_status: ExitStatus = ExitStatus.FAILURE


class UsageError(PhoenixError):
    exit_status = ExitStatus.USAGE


class ConfigError(PhoenixError):
    """The config file is missing, unreadable or invalid."""

    exit_status = ExitStatus.USAGE


class ConfirmationRequired(PhoenixError):
    """An action that overwrites data needs `--yes` when there is no terminal to ask on."""

    exit_status = ExitStatus.USAGE


class RepositoryError(PhoenixError):
    """The repository cannot be used as asked."""


class RepositoryNotFound(RepositoryError):
    pass


class RepositoryExists(RepositoryError):
    pass


class UnsupportedFormat(RepositoryError):
    """The repository was written by a newer (or unknown) format version."""


class WrongPassphrase(RepositoryError):
    """No key slot opens with the credentials given."""


class MissingCredentials(RepositoryError):
    """The repository is encrypted and no passphrase, identity or key was supplied."""

    exit_status = ExitStatus.USAGE


class CorruptObject(RepositoryError):
    """An object's bytes do not match its name, checksum or authentication tag."""


class RepositoryLocked(RepositoryError):
    """Another process holds a conflicting lock."""


class SnapshotNotFound(RepositoryError):
    exit_status = ExitStatus.USAGE


class StorageError(PhoenixError):
    """A storage backend failed (disk full, permission denied, unreachable)."""


class ObjectNotFound(StorageError):
    pass


class NoSpace(StorageError):
    pass


class SourceError(PhoenixError):
    """A source (file, database) could not be read consistently."""


class ToolMissing(PhoenixError):
    """An external tool (gpg, pg_dump) is missing or too old."""

    exit_status = ExitStatus.USAGE


class RestoreError(PhoenixError):
    pass


class UnsafePath(RestoreError):
    """A path would leave the restore destination or write through a symlink."""
