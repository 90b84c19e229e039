"""The `phx` application: the command group, the options every command takes, output, and the one
place where errors become exit codes. Each command lives in its own `cmd_<name>` module."""

from __future__ import annotations

import contextlib
import functools
import getpass
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

import click
from click.shell_completion import CompletionItem

from phoenix_backup import jsontext
from phoenix_backup._version import __version__
from phoenix_backup.cli import INTERRUPTED_MESSAGE
from phoenix_backup.cli.progress import Progress
from phoenix_backup.dirs import secrets_version
from phoenix_backup.errors import (
    Cancelled,
    ExitStatus,
    IdentityRequired,
    OutputFailed,
    PhoenixError,
    shown,
    shown_lines,
)
from phoenix_backup.ops import context
from phoenix_backup.ops.context import Environment, is_tty
from phoenix_backup.redaction import redact, without_secrets, without_secrets_in
from phoenix_backup.shell import end_child_groups

if TYPE_CHECKING:  # imported by the commands that use them, not by `phx --version`
    from phoenix_backup.config import Config
    from phoenix_backup.repo.snapshot import Latest

F = TypeVar("F", bound=Callable[..., Any])

# Where `latest_options` leaves its rule in the click context for `make_env`, and `repo_option`
# its location for `load_config`.
_LATEST_KEY = "phx.latest"
_REPO_KEY = "phx.repo"
_IDENTITY_KEY = "phx.identity"  # `identity_option`'s file, for `make_env`
_CONFIG_KEY = "phx.config"  # the config `load_config` loaded: its secrets are kept out of errors
_SECRETS_KEY = "phx.secrets"  # `known_secrets` as last found, with what it depends on
# The same config for a thread of the command (a replica's copy, `phx watch`'s writer): click's
# context is the main thread's alone, so a notice said by such a thread knew the environment's
# secrets only, and quoted a DSN's or an S3 key's as it was. One command runs at a time.
_COMMAND_CONFIG: dict[str, object] = {}
# Where the group leaves the options given before the command (`GlobalOptions`).
_GLOBAL_KEY = "phx.global"


# SIGTERM (systemd's `stop`, a shutdown, a container runtime, `kill`) and SIGHUP (`nohup`'s
# absence, a terminal closed) stop a command as Ctrl-C does. `phx watch` sets its own handlers.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
# Ctrl-C raises KeyboardInterrupt as Python's own handler does, through `_stop` so that a second
# signal while the stop runs is seen as one (a second Ctrl-C, or Ctrl-C then a closed terminal).
HANDLED_SIGNALS = (signal.SIGINT, *STOP_SIGNALS)
INTERRUPTED = 128 + signal.SIGINT  # the shell's convention: 128 + the signal's number


class Stopped(KeyboardInterrupt):
    """A stop signal received, raised in the main thread as Ctrl-C's KeyboardInterrupt is: every
    clean-up that Ctrl-C runs (temporary files removed, locks released, worker threads stopped)
    runs for it as well."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class _Stopping:
    started: bool = False
    as_json: bool = False  # the command's --json, for the line of a second signal


_STOPPING = _Stopping()


def _stop(signum: int, _frame: FrameType | None) -> None:
    if _STOPPING.started and signum == signal.SIGHUP:
        # A hang-up while stopping says nothing new: a closed terminal sends two (the shell
        # forwards its own to its jobs, the kernel sends one to the foreground group as the shell
        # exits), systemd's `SendSIGHUP=yes` one right after its SIGTERM. The stop runs to its end.
        return
    if _STOPPING.started:
        # A second signal while stopping: at once, as a kill would. Every object and file is
        # written under a temporary name, fsynced, then renamed, so nothing half-written bears a
        # final name; the next command removes the temporary files and the lock (docs/reliability.md).
        # The children in a session of their own (a hook, pg_restore) would run on, orphaned.
        end_child_groups()
        with contextlib.suppress(OSError):
            line = stderr_line("problem", _STOPPED_AT_ONCE, as_json=_STOPPING.as_json) + "\n"
            os.write(2, line.encode("utf-8", "replace"))
        os._exit(128 + signum)
    _STOPPING.started = True
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Stopped(signum)


_STOPPED_AT_ONCE = "stopped at once by a second signal; the next phx command removes what this one left"


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP raise `Stopped` in the main thread (where Python runs signal handlers),
    SIGINT raises KeyboardInterrupt; a second SIGINT or SIGTERM while that stop runs ends the
    process at once, a SIGHUP then is ignored (`_stop`). Signals ignored when the process started
    (`nohup` ignores SIGHUP, a script's background job SIGINT) stay ignored."""
    for sig in HANDLED_SIGNALS:
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, _stop)


def interrupted_status(exc: BaseException | None) -> int:
    """The exit code after an interruption: 128 + the signal's number (130 for Ctrl-C, 143 for
    SIGTERM, 129 for SIGHUP), found in `exc` or the exception it was raised from."""
    while exc is not None:
        if isinstance(exc, Stopped):
            return 128 + exc.signum
        if isinstance(exc, KeyboardInterrupt):
            return INTERRUPTED
        exc = exc.__cause__ or exc.__context__
    return INTERRUPTED


def drop_unwritable_output() -> None:
    """After a hang-up the terminal is gone: what stdout and stderr still buffer cannot be written,
    and Python's last flush at exit would fail and change the exit code to 120. Such a stream's
    descriptor is pointed at /dev/null instead, so the signal's exit code stands."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # closed before Phoenix started: nothing to drop
            continue
        try:
            stream.flush()
        except OSError:
            with contextlib.suppress(OSError, ValueError):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, stream.fileno())
                os.close(null)
        except ValueError:  # closed
            pass


def reader_gone() -> NoReturn:
    """stdout's reader went away (`phx ls | head -1`, a pager quit): end as a Unix tool killed by
    SIGPIPE does, silently, with 128 + SIGPIPE (141), and without Python's failing last flush."""
    drop_unwritable_output()
    sys.exit(128 + signal.SIGPIPE)


class TargetOutcome(Protocol):
    """A target's part of a command's result (backup, forget, prune, sync)."""

    @property
    def ok(self) -> bool: ...

    @property
    def error(self) -> str | None: ...


class Out:
    """Where a command's output goes, and how (plain text or one JSON document).

    `--quiet` leaves errors only: notices and progress are dropped, and so is the plain-text report
    of a command that changes something (a command whose result is data, such as `list`, still
    prints it). What failed (`problem`) and errors are always printed. With `--json` every line on
    stderr is a JSON object (`stderr_line`), as the progress lines are."""

    def __init__(self, as_json: bool, verbose: bool, quiet: bool = False, progress: Progress | None = None) -> None:
        self.as_json = as_json
        self.verbose = verbose
        self.quiet = quiet
        self.progress = progress if progress is not None else Progress()

    def notice(self, message: str) -> None:
        if not self.quiet:
            self._say("notice", message)

    def problem(self, message: str) -> None:
        """Something the command could not do (a file not saved, a target down): even with --quiet."""
        self._say("problem", message)

    def error(self, message: str, trace: str | None = None) -> None:
        """The error; with --json and --verbose, `trace` (the traceback) is a field of its line."""
        self._say("error", message, trace)

    def failed_targets(self, targets: Mapping[str, TargetOutcome]) -> None:
        """Each target that failed, said on stderr too (beside the report on stdout or the JSON
        document), so that a script or a terminal reading stderr sees why the run exited 1 or 3."""
        for name, target in targets.items():
            if not target.ok:
                self.problem(f"target {name} failed: {target.error}")

    def result(self, doc: object, text: str, *, data: bool = False) -> None:
        """The result on stdout. One that cannot be written there (stdout closed, a full disk, a
        device error) is an error, not a success with the output lost; a report that is not the
        command's data (`data`, or the JSON document) may be dropped when stdout is closed."""
        with self.progress.aside():
            if sys.stdout is None and (self.as_json or data):
                raise OutputFailed("stdout is closed")
            try:
                if self.as_json:
                    click.echo(said_json(doc))
                elif text and (data or not self.quiet):
                    click.echo(printable(shown_lines(said(text))))
            except BrokenPipeError:
                reader_gone()
            except OSError as exc:
                raise OutputFailed(exc.strerror or str(exc)) from exc

    def _say(self, kind: str, message: str, trace: str | None = None) -> None:
        with self.progress.aside():
            click.echo(stderr_line(kind, said(message), as_json=self.as_json, trace=trace), err=True)


def said(text: str) -> str:
    """`text` as every line of stdout and stderr is written: without the secrets this run knows
    (`known_secrets`). A result or notice quotes text Phoenix never vetted (a hook's output, a
    library's error), and a secret in it reached the terminal, `--json` and whatever collects them
    (journald, a CI log). URLs are left as they are: Phoenix shows its own redacted already."""
    return without_secrets(text, known_secrets())


def said_json(doc: object) -> str:
    """A JSON document as `said`: without the known secrets in any of its strings. A document
    none of whose text holds one (the usual case) is written as it is, found in one scan."""
    document = jsontext.dumps(doc, indent=2)
    secrets = known_secrets()
    if not any(s in document or jsontext.dumps(s)[1:-1] in document for s in secrets):
        return document
    return jsontext.dumps(without_secrets_in(jsontext.portable(doc), secrets), indent=2)


def bug_message(exc: BaseException, verbose: bool) -> str:
    """The one sentence for an exception Phoenix did not expect (a bug, not bad input). Its text
    is a library's, never vetted: without the run's secrets, nor a URL's credentials (`redacted`)."""
    what = f"{type(exc).__name__}: {redacted(str(exc))}" if str(exc) else type(exc).__name__
    fix = (
        "please report it with the traceback"
        if verbose
        else "run the command again with --verbose and report the traceback"
    )
    return f"unexpected internal error ({what}): a bug in Phoenix; {fix}"


def known_secrets() -> list[str]:
    """The secrets this run knows: the environment's (passphrases, AWS keys, a Git password), and
    once the command loaded its config (`load_config`) the config's too (keys, DSNs, the
    notification URLs)."""
    from phoenix_backup.config import Config
    from phoenix_backup.notify.message import env_secrets, secrets_of  # only on this rare path

    ctx = click.get_current_context(silent=True)
    cfg = ctx.meta.get(_CONFIG_KEY) if ctx is not None else _COMMAND_CONFIG.get(_CONFIG_KEY)
    # Every line printed asks: inside a command (its environment set for its life) the list is
    # kept until the config is loaded, a secret read or the passphrase file changed on disk.
    if ctx is None:
        return secrets_of(cfg, os.environ) if isinstance(cfg, Config) else env_secrets(os.environ)
    version = secrets_version(os.environ)
    kept = ctx.meta.get(_SECRETS_KEY)
    if kept is not None and kept[0] is cfg and kept[1] == version:
        return list(kept[2])
    found = secrets_of(cfg, os.environ) if isinstance(cfg, Config) else env_secrets(os.environ)
    ctx.meta[_SECRETS_KEY] = (cfg, version, tuple(found))
    return found


def redacted(text: str) -> str:
    """A traceback, a bug's message or an error under --verbose as it may be shown: without the
    run's secrets (`known_secrets`) nor a URL's credentials, query or token-like host. A traceback
    holds the text of every exception in its chain: a library's, never vetted."""
    return redact(text, known_secrets())


def say_bug(exc: BaseException, *, verbose: bool, as_json: bool, error: Callable[[str, str | None], None]) -> NoReturn:
    """Say a bug (an exception Phoenix did not expect) as one error, through `error(message,
    trace)`, and exit 1: the traceback (redacted) on stderr with --verbose, inside the JSON error
    line with --json, where stdout also gets the error document. In a command and outside one."""
    trace = redacted(traceback.format_exc()) if verbose else None
    if trace and not as_json:
        sys.stderr.write(shown_lines(trace))  # a library's text, a name: its escapes escaped
    message = bug_message(exc, verbose)
    error(message, trace if as_json else None)
    if as_json:
        click.echo(jsontext.dumps({"ok": False, "error": message, "errorType": "InternalError"}))
    sys.exit(int(ExitStatus.FAILURE))


def stderr_line(kind: str, message: str, *, as_json: bool, trace: str | None = None) -> str:
    """One line for stderr: `phx: MESSAGE` (`phx: error: MESSAGE`), or with `--json` an object
    `{"type": "notice", "level": "info"|"warning"|"problem", "message"}` or `{"type": "error",
    "message"}` (with `traceback` under --verbose; docs/cli.md), so that a program reading stderr
    parses every line. The one place every error, warning and notice is printed: on a terminal
    (human output) its control characters are escaped as `shown` escapes a name's (a hostile file
    name's newline or ANSI escape, whichever message carries it), so the line is one line of text;
    what `shown` escaped already is plain text and stays as it is. JSON escapes them itself."""
    if not as_json:
        return printable(shown(f"phx: error: {message}" if kind == "error" else f"phx: {message}"))
    if kind == "error":
        return jsontext.dumps({"type": "error", "message": message, **({"traceback": trace} if trace else {})})
    level = "problem" if kind == "problem" else "info"
    if message.startswith("warning: "):
        level, message = "warning", message.removeprefix("warning: ")
    return jsontext.dumps({"type": "notice", "level": level, "message": message})


def printable(text: str) -> str:
    """`text` as a terminal takes it: a name that is not UTF-8 as its bytes (surrogateescape), and
    a lone surrogate from hostile input (JSON's \\ud800, which no encoding takes) as an escape."""
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def make_env(out: Out) -> Environment:
    tty = is_tty()

    # A question names what it asks about (a snapshot's name, a database's file name): escaped as
    # a message's are (`stderr_line`).
    def prompt(question: str) -> str:
        with out.progress.aside():
            return getpass.getpass(printable(shown(question)))

    def confirm(question: str) -> bool:
        with out.progress.aside():
            return click.confirm(printable(shown(question)), default=False, err=True)

    ctx = click.get_current_context(silent=True)
    latest = ctx.meta.get(_LATEST_KEY) if ctx is not None else None
    env = dict(os.environ)
    identity = ctx.meta.get(_IDENTITY_KEY) if ctx is not None else None
    if isinstance(identity, str):
        env["PHX_IDENTITY_FILE"] = identity  # --identity FILE: one way in for the ops layer
    from phoenix_backup.repo.snapshot import Latest  # a command that runs: not at every start

    return Environment(
        env=env,
        interactive=tty,
        prompt=prompt if tty else None,
        confirm=confirm if tty else None,
        notice=out.notice,
        progress=out.progress,
        latest=latest if isinstance(latest, Latest) else Latest(),
    )


@dataclass(frozen=True)
class GlobalOptions:
    """The options given before the command (`phx --json list`), which hold for the command as if
    given after it (`phx list --json`)."""

    config_path: str | None = None
    as_json: bool = False
    verbose: bool = False
    quiet: bool = False
    repo: str | None = None


def global_options() -> GlobalOptions:
    ctx = click.get_current_context(silent=True)
    found = ctx.meta.get(_GLOBAL_KEY) if ctx is not None else None
    return found if isinstance(found, GlobalOptions) else GlobalOptions()


_CONFIG_HELP = "Config file (overrides PHX_CONFIG and the search paths)."
_JSON_HELP = "Print one JSON document on stdout (progress, notices and errors as JSON lines on stderr)."
_VERBOSE_HELP = "More detail; tracebacks on errors."
_QUIET_HELP = "Print errors only (and the data a listing command exists to show)."
_REPO_HELP = (
    "Read this repository alone, with or without a config file: a folder, s3://BUCKET/PREFIX, "
    "r2://ACCOUNT_ID/BUCKET/PREFIX or a Git URL (default: PHX_REPOSITORY, else the config's targets)."
)


def given_once(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> str | None:
    """The one value of an option that takes one (click keeps the last of several silently: `phx
    --config A --config B list` read B alone)."""
    if len(set(values)) > 1:
        raise click.UsageError(f"{param.opts[0]} is given twice ({values[0]} and {values[-1]}); give it once", ctx)
    return values[-1] if values else None


def _config_option() -> Callable[[F], F]:
    """--config, before the command (`phx`, `phx key`) or after it: one value."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        multiple=True,
        callback=given_once,
        help=_CONFIG_HELP,
    )


def common(f: F) -> F:
    """--config, --json, --verbose and --quiet on every command (DESIGN §2), given before the
    command (`phx --json list`) or after it, and one error mapping."""

    @_config_option()
    @click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
    @click.option("--verbose", "-v", is_flag=True, help=_VERBOSE_HELP)
    @click.option("--quiet", "-q", is_flag=True, help=_QUIET_HELP)
    @functools.wraps(f)
    def wrapper(*args: Any, config_path: str | None, as_json: bool, verbose: bool, quiet: bool, **kwargs: Any) -> None:
        given = global_options()
        as_json = as_json or given.as_json
        _STOPPING.as_json = as_json
        verbose = verbose or given.verbose
        quiet = quiet or given.quiet
        _check_globals(given, config_path, verbose, quiet)
        config_path = config_path or given.config_path
        progress = Progress(
            sys.stderr, terminal=sys.stderr.isatty() and not as_json and not quiet, json_lines=as_json and not quiet
        )
        out = Out(as_json, verbose, quiet, progress)
        envx = make_env(out)
        _COMMAND_CONFIG.clear()  # an earlier command's, in this process (a test's)
        try:
            status = f(*args, out=out, envx=envx, config_path=config_path, **kwargs)
        except Cancelled as exc:
            # "n" at a prompt: nothing was done, as asked; not a failure.
            out.problem(str(exc))
            if as_json:
                click.echo(jsontext.dumps({"cancelled": True, "message": str(exc)}))
            sys.exit(int(exc.exit_status))
        except PhoenixError as exc:
            if isinstance(exc, IdentityRequired):
                ctx = click.get_current_context(silent=True)
                exc.command = ctx.command_path if ctx is not None else None
            # Phoenix's own sentence, whose URLs are shown redacted where it is written; a secret the
            # run knows never shows in it. Under --verbose the traceback (every exception of the
            # chain: a library's text) and the message are redacted as a bug's are.
            message = redacted(str(exc)) if verbose else without_secrets(str(exc), known_secrets())
            trace = redacted(traceback.format_exc()) if verbose else None
            if trace and not as_json:
                out.progress.clear()
                sys.stderr.write(shown_lines(trace))  # a message's name, a library's text: escaped
            out.error(message, trace if as_json else None)
            if as_json:
                with contextlib.suppress(OSError):  # stdout may be what failed (`output_failed`)
                    click.echo(jsontext.dumps({"ok": False, "error": message, "errorType": type(exc).__name__}))
            drop_unwritable_output()
            sys.exit(int(exc.exit_status))
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own: cli/main.py says them
        except Exception as exc:  # not a Phoenix error: a bug, said as one error like any other
            out.progress.clear()
            say_bug(exc, verbose=verbose, as_json=as_json, error=out.error)
        except KeyboardInterrupt as exc:
            # Ctrl-C, SIGTERM or SIGHUP (`Stopped`): the same stop and line, the signal's exit code.
            # After a hang-up the terminal may be gone: what cannot be written is not said.
            with contextlib.suppress(OSError):
                out.progress.interrupted()
                message = INTERRUPTED_MESSAGE
                out.problem(message)
                if as_json:
                    click.echo(jsontext.dumps({"ok": False, "error": message, "errorType": "Interrupted"}))
            drop_unwritable_output()
            sys.exit(interrupted_status(exc))
        sys.exit(int(status or ExitStatus.OK))

    return wrapper  # type: ignore[return-value]


def _check_globals(given: GlobalOptions, config_path: str | None, verbose: bool, quiet: bool) -> None:
    ctx = click.get_current_context()
    if given.config_path and config_path and given.config_path != config_path:
        raise click.UsageError(f"--config is given twice ({given.config_path} and {config_path}); give it once", ctx)
    if verbose and quiet:
        raise click.UsageError("--quiet and --verbose cannot be used together; choose one", ctx)
    if given.repo and not any(p.name == "repo_location" for p in ctx.command.params):
        raise click.UsageError(no_repo_option(ctx.command_path), ctx)


def no_repo_option(command_path: str) -> str:
    """The error of `--repo` given to a command that works on the config's targets (before or
    after the command's name: `phx --repo X backup`, `phx backup --repo X`)."""
    return (
        f"`{command_path}` does not take --repo: it works on the config's targets; "
        "drop --repo (or give a config with --config)"
    )


def load_config(out: Out, envx: Environment, config_path: str | None) -> Config:
    """The command's config; for a command with `--repo` (`repo_option`), reading from that
    repository (or PHX_REPOSITORY's) alone, with no config file needed."""
    ctx = click.get_current_context(silent=True)
    location = ctx.meta.get(_REPO_KEY) if ctx is not None else None
    cfg = context.load(envx, config_path, location if isinstance(location, str) else None)
    if ctx is not None:
        ctx.meta[_CONFIG_KEY] = _COMMAND_CONFIG[_CONFIG_KEY] = cfg
    for warning in cfg.warnings:
        out.notice(f"warning: {warning}")
    return cfg


def _stash(f: F, key: str, build: Callable[[dict[str, Any]], object], options: list[click.Option]) -> F:
    """Add `options` to the command `f`; their values go, through `build`, into the click context
    under `key` instead of into `f`'s arguments (`load_config` and `make_env` read them there)."""
    names = [str(o.name) for o in options]

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        click.get_current_context().meta[key] = build({name: kwargs.pop(name) for name in names})
        return f(*args, **kwargs)

    params = wrapper.__dict__.setdefault("__click_params__", [])
    params.extend(reversed(options))
    return wrapper  # type: ignore[return-value]


def repo_option(f: F) -> F:
    """`--repo LOCATION` (else `PHX_REPOSITORY`) for the commands that read: a folder, s3://BUCKET/PREFIX,
    r2://ACCOUNT/BUCKET/PREFIX or a Git URL, so that a new machine with nothing but the repository
    and its key can list and restore (config/location.py)."""
    option = click.Option(
        ["--repo", "repo_location"], metavar="LOCATION", multiple=True, callback=given_once, help=_REPO_HELP
    )

    def build(v: dict[str, Any]) -> str | None:
        return v["repo_location"] or global_options().repo or os.environ.get("PHX_REPOSITORY") or None

    f = identity_option(f)
    return _stash(f, _REPO_KEY, build, [option])


def identity_option(f: F) -> F:
    """`--identity FILE` (else `PHX_IDENTITY_FILE`, else a prompt on a terminal): the age identity that
    reads a write-only repository, whose machine that backs up holds only its recipients
    (docs/write-only.md). Every command that reads takes it."""
    option = click.Option(
        ["--identity", "identity_file"],
        metavar="FILE",
        type=click.Path(dir_okay=False),
        help="The age identity file that reads the repository (default: PHX_IDENTITY_FILE, "
        "encryption.identityFile; a write-only repository asks for it on a terminal).",
    )
    return _stash(f, _IDENTITY_KEY, lambda v: v["identity_file"], [option])


# Every command lives in cli/cmd_<name>.py and registers itself on `cli` when imported. Only the
# command being run is imported: a scheduled `phx backup` should not pay for loading `export`,
# `archive` or `doctor` (about 50 ms of a 0.4 s no-change backup).
COMMANDS = (
    "archive",
    "backup",
    "completion",
    "demo",
    "diff",
    "doctor",
    "drill",
    "dump",
    "export",
    "forget",
    "import",
    "init",
    "key",
    "list",
    "ls",
    "prune",
    "repair",
    "restore",
    "schedule",
    "status",
    "sync",
    "unlock",
    "verify",
    "watch",
)


class LazyGroup(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_ARGS_KEY] = list(args)  # for `--version`, which runs before `--json` is parsed
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"phoenix_backup.cli.cmd_{cmd_name}")
        return super().get_command(ctx, cmd_name)


_ARGS_KEY = "phoenix.args"


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """`phx --version`: the version, as a JSON document with `--json`."""
    if not value or ctx.resilient_parsing:
        return
    if "--json" in ctx.meta.get(_ARGS_KEY, ()):
        click.echo(jsontext.dumps({"name": "phx", "version": __version__}))
    else:
        click.echo(f"phx, version {__version__}")
    ctx.exit()


def _global_params(f: F) -> F:
    """The options of the group `phx` (and of `phx key`, `phx repair`, `phx schedule`)."""
    f = click.option(
        "--repo",
        "repo",
        metavar="LOCATION",
        multiple=True,
        callback=given_once,
        help=_REPO_HELP + " Only for the commands that read.",
    )(f)
    f = click.option("--quiet", "-q", is_flag=True, help=_QUIET_HELP)(f)
    f = click.option("--verbose", "-v", is_flag=True, help=_VERBOSE_HELP)(f)
    f = click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)(f)
    return _config_option()(f)


def _remember_globals(
    ctx: click.Context, config_path: str | None, as_json: bool, verbose: bool, quiet: bool, repo: str | None
) -> None:
    """Keep a group's options for its commands, added to those given before it."""
    given = global_options()
    for name, before, now in (("--config", given.config_path, config_path), ("--repo", given.repo, repo)):
        if before and now and before != now:
            raise click.UsageError(f"{name} is given twice ({before} and {now}); give it once", ctx)
    ctx.meta[_GLOBAL_KEY] = GlobalOptions(
        config_path or given.config_path,
        as_json or given.as_json,
        verbose or given.verbose,
        quiet or given.quiet,
        repo or given.repo,
    )


def command_group(f: Callable[[], None]) -> Callable[..., None]:
    """A group of commands (`phx key`) that takes the global options after its name as well
    (`phx key --json list`), as if they were given before it."""

    @functools.wraps(f)
    def wrapper(config_path: str | None, as_json: bool, verbose: bool, quiet: bool, repo: str | None) -> None:
        _remember_globals(click.get_current_context(), config_path, as_json, verbose, quiet, repo)
        f()

    return _global_params(wrapper)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_version,
    help="Show the version and exit (a JSON document with --json).",
)
@_global_params
@click.pass_context
def cli(
    ctx: click.Context, config_path: str | None, as_json: bool, verbose: bool, quiet: bool, repo: str | None
) -> None:
    """Phoenix: consistent, deduplicated, encrypted backups of an AI agent's workspace.

    The options below may also be given after the command (`phx list --json`).

    \b
    Quick start:
      phx init --workspace ~/argent --repo ~/backups/argent
      phx backup && phx list && phx verify
      phx restore --latest --to /tmp/restored
    """
    _remember_globals(ctx, config_path, as_json, verbose, quiet, repo)


# Every scope a snapshot can have: a backup's, and a restore's safety snapshot.
SCOPES = ("full", "memory", "databases", "identity", "config", "pre-restore")

_SCOPE_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("memory", "--memory-only", "Memory files and memory databases only."),
    ("databases", "--databases-only", "Databases only."),
    ("identity", "--identity-only", "Identity files only (SOUL.md, IDENTITY.md, ...)."),
    ("config", "--config-only", "Configuration files only."),
)


def scope_options(*, config: bool = False) -> Callable[[F], F]:
    """`--memory-only`, `--databases-only`, `--identity-only` (and `--config-only`), passed to the
    command as `scope` (None when none is given). They exclude each other: two are a usage error."""
    flags = [flag for flag in _SCOPE_FLAGS if config or flag[0] != "config"]

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            chosen = [(scope, opt) for scope, opt, _help in flags if kwargs.pop(f"only_{scope}")]
            if len(chosen) > 1:
                raise click.UsageError(
                    f"{' and '.join(opt for _s, opt in chosen)} cannot be used together; choose one scope",
                    ctx=click.get_current_context(silent=True),
                )
            return f(*args, scope=chosen[0][0] if chosen else None, **kwargs)

        for scope, opt, text in reversed(flags):
            click.option(opt, f"only_{scope}", is_flag=True, help=text)(wrapper)
        return wrapper  # type: ignore[return-value]

    return decorate


def latest_options(f: F) -> F:
    """`--scope`, `--tag` and `--host`: what `latest` selects (DESIGN §2: by default the newest
    complete full-scope snapshot from this host)."""
    options = [
        click.Option(
            ["--scope", "latest_scope"],
            type=click.Choice(SCOPES),
            help="`latest` is the newest snapshot of this scope (default: full; pre-restore picks safety snapshots).",
        ),
        click.Option(
            ["--tag", "latest_tags"],
            multiple=True,
            metavar="TAG",
            help="`latest` is the newest snapshot carrying this tag (repeatable).",
        ),
        click.Option(
            ["--host", "latest_host"],
            metavar="HOST",
            help="`latest` is the newest snapshot of this host (default: this host's).",
        ),
    ]

    def build(v: dict[str, Any]) -> Latest:
        from phoenix_backup.repo.snapshot import Latest

        return Latest(host=v["latest_host"], scope=v["latest_scope"] or "full", tags=tuple(v["latest_tags"]))

    return _stash(f, _LATEST_KEY, build, options)


def complete_snapshots(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Shell completion of a snapshot: the ids in the repository that start with what was typed,
    as 8-character prefixes (the whole id once 8 characters are typed), and `latest`. Snapshot
    objects are named by their id, so listing them needs no passphrase and decrypts nothing. Only
    a local or S3/R2 repository is listed (a Git target would need a clone); a failure completes
    nothing, silently: a shell's Tab must never print an error or ask for a passphrase."""
    from phoenix_backup.ops.context import enabled_targets, target_backend

    params: dict[str, Any] = {}
    for c in reversed(_context_chain(ctx)):
        params.update({k: v for k, v in c.params.items() if v not in (None, False, ())})
    config_path = params.get("config_path")
    location = params.get("repo_location") or params.get("repo") or os.environ.get("PHX_REPOSITORY")
    envx = Environment(env=dict(os.environ))
    try:
        cfg = context.load(envx, config_path, location)
        name = params.get("target") or enabled_targets(cfg)[0]
        if name == "git":
            return []
        backend = target_backend(cfg, envx, name)
        try:
            ids = sorted(info.name.rsplit("/", 1)[-1] for info in backend.list("snapshots/"))
        finally:
            backend.close()
    except Exception:  # completion is a convenience: whatever fails, offer nothing
        return []
    typed = incomplete.lower()
    shown = {i if len(typed) >= 8 else i[:8] for i in ids if i.startswith(typed)}
    found = [CompletionItem(v) for v in sorted(shown)]
    if "latest".startswith(incomplete):
        found.append(CompletionItem("latest"))
    return found


def _context_chain(ctx: click.Context) -> list[click.Context]:
    chain: list[click.Context] = []
    at: click.Context | None = ctx
    while at is not None:
        chain.append(at)
        at = at.parent
    return chain


def check_target(target: str | None, cfg: Config | None = None, envx: Environment | None = None) -> None:
    """Validate `--target NAME` (an enabled target of `cfg`) and make it the target that
    `open_repository` reads from for this command (`envx.target`)."""
    from phoenix_backup.errors import UsageError
    from phoenix_backup.storage.targets import TARGET_NAMES, check_target_name

    if target is None:
        return
    if cfg is None:
        if target not in TARGET_NAMES:
            raise UsageError(f"unknown target {target!r}; use one of {', '.join(TARGET_NAMES)}")
    else:
        check_target_name(cfg, target)
    if envx is not None:
        envx.target = target


def target_option(f: F) -> F:
    """`--target NAME` for commands that read (list, restore, verify, ...)."""
    return click.option(
        "--target",
        metavar="NAME",
        help="Work from this target alone: local, git, s3 or r2 (default: the first enabled).",
    )(f)


def answer_option(f: F) -> F:
    """`--answer-timeout SECONDS` for the diagnoses (doctor, status): a remote target's deadline."""
    from phoenix_backup.ops.context import DIAGNOSIS_SECONDS

    return click.option(
        "--answer-timeout",
        "answer_timeout",
        type=click.FloatRange(min=1, max=600),
        default=DIAGNOSIS_SECONDS,
        show_default=True,
        metavar="SECONDS",
        help="A remote target that takes longer to connect or to start an answer is said not to answer "
        "(raise it for a slow link; a backup waits longer).",
    )(f)


def thaw_option(f: F) -> F:
    """`--thaw-timeout SECONDS` for commands that read pack data (restore, verify --read-data, ...)."""
    return click.option(
        "--thaw-timeout",
        "thaw_timeout",
        type=click.FloatRange(min=0),
        default=0,
        show_default=True,
        metavar="SECONDS",
        help="Packs in S3 GLACIER/DEEP_ARCHIVE: request their restore and wait up to this long.",
    )(f)
