"""Files that hold a secret (PHX_PASSPHRASE_FILE, an age identity file, a write key) are read up
to 64 KiB: a mistaken path (a disk image, /dev/zero) is one error naming the file, the limit and
the fix, exit 2, instead of a GiB read into memory (or a read that never ends)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from e2e_support import PASSPHRASE, Sandbox, assert_error

from phoenix_backup.dirs import SECRET_FILE_LIMIT
from phoenix_backup.errors import UsageError
from phoenix_backup.repo.writer import WriterStore


def _huge(path: Path, head: bytes) -> Path:
    """A 1 GiB file (sparse: it costs no disk) that begins with `head`."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(1 << 30)
    return path


def test_a_1_gib_passphrase_file_is_one_error_naming_it_and_its_limit(sandbox: Sandbox, tmp_path: Path) -> None:
    big = _huge(tmp_path / "passphrase", PASSPHRASE.encode() + b"\n")
    for file in (big, Path("/dev/zero")):
        res = sandbox.phx(
            "list", env=sandbox.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(file)), check=None, timeout=60
        )
        assert_error(res, 2, f"PHX_PASSPHRASE_FILE {file}", "64 KiB", "the passphrase alone")
    # At the limit it is still read (a passphrase followed by blank lines, as an editor may leave).
    exact = tmp_path / "exact"
    exact.write_bytes((PASSPHRASE + "\n").encode().ljust(SECRET_FILE_LIMIT, b"\n"))
    sandbox.phx("list", env=sandbox.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(exact)))


def test_a_1_gib_age_identity_file_is_one_error_naming_it_and_its_limit(sandbox: Sandbox, tmp_path: Path) -> None:
    big = _huge(tmp_path / "identity.txt", b"# created by age-keygen\n")
    res = sandbox.phx("list", "--identity", big, check=None, timeout=60)
    assert_error(res, 2, f"age identity file {big}", "64 KiB", "age-keygen")


def test_a_write_key_over_the_limit_is_one_error(tmp_path: Path) -> None:
    store = WriterStore(tmp_path, "0" * 64)
    store.folder.mkdir(parents=True)
    _huge(store.key_path, b"{}")
    os.chmod(store.key_path, 0o600)
    with pytest.raises(UsageError, match=r"the write key .*write\.key holds more than 64 KiB.*copy write\.key again"):
        store.load_key("/somewhere")


def test_a_wrong_passphrase_from_a_named_pipe_is_one_error_not_a_wait(sandbox: Sandbox, tmp_path: Path) -> None:
    # `mkfifo f; pass show phx > f &`: the pipe gives the passphrase once. The error's redaction
    # must not open it again (no writer is left: the open waits for ever) nor with --verbose.
    fifo = tmp_path / "passphrase.fifo"
    os.mkfifo(fifo)
    for verbose in ((), ("--verbose",)):
        writer = threading.Thread(target=lambda: fifo.write_text("not-the-passphrase\n"))
        writer.start()
        env = sandbox.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(fifo))
        res = sandbox.phx("list", *verbose, env=env, check=None, timeout=30)
        writer.join(timeout=5)
        assert res.code == 1, res
        assert "not-the-passphrase" not in res.out + res.err
        assert any("passphrase" in line for line in res.error_lines()), res


def test_a_passphrase_command_that_prints_without_end_is_one_error_and_its_output_is_never_shown(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # `yes` as the command by mistake: its output is read up to the limit, then it is stopped.
    sandbox.write_config(encryption={"enabled": True, "method": "passphrase", "passphraseCommand": "yes"})
    res = sandbox.phx("list", env=sandbox.env_with(PHX_PASSPHRASE=None), check=None, timeout=60)
    assert_error(res, 2, "encryption.passphraseCommand", "64 KiB", "the passphrase alone")
    # A command's passphrase is a secret like PHX_PASSPHRASE's: a wrong one, shown by an error's
    # --verbose traceback or message, is redacted.
    secret = tmp_path / "secret"
    secret.write_text("not-the-passphrase-from-a-command\n")
    sandbox.write_config(encryption={"enabled": True, "method": "passphrase", "passphraseCommand": f"cat {secret}"})
    res = sandbox.phx("list", "--verbose", env=sandbox.env_with(PHX_PASSPHRASE=None), check=None, timeout=60)
    assert res.code == 1 and any("passphrase" in line for line in res.error_lines()), res
    assert "not-the-passphrase-from-a-command" not in res.out + res.err
    # The owner's, from the command, still opens.
    secret.write_text(PASSPHRASE + "\n")
    sandbox.phx("list", env=sandbox.env_with(PHX_PASSPHRASE=None))
