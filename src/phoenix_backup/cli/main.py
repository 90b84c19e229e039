"""The `phx` entry point: the application (its commands are imported when run, see `cli.app`),
and click's own errors turned into Phoenix's one-line format."""

from __future__ import annotations

import atexit
import contextlib
import signal
import sys
from typing import NoReturn

import click

from phoenix_backup import jsontext
from phoenix_backup.cli.app import (
    HANDLED_SIGNALS,
    cli,
    drop_unwritable_output,
    interrupted_status,
    no_repo_option,
    say_bug,
    stderr_line,
    stop_on_signals,
)
from phoenix_backup.errors import ExitStatus
from phoenix_backup.process import hide_process_memory, set_malloc_options
from phoenix_backup.process import limit_malloc_arenas as _limit_malloc_arenas

__all__ = ["cli", "main"]


# glibc's mallopt parameter of the heap a process keeps freed (`keep_freed_heap`); the arena and
# mmap settings every process makes are `process.limit_malloc_arenas`.
_M_TRIM_THRESHOLD = -1
RESTORE_TRIM_THRESHOLD = 8 << 20
BACKUP_TRIM_THRESHOLD = 2 << 20


def keep_freed_heap(limit: int = RESTORE_TRIM_THRESHOLD) -> None:
    """A restore's decrypting threads free one 256 KiB blob after another. With the mmap threshold
    fixed, glibc's trim threshold drops to 128 KiB and hands each freed stretch at the top of the
    heap back to the kernel, so the next blob's output faults its pages in again (68 % of a
    restore's page faults were in zstd writing fresh output). Keeping up to 8 MiB freed: 20,000
    page faults instead of 89,000-96,000 and less system time on a 600 MB restore, at the same peak
    memory (docs/benchmarks.md). A backup's 256 KiB database reads, copies and sealed outputs do
    the same, and keep BACKUP_TRIM_THRESHOLD: 32,000-37,000 page faults instead of 34,000-56,000
    on the 600 MB sample at the same peak memory (8 MiB: 27,000-28,000, but 2.5-7 MB more)."""
    set_malloc_options((_M_TRIM_THRESHOLD, limit))


def ignore_stops_while_exiting() -> None:
    """Once every thread has been waited for and every exit handler has run, `phx` has nothing
    left that a stop signal could end or save: what remains is Python tearing itself down. Python
    puts each signal it handles back to its default action before that teardown, so a second
    Ctrl-C or SIGTERM there (after the stop's line was said, the exit code chosen) killed the
    process: exit -2 or -15 instead of 130 or 143. Ignored from here, the exit code stands."""
    for sig in HANDLED_SIGNALS:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_IGN)


def main() -> None:
    _limit_malloc_arenas()
    # Every command may hold the passphrase (its environment) and the master secrets, a backup
    # or a restore for hours: no other process of the user reads its memory (see the function).
    hide_process_memory()
    stop_on_signals()
    # Registered first, so run last: see the function.
    atexit.register(ignore_stops_while_exiting)
    argv = sys.argv[1:]
    try:
        cli.main(prog_name="phx", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        if wants_json(argv, exc.ctx):  # the help is for people: a program gets the one line that says what is missing
            _usage_error(f"missing command; see `{exc.ctx.command_path if exc.ctx else 'phx'} --help`")
        click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
        sys.exit(int(ExitStatus.USAGE))
    except click.UsageError as exc:
        if isinstance(exc, click.NoSuchOption) and exc.option_name.split("=")[0] == "--repo" and exc.ctx:
            exc = click.UsageError(no_repo_option(exc.ctx.command_path), exc.ctx)  # not "Did you mean '--help'?"
        # One line in Phoenix's error format instead of click's usage block.
        hint = f"; see `{exc.ctx.command_path if exc.ctx else _read_command_line(argv)[0]} --help`"
        message = f"{exc.format_message().rstrip('.')}{hint}"
        if wants_json(argv, exc.ctx):
            _usage_error(message)
        click.echo(stderr_line("error", message, as_json=False), err=True)
        sys.exit(int(ExitStatus.USAGE))
    except click.exceptions.Abort as exc:  # click's word for a KeyboardInterrupt (or `Stopped`) it caught
        with contextlib.suppress(OSError):
            click.echo(stderr_line("problem", "interrupted", as_json=wants_json(argv, None)), err=True)
        drop_unwritable_output()
        sys.exit(interrupted_status(exc.__cause__))
    except click.ClickException as exc:
        click.echo(stderr_line("error", exc.format_message(), as_json=wants_json(argv, None)), err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug outside a command (`cli.app.common` says those in it)
        as_json = wants_json(argv, None)

        def error(message: str, trace: str | None) -> None:
            click.echo(stderr_line("error", message, as_json=as_json, trace=trace), err=True)

        say_bug(exc, verbose=bool({"--verbose", "-v"} & set(argv)), as_json=as_json, error=error)


def wants_json(argv: list[str], ctx: click.Context | None) -> bool:
    """Whether `--json` was given as an option: from the parsed options when click got that far,
    else from the command line, where a `--json` that is an option's value (`--path --json`,
    `--to --json`) is not one. The options that take a value are those of the command the
    tokens so far name: the group's, then after a command's name that command's (`phx --bogus
    restore --to --json` restores into `--json`)."""
    at = ctx
    while at is not None:
        if at.params.get("as_json"):
            return True
        at = at.parent
    return _read_command_line(argv)[1]


def _read_command_line(argv: list[str]) -> tuple[str, bool]:
    """(the path of the command the tokens name, `phx restore` say; whether `--json` is given as
    an option), read the way `wants_json` says, for an error click raised before it knew the
    command (`Option '--to' requires an argument` comes without its context)."""
    command: click.Command = cli
    path = ["phx"]
    takes_value = _value_options(command)
    value_next = as_json = False
    for token in argv:
        if value_next:
            value_next = False
        elif token == "--":
            break
        elif token == "--json":
            as_json = True
        elif token.startswith("-"):
            value_next = token in takes_value
        elif isinstance(command, click.Group):
            sub = command.get_command(click.Context(command), token)
            if sub is not None:
                command, takes_value = sub, _value_options(sub)
                path.append(token)
    return " ".join(path), as_json


def _value_options(command: click.Command) -> set[str]:
    return {
        name
        for param in command.params
        if isinstance(param, click.Option) and not param.is_flag and not param.count
        for name in param.opts
    }


def _usage_error(message: str) -> NoReturn:
    """With --json: the error's line on stderr, and on stdout the document of every error."""
    click.echo(stderr_line("error", message, as_json=True), err=True)
    click.echo(jsontext.dumps({"ok": False, "error": message, "errorType": "UsageError"}))
    sys.exit(int(ExitStatus.USAGE))


if __name__ == "__main__":
    main()
