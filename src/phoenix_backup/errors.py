"""Every error Phoenix reports, each with its exit code and a one-line message naming cause and fix.

The CLI maps these to exit codes in one place (`cli.main`); the Python API raises them as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum


def shown(name: object) -> str:
    """A file or folder name (or a path) as a message shows it: its control characters (a newline,
    an ANSI escape from a hostile name; a byte 0x80-0x9F of a name that is not UTF-8) escaped
    (`\\n`, `\\x1b`, `\\x9b`), and so are Unicode's bidirectional controls and line separators
    (`\\u202e`: a name holding RIGHT-TO-LEFT OVERRIDE would show as another name, the "Trojan
    Source" trick), so that the message stays one line, writes nothing to the terminal but text and
    shows the name's characters in their order. What it escaped is plain text: shown twice is shown
    once. JSON carries the exact name (`jsontext`)."""
    text = str(name)
    if text.isprintable():
        return text
    return "".join(
        _ESCAPES.get(c, f"\\x{ord(c) & 0xFF:02x}")
        if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or _C1_BYTE <= ord(c) < 0xDCA0
        else f"\\u{ord(c):04x}"
        if c in _REORDERING
        else c
        for c in text
    )


# A name's byte that is not UTF-8 is the surrogate U+DC00 + byte (PEP 383): 0x80-0x9F of those
# are, printed as the bytes they are, the 8-bit control characters of a terminal that is not UTF-8.
_C1_BYTE = 0xDC80


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# What reorders or breaks the text a terminal shows without being a control character: the
# bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069), the marks
# (U+200E, U+200F, U+061C), and the line and paragraph separators (U+2028, U+2029). None is
# printable (`str.isprintable`), so a name without any such character takes the fast path above.
_REORDERING = frozenset(
    [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
    + ["\u200e", "\u200f", "\u061c", "\u2028", "\u2029"]
)


def shown_lines(text: str) -> str:
    """Text of several lines (a report, a listing, a completion script) as a terminal is given it:
    each control character `shown` escapes escaped, but its newlines and tabs kept. A name's own
    newline must be escaped (`shown`) where the name is put into a line: or the lines built one by
    one are given to `shown_each`, which keeps each on its own line whatever it holds."""
    if text.isprintable():
        return text
    return "\n".join("\t".join(shown(part) for part in line.split("\t")) for line in text.split("\n"))


def shown_each(lines: Iterable[str]) -> str:
    """Lines of a report (each a line a renderer built, names and server messages put in it raw or
    `shown` already) as one text: each line stays one line of text, its own newline, tab or escape
    shown escaped (`shown`). The one way a plain-text result joins its lines."""
    return "\n".join(shown(line) for line in lines)


class ExitStatus(IntEnum):
    """The exit codes of `phx`, a scripting contract (docs/cli.md, "Exit codes")."""

    OK = 0
    FAILURE = 1
    USAGE = 2  # bad usage or bad config
    PARTIAL = 3  # some part failed (a file unreadable, a target down), the rest was done

    @classmethod
    def of_targets(cls, succeeded: Iterable[bool]) -> ExitStatus:
        """A command run on each target: OK when every one succeeded, PARTIAL when some did,
        FAILURE when none did."""
        results = list(succeeded)
        if all(results):
            return cls.OK
        return cls.PARTIAL if any(results) else cls.FAILURE


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


class Cancelled(PhoenixError):
    """The user answered "no" at a prompt: nothing was done, as asked, which is not a failure."""

    exit_status = ExitStatus.OK


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


class NoSlotOfMethod(WrongPassphrase):
    """The repository has key slots of other methods only (`kinds`) than the credentials may open:
    no passphrase was wrong, the credentials are of another kind."""

    def __init__(self, message: str, kinds: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.kinds = kinds


class MissingCredentials(RepositoryError):
    """The repository is encrypted and no passphrase, identity or key was supplied."""

    exit_status = ExitStatus.USAGE


class IdentityRequired(MissingCredentials):
    """A write-only repository's data is read only with its age identity, which this machine
    (a backing-up machine holds only the recipients) was not given. The CLI names its command
    (`command`) in the message."""

    def __init__(self, location: str, reading: str, *, wrong: bool = False) -> None:
        self.location = location
        self.reading = reading
        self.wrong = wrong
        self.command: str | None = None
        super().__init__(str(self))

    def __str__(self) -> str:
        who = f"`{self.command}`" if self.command else "this"
        where = f" at {self.location}" if self.location else ""
        if self.wrong:
            return (
                f"{who} needs the age identity of the write-only repository{where} to read {self.reading}, and the "
                "identity given is not one of its recipients; give the right one with --identity FILE or "
                "PHX_IDENTITY_FILE"
            )
        return (
            f"{who} needs the age identity of the write-only repository{where} to read {self.reading}: this machine "
            "holds only its recipients; on a machine you trust, give --identity FILE or set PHX_IDENTITY_FILE "
            "(or run on a terminal to be asked)"
        )


class KeyChanged(RepositoryError):
    """The repository's key (or identity) is not the one this machine pinned: it may have been
    replaced by someone who can write the storage. `phx key trust` re-pins it once checked."""


class ConfigNotAuthenticated(RepositoryError):
    """The repository's `config` is not authenticated by the key that opened it."""


class CorruptObject(RepositoryError):
    """An object's bytes do not match its name, checksum or authentication tag."""


class KdfBudgetExceeded(RepositoryError):
    """Opening would spend more key-derivation work than allowed (too many or too costly slots)."""


class RepositoryLocked(RepositoryError):
    """Another process holds a conflicting lock."""


class SnapshotNotFound(RepositoryError):
    exit_status = ExitStatus.USAGE


class KeySlotNotFound(RepositoryError):
    """A key slot named on the command line does not exist: a usage error, like an unknown snapshot."""

    exit_status = ExitStatus.USAGE


class StorageError(PhoenixError):
    """A storage backend failed (disk full, permission denied, unreachable)."""


class ObjectNotFound(StorageError):
    pass


class NoSpace(StorageError):
    pass


class LockNotReleased(StorageError):
    """The command's work is done, but its lock object could not be deleted (the lock stays until
    `phx unlock` removes it). `phx backup` and `phx forget` keep their result and make it partial
    (exit 3, repo/locks.py `noting_unreleased`); raised on, it ends a command as a failure (exit 1):
    the result it replaces may have been one (a verify that found damage)."""


class OutputFailed(StorageError):
    """A command's output could not be written to stdout (closed, a full disk, a device error): an
    error, never a success whose output was lost. A reader that went away (EPIPE, `phx ls | head
    -1`) is not one: see cli/app.py `reader_gone`."""

    def __init__(self, cause: str) -> None:
        super().__init__(
            f"could not write the output to stdout: {cause}; send it where it can be written "
            "(a file on a disk with room: `> FILE`) and run the command again"
        )


class ReadOnlyStorage(StorageError):
    """The store cannot be written (a read-only file system): reading it still works."""


class SourceError(PhoenixError):
    """A source (file, database) could not be read consistently."""


class HookFailed(PhoenixError):
    """`hooks.preBackup` failed: nothing was backed up."""


class ToolMissing(PhoenixError):
    """An external tool (gpg, pg_dump) is missing or too old."""

    exit_status = ExitStatus.USAGE


class RestoreError(PhoenixError):
    pass


class UnsafePath(RestoreError):
    """A path would leave the restore destination or write through a symlink."""


# -- storage targets (issue #6) ----------------------------------------------------------------


class ObjectExists(StorageError):
    """An exclusive write found the object already there."""


class TransientStorageError(StorageError):
    """A failure worth retrying: a timeout, a dropped connection, a 5xx or throttling answer."""


class TargetUnreachable(StorageError):
    """The target refused the connection or could not be reached at all."""


class TargetAuthError(StorageError):
    """The target rejected the credentials (or there were none)."""

    exit_status = ExitStatus.USAGE


class AppendOnlyRefused(StorageError):
    """Phoenix was about to delete or overwrite an object on an append-only target (or to run a
    command that does, such as forget or prune): they run on another machine, with credentials
    that may delete."""

    exit_status = ExitStatus.USAGE


class ThawPending(StorageError):
    """Objects in a cold storage class are being restored (thawed) and are not readable yet."""


class RetentionRefused(PhoenixError):
    """A retention policy would remove every snapshot of a group; nothing was forgotten."""

    exit_status = ExitStatus.USAGE


class SchedulerUnavailable(PhoenixError):
    """No usable scheduler (systemd user session, crontab, launchd) was found."""

    exit_status = ExitStatus.USAGE


class GatewayError(RestoreError):
    """`gateway.stop` failed or timed out: the restore aborts with nothing changed."""


# -- memory export / import / diff (issue #9) ----------------------------------------------------


class ExportError(PhoenixError):
    """An export could not be written (the output folder is not empty, a store cannot be read)."""


class NotAnExport(PhoenixError):
    """The folder given to `phx import` is not a Phoenix export this version can import."""

    exit_status = ExitStatus.USAGE


class ChecksumMismatch(PhoenixError):
    """An export's files do not match its `checksums.json`: nothing was imported."""


class MergeFailed(PhoenixError):
    """A merge into a live store failed its checks and was rolled back: the store is unchanged."""
