"""Finding, reading and writing the config file; validation itself lives in `parse`."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from phoenix_backup.config.defaults import SEARCH_PATHS
from phoenix_backup.config.model import Config
from phoenix_backup.config.parse import parse_config
from phoenix_backup.errors import ConfigError


def _expand_home(text: str, env: Mapping[str, str]) -> Path:
    # HOME is read now, not at import, so tests and `sudo -u` see the home they set.
    home = env.get("HOME") or os.path.expanduser("~")
    if text == "~" or text.startswith("~/"):
        return Path(home + text[1:])
    return Path(os.path.expanduser(text))


def find_config_path(explicit: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The config file to use: `--config` > `PHX_CONFIG` > the first existing search path."""
    environment: Mapping[str, str] = os.environ if env is None else env
    chosen = os.fspath(explicit) if explicit is not None else environment.get("PHX_CONFIG")
    if chosen:
        path = _expand_home(chosen, environment)
        if not path.exists() and path.is_symlink():
            raise ConfigError(
                f"config file {path} is a symbolic link that leads nowhere (a missing target or a loop); "
                "point it at the JSON file or fix the path"
            )
        if not path.exists():
            quoted = shlex.quote(str(path))
            raise ConfigError(
                f"config file {path} does not exist; create one with `phx init --config {quoted}` or fix the path"
            )
        return path
    for candidate in SEARCH_PATHS:
        path = _expand_home(candidate, environment)
        if path.is_file():
            return path
    raise ConfigError(
        f"no config file found (looked for {', '.join(SEARCH_PATHS)}); create one with `phx init` or pass --config PATH"
    )


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json keeps the last of two equal keys silently; a config saying two things is an error.
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ConfigError(f'key "{key}" appears twice in one object; keep only one')
        result[key] = value
    return result


def _reject_constant(name: str) -> object:
    raise ConfigError(f"{name} is not a valid JSON number; write a plain number")


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, decode and validate one config file; every error names the file."""
    try:
        text = _read_config_text(path)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist; create one with "
            f"`phx init --config {shlex.quote(str(path))}` or fix the path"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; point to the JSON file") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable by this user; fix its owner or permissions") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read ({error.strerror})") from None
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"config file {path} is not valid JSON: {error.msg} at line {error.lineno}, "
            f"column {error.colno}; fix the syntax there"
        ) from None
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except (ValueError, RecursionError) as error:  # a number of over 4,300 digits; nesting too deep
        raise ConfigError(f"config file {path} is not valid JSON ({error}); fix it") from None
    try:
        return parse_config(data, source=path, env=env)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


# How long a named pipe's writer may take to come (a secrets helper that writes the config when its
# reader has opened the pipe): long enough for any such helper, short of waiting for ever.
PIPE_WRITER_WAIT = 10.0


def _read_config_text(path: Path) -> str:
    # Opened without blocking: a named FIFO nothing writes to would block open() for ever. A pipe
    # that has a writer (`--config <(generate-config)`) is then read to its end; a device is refused
    # (/dev/zero never ends).
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(descriptor, "rb") as handle:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(path)
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise ConfigError(f"config file {path} is a device, not a file; point to the JSON file")
        data = _first_bytes(descriptor) if stat.S_ISFIFO(mode) else None
        if data == b"":
            # No writer yet: a named pipe whose writer opens it after us (`mkfifo`, then a helper that
            # writes the config when a reader comes) was refused before its writer came. Waited for,
            # boundedly: a pipe turns readable when a writer writes, or comes and leaves.
            select.select([descriptor], [], [], PIPE_WRITER_WAIT)
            data = _first_bytes(descriptor)
            if data == b"" and not select.select([descriptor], [], [], 0)[0]:
                raise ConfigError(
                    f"config file {path} is a pipe that nothing wrote to within {PIPE_WRITER_WAIT:g} s; "
                    "point to the JSON file"
                )
        # None: a writer is there (`--config <(generate-config)`), read as slowly as it writes.
        os.set_blocking(descriptor, True)
        data = (data or b"") + handle.read()
    if stat.S_ISFIFO(mode) and not data:
        raise ConfigError(f"config file {path} is a pipe that nothing writes to; point to the JSON file")
    return data.decode("utf-8-sig")  # -sig: editors on Windows add a BOM


def _first_bytes(descriptor: int) -> bytes | None:
    """What a pipe holds now without waiting: b"" when no writer is there, None when one is but has
    not written yet."""
    try:
        return os.read(descriptor, 1 << 16)
    except BlockingIOError:
        return None


def write_config(path: Path, data: Mapping[str, object], *, force: bool = False) -> None:
    """Write `data` as the config file at `path`, atomically and readable by the owner only."""
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; choose a file name")
    if path.exists() and not force:
        raise ConfigError(_exists_message(path))
    try:
        _make_private_folders(path.parent)
        # mkstemp creates the file 0600, so secrets are never briefly world-readable.
        descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise ConfigError(
            f"cannot create config file {path} ({error.strerror}); check the folder's permissions"
        ) from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o600)
        if force:
            os.replace(temp_name, path)
        else:
            _link_exclusively(temp_name, path)
        _fsync_directory(path.parent)
    except FileExistsError:
        _remove(temp_name)
        raise ConfigError(_exists_message(path)) from None
    except OSError as error:
        _remove(temp_name)
        raise ConfigError(
            f"cannot write config file {path} ({error.strerror}); check the folder's permissions and free space"
        ) from None


def _make_private_folders(folder: Path) -> None:
    # mkdir(parents=True) gives intermediate folders the default mode; each one made here is 0700
    # because ~/.argentos and ~/.config/argentos hold secrets.
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for new_folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            new_folder.mkdir(mode=0o700)


def _link_exclusively(temp_name: str, path: Path) -> None:
    # link() fails if the name appeared since the exists() check: never clobber without --force.
    try:
        os.link(temp_name, path)
    except FileExistsError:
        raise
    except OSError:
        # Filesystems without hard links (vfat, some FUSE mounts): the earlier check must do.
        if path.exists():
            raise FileExistsError(path) from None
        os.replace(temp_name, path)
        return
    os.unlink(temp_name)


def _exists_message(path: Path) -> str:
    return f"config file {path} already exists; pass --force to replace it (the repository is left as it is)"


def _remove(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


def _fsync_directory(directory: Path) -> None:
    # The rename is only durable once the folder entry is; some filesystems refuse, harmlessly.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(descriptor)
    finally:
        os.close(descriptor)
