"""Where the passphrase comes from (ops/context.py `given_passphrase`): one order of sources for
the real opening and the opening ahead of a command's work; a UTF-8 byte-order mark at the start
of PHX_PASSPHRASE_FILE (Windows editors write one) is no part of the passphrase, yet a repository
whose passphrase was set with it still opens; `encryption.passphraseCommand` is stopped in time."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from e2e_support import PASSPHRASE, Sandbox
from test_key_derivation_memory import run_watched

from phoenix_backup.config import load_config
from phoenix_backup.errors import UsageError
from phoenix_backup.ops import context
from phoenix_backup.ops import key as key_ops

BOM = "\ufeff"


def secret_file(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    path.chmod(0o600)
    return path


def test_a_passphrase_file_saved_with_a_bom_opens_the_repository(backed_up: Sandbox, tmp_path: Path) -> None:
    # Notepad's "UTF-8 with BOM" and its CRLF line end: the user typed the passphrase alone.
    sb = backed_up
    file = secret_file(tmp_path / "passphrase.txt", BOM + PASSPHRASE + "\r\n")
    env = sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(file))
    res = sb.phx("list", "--json", env=env)
    assert len(res.json()) == 1
    assert "BOM" not in res.err
    sb.phx("restore", "--latest", "--to", tmp_path / "out", "--yes", env=env)
    assert (tmp_path / "out" / "workspace" / "SOUL.md").read_bytes() == (sb.workspace / "SOUL.md").read_bytes()


def set_passphrase_as_before(sb: Sandbox, exact: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The repository's passphrase slot replaced by one for `exact` as it is, as an earlier Phoenix
    set it from a source that gave it so (PHX_NEW_PASSPHRASE is now read as every source is)."""
    cfg = load_config(sb.config_path, sb.env)
    with monkeypatch.context() as patch:
        patch.setattr(key_ops, "new_passphrase", lambda _envx: exact)
        key_ops.key_passwd(cfg, context.Environment(env=sb.env))


def test_a_repository_whose_passphrase_was_set_with_the_bom_still_opens_and_says_how_to_drop_it(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = backed_up
    set_passphrase_as_before(sb, BOM + PASSPHRASE, monkeypatch)
    file = secret_file(tmp_path / "passphrase.txt", BOM + PASSPHRASE + "\n")
    env = sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(file))
    res = sb.phx("list", "--json", env=env)
    assert len(res.json()) == 1
    assert "byte-order mark" in res.err and "phx key passwd" in res.err, res.err
    # The fix it names, then the mark is no part of the passphrase any more.
    sb.phx("key", "passwd", env={**env, "PHX_NEW_PASSPHRASE": PASSPHRASE})
    res = sb.phx("list", "--json", env=env)
    assert len(res.json()) == 1 and "byte-order mark" not in res.err
    sb.phx("list", env=sb.env_with(PHX_PASSPHRASE=PASSPHRASE))
    # A wrong passphrase saved with a mark is still wrong, both ways.
    wrong = secret_file(tmp_path / "wrong.txt", BOM + "not the passphrase\n")
    res = sb.phx("list", env=sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(wrong)), check=None)
    assert res.code == 1 and "wrong passphrase" in res.err and "Traceback" not in res.err
    # The error names where the wrong passphrase came from (it said "check PHX_PASSPHRASE", unset here).
    assert f"opens with PHX_PASSPHRASE_FILE {wrong}" in res.err and "check PHX_PASSPHRASE " not in res.err, res.err
    wrong = secret_file(tmp_path / "wrong-plain.txt", "not the passphrase\n")
    res = sb.phx("list", env=sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(wrong)), check=1)
    assert f"no key slot of the repository opens with PHX_PASSPHRASE_FILE {wrong}" in res.err, res.err
    res = sb.phx("list", env=sb.env_with(PHX_PASSPHRASE="not the passphrase"), check=1)
    assert "opens with PHX_PASSPHRASE;" in res.err, res.err


# -- line breaks: every source gives the same passphrase (docs/security.md, "Where the passphrase comes from")


def test_a_passphrase_ending_in_a_line_break_is_the_same_passphrase_from_every_source(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """`export PHX_PASSPHRASE="$(cat file)"` of a CRLF file keeps the CR; a secret store's value
    may end with a line feed. PHX_PASSPHRASE was used with them, PHX_PASSPHRASE_FILE without:
    a repository made one way did not open the other. Now `phx init`, `phx key add` and every
    opening leave trailing CR/LF out, from each source."""
    sb = sandbox
    sb.env["PHX_PASSPHRASE"] = PASSPHRASE + "\r"
    sb.reinit()  # as `phx init` makes it, from PHX_PASSPHRASE ending in CR
    file = secret_file(tmp_path / "passphrase.txt", PASSPHRASE + "\r\n")
    for env in (
        sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(file)),
        sb.env_with(PHX_PASSPHRASE=PASSPHRASE),
        sb.env_with(PHX_PASSPHRASE=PASSPHRASE + "\r\n"),
    ):
        res = sb.phx("key", "list", "--json", env=env, check=None)
        assert res.code == 0 and len(res.json()) == 1, res
        assert "warning" not in res.err, res.err
    # A passphrase added with a line feed opens without it, and from a file.
    sb.phx("key", "add", "--method", "passphrase", env=sb.env_with(PHX_NEW_PASSPHRASE="second one\n"))
    other = secret_file(tmp_path / "other.txt", "second one\n")
    for env in (
        sb.env_with(PHX_PASSPHRASE="second one"),
        sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(other)),
    ):
        res = sb.phx("key", "list", "--json", env=env, check=None)
        assert res.code == 0 and len(res.json()) == 2, res
    # Only line ends go: an inner CR, and trailing spaces, are the passphrase's.
    for near in (PASSPHRASE + " ", PASSPHRASE[:3] + "\r" + PASSPHRASE[3:]):
        res = sb.phx("list", env=sb.env_with(PHX_PASSPHRASE=near), check=None)
        assert res.code == 1 and "wrong passphrase" in res.err, res


def test_a_repository_whose_passphrase_really_ends_with_a_line_break_still_opens(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made by an earlier Phoenix from PHX_PASSPHRASE ending in LF: it opens with that value as
    before, says how to drop the line break, and the fix it names works."""
    sb = backed_up
    set_passphrase_as_before(sb, PASSPHRASE + "\n", monkeypatch)
    env = sb.env_with(PHX_PASSPHRASE=PASSPHRASE + "\n")
    res = sb.phx("list", "--json", env=env)
    assert len(res.json()) == 1
    assert "ends with the line break (CR/LF) that ends PHX_PASSPHRASE" in res.err and "phx key passwd" in res.err
    sb.phx("key", "passwd", env={**env, "PHX_NEW_PASSPHRASE": PASSPHRASE})
    file = secret_file(tmp_path / "passphrase.txt", PASSPHRASE + "\n")
    for env in (
        sb.env_with(PHX_PASSPHRASE=PASSPHRASE),
        sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(file)),
    ):
        res = sb.phx("list", "--json", env=env)
        assert len(res.json()) == 1 and "warning" not in res.err, res.err


def test_phx_passphrase_and_phx_passphrase_file_that_differ_are_refused(backed_up: Sandbox, tmp_path: Path) -> None:
    """Both set: the variable won silently, so a file the user had just fixed was never read. Now
    they must agree (line ends aside), or the command stops before anything with exit 2."""
    sb = backed_up
    wrong = secret_file(tmp_path / "old.txt", "an old passphrase\n")
    res = sb.phx("list", env=sb.env_with(PHX_PASSPHRASE_FILE=str(wrong)), check=None)
    assert res.code == 2, res
    (line,) = res.error_lines()
    assert "PHX_PASSPHRASE and PHX_PASSPHRASE_FILE" in line and str(wrong) in line and "unset" in line, line
    assert "Traceback" not in res.err
    same = secret_file(tmp_path / "same.txt", PASSPHRASE + "\r\n")
    res = sb.phx("list", "--json", env=sb.env_with(PHX_PASSPHRASE_FILE=str(same)))
    assert len(res.json()) == 1 and "warning" not in res.err, res.err


def test_a_new_passphrase_of_spaces_alone_is_refused(backed_up: Sandbox) -> None:
    sb = backed_up
    for command in (("key", "passwd"), ("key", "add", "--method", "passphrase")):
        res = sb.phx(*command, env=sb.env_with(PHX_NEW_PASSPHRASE=" \t "), check=None)
        assert res.code == 2 and "only spaces" in res.err and "Traceback" not in res.err, res.err
    res = sb.phx("key", "list", "--json")
    assert len(res.json()) == 1, "nothing was added"
    sb.phx("list", env=sb.env_with(PHX_PASSPHRASE=PASSPHRASE))


def test_a_new_passphrase_of_invisible_characters_is_refused_from_every_source(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A zero-width space from PHX_PASSPHRASE_FILE or passphraseCommand, no-break spaces from
    PHX_NEW_PASSPHRASE: each shows nothing, and is refused as spaces alone are (exit 2, nothing made)."""
    sb = sandbox
    shutil.rmtree(sb.repo)
    file = secret_file(tmp_path / "passphrase.txt", "\u200b\n")
    res = sb.phx("init", env=sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(file)), check=None)
    assert res.code == 2 and "only spaces" in res.err and "Traceback" not in res.err, res.err
    assert not (sb.repo / "config").exists(), "no repository made"
    zero_width = "printf '\\342\\200\\213'"
    sb.write_config(encryption={"enabled": True, "method": "passphrase", "passphraseCommand": zero_width})
    res = sb.phx("init", env=sb.env_with(PHX_PASSPHRASE=None), check=None)
    assert res.code == 2 and "only spaces" in res.err and "Traceback" not in res.err, res.err
    assert not (sb.repo / "config").exists(), "no repository made"
    sb.write_config(encryption={"enabled": True, "method": "passphrase"})
    sb.init_repository()
    res = sb.phx("key", "passwd", env=sb.env_with(PHX_NEW_PASSPHRASE="\u00a0\u00a0"), check=None)
    assert res.code == 2 and "only spaces" in res.err, res.err
    sb.phx("list", env=sb.env_with(PHX_PASSPHRASE=PASSPHRASE))


def test_a_regular_passphrase_file_is_derived_before_the_commands_work_is_loaded(
    backed_up: Sandbox, tmp_path: Path
) -> None:
    # As with PHX_PASSPHRASE: the 32 MiB of scrypt come before a backup's and a restore's modules.
    sb = backed_up
    file = secret_file(tmp_path / "passphrase", PASSPHRASE + "\n")
    env = sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(file))
    out = tmp_path / "out"
    for args in (("backup", "--json"), ("restore", "--latest", "--to", str(out), "--yes")):
        code, err, loaded = run_watched(sb, tmp_path, *args, env=env)
        assert (code, loaded) == (0, [False]), err
        assert json.loads((tmp_path / "watch.json").read_text())["workAtDerivation"] == [[]], args
    assert (out / "workspace" / "SOUL.md").read_bytes() == (sb.workspace / "SOUL.md").read_bytes()


def test_a_passphrase_command_that_hangs_is_stopped_with_what_it_started(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `sleep` stands for a `pass`/`gpg` waiting for ever; it is the shell's child and holds the
    # output pipe open after the shell is killed.
    sb = backed_up
    sb.write_config(encryption={"enabled": True, "method": "passphrase", "passphraseCommand": "sleep 30; echo x"})
    envx = context.Environment(env=sb.env_with(PHX_PASSPHRASE=None))
    cfg = load_config(sb.config_path, envx.env)
    monkeypatch.setattr(context, "PASSPHRASE_COMMAND_TIMEOUT", 1.5)
    started = time.monotonic()
    with pytest.raises(UsageError, match=r"passphraseCommand failed.*stopped after 1\.5 s"):
        context.passphrase(cfg, envx)
    assert time.monotonic() - started < 10
    # A command that closes its output and stays is stopped too.
    sb.write_config(
        encryption={"enabled": True, "method": "passphrase", "passphraseCommand": "echo x; exec >&-; sleep 30"}
    )
    cfg = load_config(sb.config_path, envx.env)
    started = time.monotonic()
    with pytest.raises(UsageError, match=r"stopped after 1\.5 s"):
        context.passphrase(cfg, envx)
    assert time.monotonic() - started < 10
    # In time, it gives the passphrase.
    sb.write_config(
        encryption={"enabled": True, "method": "passphrase", "passphraseCommand": f"sleep 0.2; echo '{PASSPHRASE}'"}
    )
    assert context.passphrase(load_config(sb.config_path, envx.env), envx) == PASSPHRASE


def test_mistakes_that_need_no_key_are_said_before_its_derivation(backed_up: Sandbox, tmp_path: Path) -> None:
    # A careless user's options (or a moved workspace) cost no scrypt (0.1 to 0.3 s, 32 MiB) first.
    sb = backed_up
    out = tmp_path / "out"
    cases: list[tuple[tuple[str, ...], int, str]] = [
        (("backup", "--time", "yesterday"), 2, "is not RFC 3339"),
        (("backup", "--time", "2026-03-15T14:30:00"), 2, "has no UTC offset"),
        (("restore", "--latest", "--to", str(out), "--delete", "--yes"), 2, "--delete applies to in-place"),
        (
            ("restore", "--latest", "--to", str(out), "--to-database", "postgresql://u@127.0.0.1/x", "--yes"),
            2,
            "cannot be combined with --to DIR",
        ),
    ]
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    cases.append((("restore", "--latest", "--to", str(tmp_path / "gone" / ".." / "x"), "--yes"), 2, "symbolic link"))
    for args, exit_code, text in cases:
        code, err, derived = run_watched(sb, tmp_path, *args)
        assert code == exit_code and text in err, (args, err)
        assert derived == [], f"phx {' '.join(args)}: {len(derived)} key derivation(s) before the error"
    sb.workspace.rename(tmp_path / "moved")
    code, err, derived = run_watched(sb, tmp_path, "backup")
    assert code != 0 and "the workspace" in err and "does not exist" in err, err
    assert derived == []
    assert not out.exists()
