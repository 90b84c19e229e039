"""What every use case needs: the caller's environment, credentials, and the opened repository."""

from __future__ import annotations

import contextlib
import io
import os
import re
import select
import shutil
import stat
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phoenix_backup.dirs import (
    BOM,
    PASSPHRASE_COMMAND_SECRET,
    env_path,
    passphrase_text,
    read_secret,
    read_secret_file,
    remember_secret,
)
from phoenix_backup.errors import (
    ConfigError,
    IdentityRequired,
    MissingCredentials,
    NoSlotOfMethod,
    PhoenixError,
    RepositoryLocked,
    RepositoryNotFound,
    SnapshotNotFound,
    SourceError,
    StorageError,
    UsageError,
    WrongPassphrase,
    shown,
)
from phoenix_backup.reporting import Reporter, Silent
from phoenix_backup.shell import kill_with_descendants, stops_deferred

# The config, the repository, its keys and the storage are imported where they are used: every
# `phx` imports this module (`cli.app`), and `phx --version`, `phx --help` or a command's `--help`
# use none of them (their import was most of a start's CPU).
if TYPE_CHECKING:
    from phoenix_backup.config import Config
    from phoenix_backup.repo import keys as keyslots
    from phoenix_backup.repo.cache import Cache
    from phoenix_backup.repo.crypto import Compressor
    from phoenix_backup.repo.pins import Pins
    from phoenix_backup.repo.repository import Repository
    from phoenix_backup.repo.snapshot import Latest, Snapshot
    from phoenix_backup.storage.base import Backend
    from phoenix_backup.storage.local import LocalBackend


def folder_argument(text: str) -> Path:
    """A folder given on the command line (`--to DIR`, `--scratch DIR`), absolute, with its `..`
    resolved as the system resolves them (a symlink before one is followed), so that the folders
    before a `..` are never created: `x/../y` is `y`, not `y` beside a new, empty `x`."""
    path = Path(text).absolute()
    if ".." not in path.parts:
        return path
    last = len(path.parts) - 1 - path.parts[::-1].index("..")
    for end in range(2, last + 1):
        # A link that leads nowhere, or to itself: the system cannot go back through it either,
        # and following its text would create the folders it names.
        before = Path(*path.parts[:end])
        if os.path.islink(before) and not os.path.exists(before):
            raise UsageError(
                f"{text}: {before} is a symbolic link to a missing folder (or a loop of links), which the `..` after "
                "it cannot go back through; give the folder without it"
            )
    return Path(os.path.realpath(Path(*path.parts[: last + 1])), *path.parts[last + 1 :])


def _no_notice(_message: str) -> None:
    pass


def _any_latest() -> Latest:
    """`Environment.latest`'s default: the newest snapshot of any host, scope and tags."""
    from phoenix_backup.repo.snapshot import Latest

    return Latest()


@dataclass
class Environment:
    """The caller's world: environment variables, whether a person can be asked, where notices go.

    Tests and the Python API pass their own; the CLI builds one from the real process.
    """

    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    interactive: bool = False
    prompt: Callable[[str], str] | None = None  # asks for a secret
    confirm: Callable[[str], bool] | None = None  # asks yes/no
    notice: Callable[[str], None] = _no_notice  # one-line notices for stderr
    progress: Reporter = field(default_factory=Silent)  # phases, bytes and files done
    # The target that read commands work from (`--target NAME`); None means the first enabled one.
    target: str | None = None
    # What `latest` selects for this command (`--scope`, `--tag`, `--host`; DESIGN §2).
    latest: Latest = field(default_factory=_any_latest)
    # Seconds a read may wait for packs in a cold S3 storage class to thaw (`--thaw-timeout`);
    # 0 requests the thaw and fails at once, saying to run again later.
    thaw_timeout: float = 0.0
    # A diagnosis's deadline (`phx doctor`, `phx status`): seconds a remote target may take to connect
    # and to send each answer's first byte before it is said not to answer (no retry). None: a
    # backup's own timeouts and retries.
    answer_seconds: float | None = None
    # The key-derivation work `unlock_ahead` spent: the command's next opening goes on from it.
    kdf_ahead: keyslots.KdfBudget | None = None
    # The passphrase as given (`GivenPassphrase.exact`) when that form opened the repository
    # (`_open_exact`): the command's later uses of the credentials (`phx key rotate`'s) use it too.
    opened_as_given: str | None = None

    @property
    def home(self) -> Path:
        return Path(self.env.get("HOME") or Path.home())


# A diagnosis's deadline (`phx doctor`, `phx status`; `Environment.answer_seconds`): a remote target
# that takes longer to connect, or to send an answer's first byte, is said not to answer. A backup
# keeps its own patience (60 s a request, retried). Long enough for a slow link's round trips.
DIAGNOSIS_SECONDS = 5.0

_PASSPHRASE_FILE_FIX = "point PHX_PASSPHRASE_FILE at the file that holds the passphrase alone"
# Seconds `encryption.passphraseCommand` may run before it is stopped (an internal knob: tests set it).
PASSPHRASE_COMMAND_TIMEOUT = 60.0


@dataclass(frozen=True)
class GivenPassphrase:
    """A passphrase and where it came from. `exact` is what an earlier Phoenix used from the same
    source when `secret` differs from it (`as_passphrase`): PHX_PASSPHRASE with the line break it
    ends with, PHX_PASSPHRASE_FILE's text with the UTF-8 byte-order mark it starts with. A
    repository whose passphrase was set that way opens with `exact` (`_open_asking`)."""

    secret: str
    exact: str | None = None
    source: str = "PHX_PASSPHRASE"  # named when no key slot opens with it


def as_passphrase(text: str, source: str, *, before: str | None = None) -> GivenPassphrase:
    """A passphrase as every source gives it (the environment, a file, a command's output, the new
    passphrase of `phx key add`): without a UTF-8 byte-order mark it starts with and without the
    line breaks (CR, LF) it ends with, so that `export PHX_PASSPHRASE="$(cat file)"`, a CRLF file
    and a secret store's value all give the same passphrase. Nothing else is changed: spaces,
    tabs and every inner character are the passphrase's. `before`: what an earlier Phoenix used
    from this source (`text` itself when not given), kept as `exact` when it differs."""
    secret = passphrase_text(text)
    before = text if before is None else before
    return GivenPassphrase(secret, exact=before if before != secret else None, source=source)


def _passphrase_file(file: Path, *, ahead: bool) -> GivenPassphrase | None:
    """PHX_PASSPHRASE_FILE's passphrase (`as_passphrase`); None only when `ahead` and the file
    cannot be read twice or at all (`given_passphrase`)."""
    try:
        if ahead and not stat.S_ISREG(os.stat(file).st_mode):
            return None
        raw = read_secret_file(file, "PHX_PASSPHRASE_FILE", _PASSPHRASE_FILE_FIX)
    except OSError as exc:
        if ahead:
            return None
        raise UsageError(f"cannot read PHX_PASSPHRASE_FILE {file}: {exc.strerror}; fix the path") from exc
    # Bytes that are not UTF-8 kept as the environment keeps them: the key slot refuses them.
    text = raw.decode("utf-8", "surrogateescape")
    # Earlier, a file's line breaks were left out already, and its byte-order mark was not.
    given = as_passphrase(text, f"PHX_PASSPHRASE_FILE {file}", before=text.rstrip("\r\n"))
    # No key slot has an empty passphrase: say the file is empty, not "wrong passphrase" (a file
    # of the byte-order mark alone gives it as `exact`: a passphrase an earlier Phoenix set).
    if not given.secret and given.exact is None:
        if ahead:
            return None
        raise UsageError(
            f"PHX_PASSPHRASE_FILE {file} is empty; write the passphrase in it (one line) or unset PHX_PASSPHRASE_FILE"
        )
    return given


def given_passphrase(
    cfg: Config | None, envx: Environment, *, purpose: str = "repository", ahead: bool = False
) -> GivenPassphrase | None:
    """The passphrase, from the first of PHX_PASSPHRASE, PHX_PASSPHRASE_FILE, the config's
    passphraseEnv, its passphraseCommand, then a prompt; None when none gives one. Each is read
    the same way (`as_passphrase`). PHX_PASSPHRASE and PHX_PASSPHRASE_FILE both set must give the
    same passphrase: UsageError otherwise (the variable winning silently opened the repository
    with a passphrase the user did not mean). `ahead` (the opening ahead of a command's work,
    `unlock_ahead`) reads only what can be read twice: a regular file, never a pipe or a device
    (its writer gives the secret once), no command, no prompt; None when the source that decides
    is one of those."""
    env = envx.env
    file = env_path(env, "PHX_PASSPHRASE_FILE")
    from_file = _passphrase_file(file, ahead=ahead) if file is not None else None
    if env.get("PHX_PASSPHRASE"):
        given = as_passphrase(env["PHX_PASSPHRASE"], "PHX_PASSPHRASE")
        if env.get("PHX_PASSPHRASE_FILE"):
            if from_file is None:  # ahead, and the file is not to be read now: the real opening says it
                return None
            if from_file.secret != given.secret:
                raise UsageError(
                    f"PHX_PASSPHRASE and PHX_PASSPHRASE_FILE ({env['PHX_PASSPHRASE_FILE']}) are both set and give "
                    "different passphrases; unset one of them (`unset PHX_PASSPHRASE` to use the file)"
                )
        return given
    if env.get("PHX_PASSPHRASE_FILE"):
        return from_file
    enc = cfg.encryption if cfg else None
    if enc and enc.passphrase_env:
        value = env.get(enc.passphrase_env)
        if value:
            return as_passphrase(value, f"{enc.passphrase_env} (encryption.passphraseEnv)")
    if ahead:
        return None
    if enc and enc.passphrase_command:
        raw = _run_passphrase_command(enc.passphrase_command)
        remember_secret(PASSPHRASE_COMMAND_SECRET, raw)
        text = raw.decode("utf-8", "surrogateescape")
        return as_passphrase(text, "encryption.passphraseCommand's output", before=text.rstrip("\r\n"))
    if envx.interactive and envx.prompt is not None:
        return GivenPassphrase(envx.prompt(f"Passphrase for the {purpose}: "), source="the passphrase typed")
    return None


def with_given(envx: Environment, given: GivenPassphrase) -> Environment:
    """`envx` with the passphrase `given` as PHX_PASSPHRASE, as given (`exact`: a repository whose
    passphrase an earlier Phoenix set with the line break or byte-order mark of its source opens as
    it does for other commands): a command that opens several targets, at the same time
    (`phx doctor`, `phx status`), asks its source (a prompt, passphraseCommand) once, not once per
    target, several at a time on one terminal."""
    return replace(envx, env={**envx.env, "PHX_PASSPHRASE": given.exact if given.exact is not None else given.secret})


def passphrase(cfg: Config | None, envx: Environment, *, purpose: str = "repository") -> str | None:
    """PHX_PASSPHRASE, PHX_PASSPHRASE_FILE, passphraseEnv, passphraseCommand, then a prompt
    (`given_passphrase`)."""
    given = given_passphrase(cfg, envx, purpose=purpose)
    return given.secret if given is not None else None


class _Deadline(io.RawIOBase):
    """The output pipe of `proc`, read until a monotonic `deadline`: past it, TimeoutError (however
    the writer, or a process it started that holds the pipe too, keeps it open). Once `proc` has
    exited, what it wrote is all there is: an empty pipe ends the output then, even when a process
    it left running (an agent `pass` or `gpg` started) still holds the pipe open."""

    # How often a wait for output checks whether the command has exited.
    CHECK = 0.05

    def __init__(self, fd: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
        self.fd, self.proc, self.deadline = fd, proc, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        waiting = select.poll()  # not select(): a process may hold more than FD_SETSIZE files
        waiting.register(self.fd, select.POLLIN)
        while not waiting.poll(0):
            if self.proc.poll() is not None:
                if waiting.poll(0):  # written just before it exited
                    break
                return 0
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            waiting.poll(min(left, self.CHECK) * 1000)
        data = os.read(self.fd, len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _run_passphrase_command(command: str) -> bytes:
    """What `encryption.passphraseCommand` prints, read as a secret file is (`read_secret`: never
    more than its limit, so a mistaken command such as `yes` cannot fill the memory); after
    PASSPHRASE_COMMAND_TIMEOUT seconds the command is stopped and its output no longer read.
    UsageError when it fails, prints too much or takes too long."""
    failed = "encryption.passphraseCommand failed; run it by hand to see why, or set PHX_PASSPHRASE"
    proc: subprocess.Popen[bytes] | None = None
    deadline = time.monotonic() + PASSPHRASE_COMMAND_TIMEOUT
    # It may ask on the terminal with the echo off: killed, or failing, it cannot turn it back on.
    terminal = _TerminalSettings()
    try:
        # A stop inside Popen (after the fork) would leave the command unknown, running on: held
        # until `proc` is known, it is raised below, where the `finally` ends the command.
        with stops_deferred():
            proc = subprocess.Popen(
                command, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
        assert proc.stdout is not None
        with proc.stdout, io.BufferedReader(_Deadline(proc.stdout.fileno(), proc, deadline)) as pipe:
            fix = "make it print the passphrase alone"
            raw = read_secret(pipe, Path(PASSPHRASE_COMMAND_SECRET), "the output of", fix)
        status = proc.wait(max(0.0, deadline - time.monotonic()))
    except (TimeoutError, subprocess.TimeoutExpired):
        raise UsageError(f"{failed} (it was stopped after {PASSPHRASE_COMMAND_TIMEOUT:g} s)") from None
    except OSError as exc:
        raise UsageError(failed) from exc
    finally:
        try:
            if proc is not None and proc.poll() is None:  # stopped (Ctrl-C, SIGTERM), timed out or failed
                kill_with_descendants(proc)  # with what it started (a stop signal meanwhile is raised here)
        finally:
            terminal.restore()
    if status != 0:
        raise UsageError(failed)
    return raw


class _TerminalSettings:
    """The settings of `phx`'s terminal (none without one), to put back after a command that may
    change them (echo off while it asks for a passphrase) and may not live to undo it: killed at a
    stop or its timeout, or failing. The user's shell would keep them (typing unseen)."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.settings: list[Any] = []
        try:
            self.fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
            self.settings = termios.tcgetattr(self.fd)
        except (OSError, termios.error):
            self.close()

    def restore(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError, termios.error):
            # From the foreground only: in the background, tcsetattr would stop `phx` (SIGTTOU).
            if os.tcgetpgrp(self.fd) == os.getpgrp() and termios.tcgetattr(self.fd) != self.settings:
                termios.tcsetattr(self.fd, termios.TCSANOW, self.settings)
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def credentials(cfg: Config, envx: Environment) -> keyslots.Credentials:
    """The user's credentials, and the slot methods allowed to open the repository: the configured
    one, plus passphrase slots when a passphrase is given in the environment (a passphrase slot
    proves the passphrase; a `none`, age or gpg slot of a method the owner did not choose proves
    nothing)."""
    creds = _credentials(cfg, envx)[0]
    return creds if envx.opened_as_given is None else replace(creds, passphrase=envx.opened_as_given)


def _credentials(
    cfg: Config, envx: Environment
) -> tuple[keyslots.Credentials, GivenPassphrase | None, GivenPassphrase | None]:
    """`credentials`, the configured passphrase they hold as given (None for one from
    PHX_PASSPHRASE alone or none), and the passphrase they hold as given whatever the method (the
    configured one, or PHX_PASSPHRASE beside another method: its `exact` is tried too)."""
    from phoenix_backup.repo import keys as keyslots
    from phoenix_backup.repo.writeonly import store_root

    enc = cfg.encryption
    identities: tuple[str, ...] = ()
    # An identity given for this run (--identity FILE, PHX_IDENTITY_FILE) is the user's choice,
    # as a passphrase in the environment is: age slots may open then too (the config's MAC and
    # the pin still decide which secrets are the repository's).
    given = env_path(envx.env, "PHX_IDENTITY_FILE")
    if given is not None:
        identities = keyslots.load_age_identities(given)
    elif enc.identity_file is not None:
        identities = keyslots.load_age_identities(enc.identity_file)
    gnupg = env_path(envx.env, "GNUPGHOME")
    needs_passphrase = not enc.enabled or enc.method == "passphrase"
    found = given_passphrase(cfg, envx) if needs_passphrase and enc.enabled and not given else None
    held = found if found is not None else _env_passphrase(envx)
    secret = held.secret if held is not None else None
    methods = {enc.method} if enc.enabled else {"none"}
    if secret is not None:
        methods.add("passphrase")
    if given:
        methods.add("age")
    creds = keyslots.Credentials(
        passphrase=secret,
        age_identities=identities,
        gpg_homedir=gnupg,
        gpg_key_ids=(enc.key_id,) if enc.enabled and enc.method == "gpg" and enc.key_id else (),
        methods=frozenset(methods),
        write_keys=store_root(envx.env),
        ask_identity=(lambda: ask_identity(envx)) if envx.interactive and envx.prompt is not None else None,
    )
    return creds, found, held


def ask_identity(envx: Environment) -> tuple[str, ...]:
    """The age identity of a write-only repository, asked on the terminal: the key itself or the
    path of its file."""
    from phoenix_backup.repo import keys as keyslots

    assert envx.prompt is not None
    answer = envx.prompt("Age identity of the write-only repository (AGE-SECRET-KEY-1..., or its file): ").strip()
    if answer.upper().startswith("AGE-SECRET-KEY-"):
        keyslots.parse_identity(answer, 0)
        return (answer,)
    if not answer:
        raise MissingCredentials("no age identity given; give --identity FILE or set PHX_IDENTITY_FILE")
    return keyslots.load_age_identities(Path(answer).expanduser())


def unlock_ahead(cfg: Config, envx: Environment, target: str | None = None) -> None:
    """Run the scrypt of the repository's passphrase slots now, before the command loads the
    modules of its work: a passphrase slot's scrypt takes 32 MiB for a moment, on top of what is
    loaded then (docs/benchmarks.md, "Start-up"). `open_repository` later finds the keys derived
    (`keys._slot_key`) and checks everything as always: the config's authentication, the pin.
    The work spent here counts in that opening's key-derivation budget (`envx.kdf_ahead`): slots
    swapped in between cannot make the two spend more than one opening may.

    Only a local target is opened ahead (a remote store would be listed twice), with a passphrase
    that can be read twice (`given_passphrase(ahead=True)`: the environment or a regular
    PHX_PASSPHRASE_FILE; not a pipe read once, a command or a prompt that must run once). Whatever
    goes wrong here is left to `open_repository`, which says it (no repository yet, a wrong
    passphrase, a damaged slot)."""
    from phoenix_backup.repo import keys as keyslots
    from phoenix_backup.repo.repository import Repository

    enc = cfg.encryption
    if not enc.enabled or enc.method != "passphrase" or envx.env.get("PHX_IDENTITY_FILE"):
        return
    names = enabled_targets(cfg)
    if not names or (target or envx.target or names[0]) != "local":
        return
    try:
        given = given_passphrase(cfg, envx, ahead=True)
        if given is None:
            return
        backend = local_backend(cfg)
        try:
            if backend.exists() and Repository.read_config(backend).write_only is None:
                envx.kdf_ahead = keyslots.KdfBudget()
                creds = keyslots.Credentials(
                    passphrase=given.secret, methods=frozenset({"passphrase"}), budget=envx.kdf_ahead
                )
                # The first slot this passphrase opens is the one the opening will use: the rest
                # (other people's passphrases, or planted slots) need not cost a scrypt each here.
                next(iter(keyslots.open_slots(Repository.read_key_slots(backend), creds)), None)
        finally:
            backend.close()
    except (PhoenixError, OSError):
        return


def _env_passphrase(envx: Environment) -> GivenPassphrase | None:
    """A passphrase given in the environment is tried even when the config names another method
    (read as every source is, `as_passphrase`; as given too, `_open_asking`: a passphrase slot an
    earlier Phoenix added from PHX_NEW_PASSPHRASE with its line break opens as before)."""
    value = envx.env.get("PHX_PASSPHRASE")
    return as_passphrase(value, "PHX_PASSPHRASE") if value else None


def new_key_slot(
    cfg: Config, envx: Environment, kdf_params: Mapping[str, int] | None = None
) -> tuple[Callable[[keyslots.MasterSecrets], keyslots.KeySlot], bool]:
    """How the first key slot of a new repository is made, and whether it is encrypted."""
    from phoenix_backup.repo import keys as keyslots

    enc = cfg.encryption
    if not enc.enabled:
        return keyslots.wrap_none, False
    if enc.method == "passphrase":
        secret = passphrase(cfg, envx, purpose="new repository")
        if not secret:
            raise MissingCredentials(
                "encryption is on but no passphrase was given; set PHX_PASSPHRASE (or PHX_PASSPHRASE_FILE) "
                "or run on a terminal to be asked (or choose --encryption none, unencrypted)"
            )
        if envx.interactive and envx.prompt is not None and not envx.env.get("PHX_PASSPHRASE"):
            again = envx.prompt("Repeat the passphrase: ")
            if again != secret:
                raise UsageError("the passphrases do not match; run the command again")
        return (lambda m: keyslots.wrap_passphrase(m, secret, kdf_params=kdf_params)), True
    if enc.method == "age":
        recipients = enc.recipients
        identities = keyslots.load_age_identities(enc.identity_file) if enc.write_only and enc.identity_file else ()
        if any(str(keyslots.parse_identity(i, n).to_public()) in recipients for n, i in enumerate(identities)):
            raise UsageError(
                "encryption.identityFile holds the identity of a recipient of this write-only repository: the machine "
                "that backs up must not hold it; move the identity to the machine you restore on and remove "
                "encryption.identityFile from this config"
            )
        return (lambda m: keyslots.wrap_age(m, recipients)), True
    key_id = enc.key_id or ""
    gnupg = env_path(envx.env, "GNUPGHOME")
    return (lambda m: keyslots.wrap_gpg(m, key_id, homedir=gnupg)), True


def compressor_for(cfg: Config) -> Compressor:
    from phoenix_backup.repo.crypto import Compressor

    c = cfg.compression
    return Compressor(c.enabled, c.level, c.algorithm)


def local_backend(cfg: Config) -> LocalBackend:
    from phoenix_backup.storage.local import LocalBackend

    if not cfg.targets.local.enabled:
        raise ConfigError(
            "targets.local is disabled and this Phoenix writes to local targets only; "
            "enable targets.local in the config"
        )
    return LocalBackend(cfg.repository_path)


def enabled_targets(cfg: Config) -> list[str]:
    """The enabled targets in the fixed order local, git, s3, r2: backups write the first one and
    replicate to the others (DESIGN §8)."""
    return cfg.targets.enabled_names()


def target_names(cfg: Config, *, only: str | None = None) -> list[str]:
    """The targets retention and prune apply to: every enabled one in config order; `only` picks one."""
    names = enabled_targets(cfg)
    if only is None:
        return names
    if only not in names:
        enabled = ", ".join(names) or "none"
        raise UsageError(f"target {only!r} is not an enabled target (enabled: {enabled}); pick one of those")
    return [only]


def target_backend(cfg: Config, envx: Environment, name: str) -> Backend:
    """The backend of one enabled target (UsageError for an unknown or disabled one), wrapped for
    retries and a concurrency limit. Building it never touches the network."""
    from phoenix_backup.storage.targets import backend_for

    return backend_for(
        cfg, name, envx.env, notice=envx.notice, thaw_timeout=envx.thaw_timeout, answer_seconds=envx.answer_seconds
    )


def enabled_backends(cfg: Config, envx: Environment) -> list[tuple[str, Backend]]:
    """(name, backend) of every enabled target in config order local, git, s3, r2: the first is
    the one backups write, the others are its replicas. The caller closes the backends."""
    return [(name, target_backend(cfg, envx, name)) for name in enabled_targets(cfg)]


def open_repository(
    cfg: Config,
    envx: Environment,
    *,
    create: bool = False,
    target: str | None = None,
    kdf_params: Mapping[str, int] | None = None,
    upgrade: bool = False,
) -> Repository:
    """Open the repository of one target: `target`, else `envx.target` (a read command's
    `--target`), else the first enabled target. With `create` (only `phx init` asks for it),
    initialise it; a new first target adopts the repository a replica already holds (same id and
    keys), so replication carries on after the local disk was lost. With `upgrade` (a backup), a
    format 1 repository is brought to the current format."""
    from phoenix_backup.repo.repository import Repository
    from phoenix_backup.repo.writeonly import store_root

    names = enabled_targets(cfg)
    name = target or envx.target or names[0]
    backend = target_backend(cfg, envx, name)
    if not backend.exists():
        # Probed once (a Git remote's branches, a bucket's prefixes: requests on the network).
        near = _misplaced(backend, name) if not create and name == names[0] else None
        if near is not None:
            raise RepositoryNotFound(no_repository(backend, name, first=True, near=near))
        Repository.refuse_lost_config(backend)
        if not create:
            raise RepositoryNotFound(
                no_repository(backend, name, first=name == names[0], config=cfg.source, replicas=names[1:], near="")
            )
        if name == names[0] and _adopt_from_replica(cfg, envx, backend, names[1:]):
            repo = _open(cfg, envx, backend, upgrade=True)
            pins(envx).started(repo.config.id, backend.location)
            return repo
        factory, encrypted = new_key_slot(cfg, envx, kdf_params)
        write_only = cfg.encryption.recipients if cfg.encryption.enabled and cfg.encryption.write_only else None
        repo = Repository.init(
            backend,
            factory,
            encrypted,
            pins=pins(envx),
            compression=compressor_for(cfg),
            notice=envx.notice,
            write_only=write_only,
        )
        # Not said here: `phx init`'s report says it, the demo's names its folder (it was said twice).
        if write_only is not None:
            from phoenix_backup.repo.writer import WriterStore

            store = WriterStore(store_root(envx.env), repo.config.id)
            store.save_key(repo.write_key)
            envx.notice(
                f"the repository is write-only: this machine keeps its write key ({store.key_path}) and the "
                "recipients, never the identity; restore, drill, prune, export and verify --read-data run where the "
                "identity is"
            )
        return repo
    return _open(cfg, envx, backend, upgrade=upgrade)


def find_snapshot(cfg: Config, envx: Environment, repo: Repository, ref: str, target: str | None = None) -> Snapshot:
    """`repo.find_snapshot(ref)` with `envx.latest`, for a command reading one snapshot. The first
    target holding none while a replica holds some (a new machine's `phx init` continued the
    repository a replica holds: the new first target starts empty) is said with the replica to
    read with --target, not as "no snapshots yet; run `phx backup`"."""
    snaps = repo.list_snapshots()
    if not snaps and not repo.problems.damaged_snapshots and (target or envx.target) is None:
        held = snapshots_elsewhere(cfg, envx)
        if held:
            first = enabled_targets(cfg)[0]
            where = ", ".join(f"target {name} holds {count}" for name, count in held)
            raise SnapshotNotFound(
                f"target {first} holds no snapshots yet, but {where}: read them with `--target {held[0][0]}` "
                f"(`phx list --target {held[0][0]}`); backups from here add to them, and never copy them to {first}"
            )
    return repo.find_snapshot(ref, snaps, latest=agent_latest(cfg, envx))


def agent_latest(cfg: Config, envx: Environment) -> Latest:
    """`envx.latest` narrowed to this user and workspace folder: two agents of one host backing up
    into one repository never take each other's snapshot for `latest` (restore, ls, diff, parent)."""
    from phoenix_backup.users import username

    return replace(envx.latest, agent=(username(), str(cfg.workspace)))


def snapshots_elsewhere(cfg: Config, envx: Environment) -> list[tuple[str, int]]:
    """(target, how many snapshot objects it lists) for each replica that lists some; a replica that
    cannot be listed is left out (no alarm on a doubt)."""
    held = []
    for name in enabled_targets(cfg)[1:]:
        backend = target_backend(cfg, envx, name)
        try:
            count = sum(1 for _ in backend.list("snapshots/"))
        except PhoenixError:
            continue
        finally:
            backend.close()
        if count:
            held.append((name, count))
    return held


def require_identity(repo: Repository, reading: str = "the trees and data of its snapshots") -> None:
    """Refuse, before anything is done (and with `repo` closed), a command that reads `reading`
    on a machine that backs up a write-only repository without its identity (docs/write-only.md)."""
    if not repo.can_read:
        repo.close()
        raise IdentityRequired(repo.backend.location, reading)


def pins(envx: Environment) -> Pins:
    """This user's pins of repository keys (in the data dir)."""
    from phoenix_backup.repo.pins import Pins

    return Pins.for_env(envx.env)


def _open(cfg: Config, envx: Environment, backend: Backend, *, upgrade: bool) -> Repository:
    """Open with the configured credentials, checked against this user's pin. A command that
    writes (`upgrade`) brings a format 1 repository to the current format first, unless another
    process holds a lock there (then a later run does it)."""
    repo = _open_asking(cfg, envx, backend)
    if upgrade:
        try:
            repo.upgrade()
        except RepositoryLocked:
            envx.notice("the repository is busy; its upgrade to the current format waits for a later run")
    return repo


# Tries of a passphrase typed at a prompt, as sudo and ssh give.
PROMPT_TRIES = 3


def _open_asking(cfg: Config, envx: Environment, backend: Backend) -> Repository:
    """`Repository.open`; a wrong passphrase typed at the prompt (not one from the environment or
    a command) may be typed again, up to PROMPT_TRIES times in all."""
    from phoenix_backup.repo import keys as keyslots
    from phoenix_backup.repo.repository import Repository

    asked = 0
    prompt = envx.prompt
    if prompt is not None:

        def counting(question: str) -> str:
            nonlocal asked
            asked += 1
            return prompt(question)

        envx.prompt = counting
    # The work an opening ahead spent (`unlock_ahead`) counts in this opening's budget.
    ahead, envx.kdf_ahead = envx.kdf_ahead, None
    try:
        for attempt in range(1, PROMPT_TRIES + 1):
            before = asked
            creds, given, held = _credentials(cfg, envx)
            if ahead is not None:
                creds, ahead = replace(creds, budget=ahead), None
            elif held is not None and held.exact is not None:
                creds = replace(creds, budget=keyslots.KdfBudget())
            try:
                try:
                    return Repository.open(
                        backend, creds, pins=pins(envx), compression=compressor_for(cfg), notice=envx.notice
                    )
                except WrongPassphrase:
                    if held is None or held.exact is None:
                        raise
                    # The try as given is the same opening, within what is left of its budget.
                    return _open_exact(envx, backend, replace(creds, passphrase=held.exact), held, cfg=cfg)
            except MissingCredentials as exc:
                # A planted passphrase slot in an age repository must not make "set PHX_PASSPHRASE"
                # the only way named (`_other_slot_kinds`).
                others = _other_slot_kinds(cfg, backend, creds)
                if not others:
                    raise
                raise MissingCredentials(
                    f"{exc}; it also has {', '.join(others)} key slots: if it is encrypted with {others[0]}, "
                    f"{_SLOT_FIX.get(others[0], 'give its credentials')}"
                ) from exc
            except WrongPassphrase as exc:
                if isinstance(exc, NoSlotOfMethod):  # no passphrase was wrong: asking again cannot help
                    raise _no_slot_of_method(cfg, backend, exc) from exc
                if asked == before or attempt == PROMPT_TRIES:
                    others = _other_slot_kinds(cfg, backend, creds)
                    if others:
                        raise WrongPassphrase(
                            f"no key slot of the repository at {backend.location} opens with "
                            f"{given.source if given is not None else 'the passphrase given'}, and it has "
                            f"{', '.join(others)} key slots: if it is encrypted with {others[0]}, "
                            f"{_SLOT_FIX.get(others[0], 'give its credentials')}; else check the passphrase "
                            "(the one the repository was made with, or one added with `phx key add`)"
                        ) from exc
                    if given is None:
                        raise
                    raise WrongPassphrase(
                        f"wrong passphrase: no key slot of the repository opens with {given.source}; check it "
                        "(the passphrase the repository was made with, or one added with `phx key add`) and try again"
                    ) from exc
                envx.notice(f"wrong passphrase; try again ({PROMPT_TRIES - attempt} more)")
        raise AssertionError("unreachable")
    finally:
        envx.prompt = prompt


_SLOT_FIX = {
    "age": "give its age identity with --identity FILE or PHX_IDENTITY_FILE=FILE",
    "gpg": "write a config file with encryption.method 'gpg' and use it with --config",
}


def _other_slot_kinds(cfg: Config, backend: Backend, creds: keyslots.Credentials) -> tuple[str, ...]:
    """For a repository named by `--repo` alone (no config file to say its method), the kinds of
    its key slots other than those the credentials given may open: a passphrase that opens no
    slot of an age repository is no wrong passphrase when its passphrase slot is a planted one
    (anyone who can write the storage can add one). Empty when they cannot be read."""
    from phoenix_backup.repo.repository import Repository

    if cfg.source is not None or cfg.location is None:
        return ()
    try:
        kinds = {slot.type for slot in Repository.read_key_slots(backend)}
    except PhoenixError:
        return ()
    return tuple(k for k in ("age", "gpg") if k in kinds - creds.allowed())


def _no_slot_of_method(cfg: Config, backend: Backend, exc: NoSlotOfMethod) -> PhoenixError:
    """`exc` for a repository named by `--repo` alone (no config file, so none to fix): the
    credentials of the kind its slots are, given for the run; else `exc` as it is."""
    if cfg.source is not None or cfg.location is None:
        return exc
    kinds = ", ".join(exc.kinds)
    if "age" in exc.kinds:
        fix = "give its age identity with --identity FILE or PHX_IDENTITY_FILE=FILE"
    elif "passphrase" in exc.kinds:
        fix = "set PHX_PASSPHRASE or PHX_PASSPHRASE_FILE to its passphrase"
    else:
        fix = f"write a config file with encryption.method {exc.kinds[0]!r} and use it with --config"
    return MissingCredentials(
        f"the repository at {backend.location} is encrypted with {kinds} (its key slots), not with what was "
        f"given; {fix}"
    )


def open_as_given(cfg: Config, envx: Environment, backend: Backend, *, store: Pins, expect: str) -> Repository:
    """`Repository.open` with `credentials`, then with the passphrase as given (`_open_exact`)
    when that differs and the first is wrong: for an opening outside `open_repository` (`phx key
    trust`: its pin `store` and the fingerprint it `expect`s), so that a repository an earlier
    Phoenix set that way opens there too."""
    from phoenix_backup.repo.repository import Repository

    creds, _given, held = _credentials(cfg, envx)
    try:
        return Repository.open(backend, creds, pins=store, expect=expect, notice=envx.notice)
    except WrongPassphrase:
        if held is None or held.exact is None:
            raise
        return _open_exact(envx, backend, replace(creds, passphrase=held.exact), held, store=store, expect=expect)


def _open_exact(
    envx: Environment,
    backend: Backend,
    creds: keyslots.Credentials,
    given: GivenPassphrase,
    *,
    cfg: Config | None = None,
    store: Pins | None = None,
    expect: str | None = None,
) -> Repository:
    """Open with the passphrase exactly as an earlier Phoenix used it from `given`'s source
    (`creds`): the UTF-8 byte-order mark a file starts with, or the line breaks the environment's
    value ends with, included. Says how to leave them behind; WrongPassphrase as any opening.
    `cfg`: its compression for the repository's writes; `store` (the pins) and `expect` as
    `Repository.open`'s."""
    from phoenix_backup.repo.repository import Repository

    compression = compressor_for(cfg) if cfg is not None else None
    store = pins(envx) if store is None else store
    repo = Repository.open(backend, creds, pins=store, expect=expect, compression=compression, notice=envx.notice)
    envx.opened_as_given = creds.passphrase
    what = (
        "starts with the UTF-8 byte-order mark (BOM) that begins"
        if given.exact is not None and given.exact.startswith(BOM)
        else "ends with the line break (CR/LF) that ends"
    )
    envx.notice(
        f"warning: the repository's passphrase {what} {given.source}, which Phoenix now leaves out; it opened "
        "with it this time; to drop it for good, run `phx key passwd` with the passphrase (without it) in "
        "PHX_NEW_PASSPHRASE"
    )
    return repo


def no_repository(
    backend: Backend,
    name: str,
    *,
    first: bool,
    config: Path | None = None,
    replicas: Sequence[str] = (),
    near: str | None = None,
) -> str:
    """Why there is no repository, and the fix: a missing folder may be a disk that is not mounted,
    so nothing but `phx init` ever creates the first target's repository. `config`: the config file
    (which may be a restored copy from another machine); `replicas`: the config's other targets,
    which may hold the repository (a read can name one with --target; `phx init` continues it);
    `near`: where the repository is (`_misplaced`) when the caller probed already ("" for nowhere)."""
    where = f"no repository at {backend.location} (target {name})"
    if not first:
        return f"{where}; run `phx sync --target {name}` to copy the repository there"
    near = _misplaced(backend, name) if near is None else near or None
    if near is not None:
        return f"{where}: {near}"
    other = (
        f"; to read the copy on another target of the config, add `--target {replicas[0]}`"
        f"{' (or ' + ', '.join(replicas[1:]) + ')' if len(replicas) > 1 else ''}, and `phx init` continues it here"
        if replicas
        else ""
    )
    if name == "local" and not os.path.isdir(backend.location):
        moved = (
            f"; if {config} came from another machine (a restore's copy), set `backupDir` (or "
            "`targets.local.path`) there to where the repository is now"
            if config is not None
            else ""
        )
        return (
            f"{where}: the folder does not exist; if the repository is on a disk that is not mounted, mount it "
            f"and run again, or create a new repository there with `phx init`{other}{moved}"
        )
    return f"{where}; create it with `phx init`{other}"


def _misplaced(backend: Backend, name: str) -> str | None:
    """Where the repository is when the local target's path names a file (an archive of it), a
    folder inside it or the folder it was copied into, with the fix; None otherwise."""
    from phoenix_backup.storage.local import repositories_below, repository_above

    if name == "git":
        return _other_branches(backend)
    if name in ("s3", "r2"):
        return _bucket_prefix_near(backend)
    if name != "local":
        return None
    path = Path(backend.location)
    if path.is_file():
        return (
            "it is a file, not a repository folder; if it is an archive of the repository (tar, zip), unpack it "
            "and give the folder that holds its `config`, `keys/` and `data/`"
        )
    above = repository_above(path.parent) if path.parent != path else None
    if above is not None:
        return f"it is inside the repository at {above}; give that folder instead"
    below = repositories_below(path) if path.is_dir() else []
    if len(below) == 1:
        return f"the repository is the folder {below[0]} inside it; give that folder instead"
    if below:
        listed = ", ".join(str(b) for b in below[:10]) + (f" and {len(below) - 10} more" if len(below) > 10 else "")
        return f"the folders {listed} inside it are repositories; give the one to read (`phx list --repo FOLDER`)"
    return None


def _bucket_prefix_near(backend: Backend) -> str | None:
    """The fix when a bucket's prefix is inside a repository or holds one right below it."""
    from phoenix_backup.storage.s3 import S3Backend
    from phoenix_backup.storage.wrappers import unwrap

    inner = unwrap(backend)
    if not isinstance(inner, S3Backend):
        return None
    near = inner.repository_near()
    if near is None:
        return None
    kind, prefixes = near
    urls = [f"s3://{inner.bucket}/{p}" if inner.settings.target == "s3" else f"the prefix {p or '/'}" for p in prefixes]
    if kind == "above":
        return f"it is inside the repository at {urls[0]}; give that location instead"
    if len(urls) > 1:  # several machines' repositories: none is picked
        return f"the repositories at {', '.join(urls)} are below it; give the one to read"
    return f"the repository is at {urls[0]}, below it; give that location instead"


def _other_branches(backend: Backend) -> str | None:
    """The fix when a Git remote lacks the branch named (`#BRANCH`): the branches it has."""
    from phoenix_backup.storage.git import GitBackend
    from phoenix_backup.storage.wrappers import unwrap

    inner = unwrap(backend)
    if not isinstance(inner, GitBackend):
        return None
    branches = inner.other_branches()
    if branches is None:
        return None
    if not branches:
        return "the remote is an empty Git repository; check the URL, or start a new repository there with `phx init`"
    listed = ", ".join(f"`#{b}`" for b in branches[:5])
    return (
        f"the remote has no branch {inner.branch}; its branches: {listed}; add the one that holds the backups "
        "to the URL"
    )


def _adopt_from_replica(cfg: Config, envx: Environment, backend: Backend, replicas: list[str]) -> bool:
    """Seed an empty first target with the config and key slots of the first replica that holds
    a repository. Unreachable replicas are skipped with a notice (a new repository is made)."""
    from phoenix_backup.repo.replicate import seed_repository  # `phx init` only: not at every start

    for other in replicas:
        source = target_backend(cfg, envx, other)
        try:
            if not source.exists():
                continue
            seed_repository(source, backend)
        except StorageError as exc:
            envx.notice(f"could not check target {other} for an existing repository: {exc}")
            continue
        finally:
            source.close()
        envx.notice(f"target {other} already holds this repository; {backend.location} now continues it")
        return True
    return False


def parse_time(text: str | None, option: str = "--time") -> datetime:
    """`option`'s RFC 3339 time with a UTC offset (now when None); UsageError naming it otherwise."""
    if text is None:
        return datetime.now().astimezone().replace(microsecond=0)
    iso = text
    # RFC 3339 allows a leap second (`23:59:60`), which a datetime cannot hold: it is taken as the
    # last microsecond of the second before it (the clocks that stamp captures repeat that second).
    # Without an offset it is refused below for that, as any time is.
    leap = re.fullmatch(r"(.{10}[Tt ]\d\d:\d\d:)60(?:\.\d+)?([Zz]|[+-]\d\d:\d\d)?", text)
    if leap:
        iso = f"{leap[1]}59.999999{leap[2] or ''}"
    try:
        # RFC 3339 allows a lower-case `z` (as `t`, which fromisoformat takes already).
        when = datetime.fromisoformat(iso[:-1] + "Z" if iso.endswith("z") else iso)
    except ValueError as exc:
        raise UsageError(f"{option} {text!r} is not RFC 3339; use e.g. 2026-03-15T14:30:00+01:00") from exc
    if when.tzinfo is None:
        raise UsageError(f"{option} {text!r} has no UTC offset; add one, e.g. {text}+00:00 or {text}Z")
    from phoenix_backup.repo.snapshot import MAX_YEAR, MIN_YEAR

    if not MIN_YEAR <= when.year <= MAX_YEAR:
        raise UsageError(f"{option} {text!r} is outside the years {MIN_YEAR} to {MAX_YEAR}; give a time in that range")
    return when


def require_workspace(cfg: Config) -> None:
    """SourceError when the config's workspace is not a folder (a backup has nothing to read)."""
    if not cfg.workspace.is_dir():
        raise SourceError(
            f"the workspace {cfg.workspace} does not exist or is not a folder; fix `workspace` in "
            f"{cfg.source or 'the config'}"
        )


def check_restore(
    cfg: Config, *, to: Path | None, delete: bool, to_database: str | None, home: Path | None = None
) -> None:
    """UsageError for a restore's options that do not go together: checked before its key is
    derived (`unlock_ahead`), so that a mistake costs no scrypt. `home`: this machine's home."""
    if delete and to is not None:
        raise UsageError("--delete applies to in-place restores only; --to DIR restores into a folder of its own")
    if to_database is not None and to is not None:
        raise UsageError("--to-database restores into a PostgreSQL server; it cannot be combined with --to DIR")
    if to is None:
        require_config_file(cfg, "a restore in place")
        refuse_workspace_of_another_machine(cfg, home)
    else:
        refuse_plain_copies_in_repository(cfg, to, "--to")


def refuse_workspace_of_another_machine(cfg: Config, home: Path | None = None) -> None:
    """UsageError when the workspace and the folder above it are both missing: the config is
    likely the old machine's (a restore's copy, `/home/olduser/argent`), and a restore in place
    would make that whole path here rather than put the agent where it belongs. Not in this
    machine's `home` (the same user's `~/agents/argent`, `~/agents` not made yet: this machine's
    own folder). A link on the way that points where nothing is (a disk not mounted) is named."""
    workspace = cfg.workspace
    parent = workspace.parent
    if os.path.lexists(workspace) or os.path.isdir(parent):
        return
    there = next((p for p in workspace.parents if os.path.lexists(p)), None)
    if there is not None and os.path.islink(there) and not os.path.isdir(there):
        raise UsageError(
            f"the workspace {workspace} is not there: {there} is a link to {os.readlink(there)}, which is not "
            "there (a disk not mounted?); mount it and run again, or set `workspace` in "
            f"{cfg.source or 'the config'} to where the agent belongs on this machine"
        )
    if home is not None and home != Path("/") and os.path.isdir(home) and in_home(workspace, home):
        return
    raise UsageError(
        f"the workspace {cfg.workspace} does not exist, nor the folder above it ({parent}): "
        f"{cfg.source or 'the config'} may come from another machine; set `workspace` there to where the agent "
        f"belongs on this machine, or create {parent} to restore there"
    )


def in_home(path: Path, home: Path) -> bool:
    """Whether `path` lies in `home`, `..` resolved (`~/../olduser/argent` is another's)."""
    return Path(os.path.normpath(path)).is_relative_to(os.path.normpath(home))


def refuse_plain_copies_in_repository(cfg: Config, folder: Path, what: str) -> None:
    """UsageError when `folder` (`restore --to`, `restore --at … --to`, `export --output`) lies in
    the local target's repository: the same rule for every command that writes plain copies,
    whichever target it reads from (storage/local.py `refuse_inside`); and any local repository
    above `folder` alike, the config file's own when `--repo` names another to read."""
    from phoenix_backup.storage.local import refuse_inside, repository_above

    if "local" in cfg.targets.enabled_names():
        refuse_inside(cfg.repository_path, folder, what)
    found = repository_above(folder)
    if found is not None:
        refuse_inside(found, folder, what)


def refuse_export_in_workspace(cfg: Config, folder: Path, what: str = "export") -> None:
    """UsageError when `export --output` (or `archive --output`, `what`) lies in the workspace:
    the next backup would take the export in (the secrets it holds unless `--sanitize`, and a copy
    of every store; an archive, which the next archive then holds again), and the agent would
    find it among its files. The same rule, and the same comparison, as
    `refuse_plain_copies_in_repository`."""
    from phoenix_backup.storage.local import is_inside

    known = cfg.source is not None or cfg.location is None  # a config from `--repo` alone knows no workspace
    if known and is_inside(cfg.workspace, folder):
        raise UsageError(
            f"--output {folder} is inside the workspace at {cfg.workspace.resolve()}, so the next backup would take "
            f"in the {what} and the secrets it may hold; choose a folder outside the workspace"
        )


def require_config_file(cfg: Config, what: str) -> None:
    """A config made from `--repo LOCATION` alone (no config file) knows no workspace: `what`,
    which writes the live agent, needs the real one."""
    if cfg.location is not None and cfg.source is None:
        raise UsageError(
            f"{what} needs a config file: without one Phoenix does not know where the workspace is; restore "
            "below a folder with --to DIR (the snapshot's own config comes back there too)"
        )


def cache_for(repo: Repository, envx: Environment) -> Cache:
    from phoenix_backup.repo.cache import Cache

    root = envx.env.get("PHX_CACHE_DIR")
    return Cache(repo.config.id, Path(root) if root else None)


def captures_cache(repo: Repository, envx: Environment) -> Path:
    """The folder of the capture segments' header cache (repo/captures.py `cached_header`)."""
    return cache_for(repo, envx).dir / "captures"


def is_tty() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A private temporary folder (mode 0700), removed afterwards whatever happened."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _check_schedule(cfg: Config) -> None:
    """`schedule.every`'s cron fields against the scheduler's own model (config/ only checks the
    shape: the model lives in schedule/, a layer above): "99 99 * * *" was a valid config to
    doctor, then stopped status and `schedule install` with an error naming no field."""
    from phoenix_backup.schedule.spec import ScheduleSpec

    try:
        ScheduleSpec.parse(cfg.schedule.every, cfg.schedule.at).next_after(datetime.now())  # "0 0 31 2 *": never
    except UsageError as error:
        raise ConfigError(f"{cfg.source}: schedule.every: {error}") from None


def load(envx: Environment, config_path: str | None, location: str | None = None) -> Config:
    """The config; with `location` (`--repo`, `PHX_REPOSITORY`) reading from that repository alone,
    from the config file when there is one, else from the ArgentOS defaults (a new machine).
    First, every command removes what killed restores left in the user's folders."""
    from phoenix_backup.config import find_config_path, load_config
    from phoenix_backup.sinks import leftovers
    from phoenix_backup.storage.targets import remember_append_only

    removed, problems = leftovers.clean()
    if removed:
        envx.notice(f"removed {len(removed)} temporary file(s) a killed restore left behind (e.g. {shown(removed[0])})")
    for problem in leftovers.bounded(problems):
        envx.notice(f"warning: {problem}")
    if location is None:
        cfg = load_config(find_config_path(config_path, envx.env), envx.env)
        _check_schedule(cfg)
        return remember_append_only(cfg, envx.env)
    from phoenix_backup.config.location import config_for_location

    explicit = config_path or envx.env.get("PHX_CONFIG")
    try:
        base: Config | None = load_config(find_config_path(config_path, envx.env), envx.env)
    except ConfigError:
        if explicit:
            raise  # a config that was asked for must exist
        base = None
    return remember_append_only(config_for_location(location, envx.env, base), envx.env)
