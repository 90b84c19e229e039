"""Issue 20: a passphrase slot's scrypt (32 MiB at the default cost) runs before `cryptography`
(9 MB: its own OpenSSL) is loaded, so the two never add up in a command's peak memory
(docs/benchmarks.md, "Peak memory"). The key derivation itself is unchanged: the same RFC 7914
scrypt with the slot's own parameters, so every existing slot still opens and a wrong passphrase
is still refused, whichever way the passphrase comes in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from e2e_support import PASSPHRASE, Sandbox, assert_error

from phoenix_backup.repo import keys

# Runs `phx ARGS` in this interpreter, noting for every scrypt run whether `cryptography` was
# already loaded then, and the run's exit code.
_WATCH = """
import json, os, sys
from phoenix_backup.repo import keys
seen = []
work = []
# A command's work, and zstandard (2 MB resident with its library), loaded after the derivation.
WORK = ("phoenix_backup.ops.backup", "phoenix_backup.ops.restore", "phoenix_backup.ops.verify", "zstandard")
derive = keys._derive_kek
def watched(*args):
    seen.append("cryptography" in sys.modules)
    work.append(sorted(m for m in WORK if m in sys.modules))
    return derive(*args)
keys._derive_kek = watched
from phoenix_backup.cli.main import main
sys.argv = ["phx", *sys.argv[2:]]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 1
with open(os.environ["WATCH_OUT"], "w") as f:
    json.dump({"loadedAtDerivation": seen, "workAtDerivation": work}, f)
sys.exit(code)
"""


def run_watched(
    sb: Sandbox, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, list[bool]]:
    out = tmp_path / "watch.json"
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", _WATCH, "phx", *args],
        env={**(sb.env if env is None else env), "WATCH_OUT": str(out)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stderr, json.loads(out.read_text())["loadedAtDerivation"]


def test_scrypt_runs_before_cryptography_is_loaded(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    for args in (("backup", "--json"), ("list", "--json")):
        code, err, loaded = run_watched(sb, tmp_path, *args)
        assert code == 0, err
        assert loaded == [False], f"phx {args[0]}: cryptography was loaded before scrypt ran: {loaded}"


def test_scrypt_runs_once_before_the_commands_work_is_loaded(backed_up: Sandbox, tmp_path: Path) -> None:
    # Issue 20: the 32 MiB of scrypt come on top of what is loaded at that moment; a backup's and a
    # restore's (and a verify's) modules are loaded after it, zstandard too, and the key is derived
    # once per command.
    sb = backed_up
    out = tmp_path / "out"
    for args in (("backup", "--json"), ("restore", "--latest", "--to", str(out), "--yes"), ("verify",)):
        code, err, loaded = run_watched(sb, tmp_path, *args)
        assert (code, loaded) == (0, [False]), err
        assert json.loads((tmp_path / "watch.json").read_text())["workAtDerivation"] == [[]], args
    assert (out / "workspace" / "SOUL.md").read_bytes() == (sb.workspace / "SOUL.md").read_bytes()
    assert len(sb.snapshots()) == 2


def test_a_passphrase_file_read_once_still_opens(backed_up: Sandbox, tmp_path: Path) -> None:
    # A pipe (`PHX_PASSPHRASE_FILE=<(pass show phx)`) gives the passphrase once: opening ahead of
    # the work must not read it first, nor a passphraseEnv beside it win over it.
    sb = backed_up
    fifo = tmp_path / "passphrase.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text(PASSPHRASE + "\n"))
    writer.start()
    sb.write_config(encryption={"enabled": True, "method": "passphrase", "passphraseEnv": "OTHER_SECRET"})
    env = sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(fifo), OTHER_SECRET="not the passphrase")
    code, err, loaded = run_watched(sb, tmp_path, "backup", "--json", env=env)
    writer.join(timeout=5)
    assert (code, loaded) == (0, [False]), err
    assert len(sb.snapshots()) == 2


def test_every_way_of_giving_the_passphrase_still_opens(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    code, err, loaded = run_watched(
        sb, tmp_path, "list", "--json", env=sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(secret))
    )
    assert (code, loaded) == (0, [False]), err
    sb.write_config(encryption={"enabled": True, "method": "passphrase", "passphraseCommand": f"cat {secret}"})
    code, err, loaded = run_watched(sb, tmp_path, "backup", "--json", env=sb.env_with(PHX_PASSPHRASE=None))
    assert (code, loaded) == (0, [False]), err
    assert len(sb.snapshots()) == 2


def test_a_wrong_passphrase_is_still_refused(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    before = {p: p.read_bytes() for p in sb.repo.rglob("*") if p.is_file()}
    code, err, loaded = run_watched(sb, tmp_path, "backup", env=sb.env_with(PHX_PASSPHRASE="not the passphrase"))
    assert code == 1 and "wrong passphrase" in err, err
    assert loaded and not loaded[0]
    res = sb.phx("restore", "--latest", "--to", tmp_path / "out", env=sb.env_with(PHX_PASSPHRASE="wrong"), check=None)
    assert_error(res, 1, "passphrase")
    assert {p: p.read_bytes() for p in sb.repo.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.md"))


# RFC 7914 section 12: scrypt("password", "NaCl", N=1024, r=8, p=16, dkLen=64); a 32-byte key is
# its first half (PBKDF2's first block).
RFC7914_PASSWORD_NACL = bytes.fromhex(
    "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
    "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"
)


def test_the_key_derivation_is_rfc7914_scrypt() -> None:
    assert keys._derive_kek("password", b"NaCl", 1024, 8, 16) == RFC7914_PASSWORD_NACL[: keys.KEY_LENGTH]
    # The same key `cryptography`'s scrypt (which derived every slot written so far) gives, for
    # the default parameters and the largest memory a slot may ask for (1 GiB: heavy only).
    salt = os.urandom(keys.SALT_LENGTH)
    costs = [keys.DEFAULT_SCRYPT_PARAMS]
    if os.environ.get("PHX_TEST_HEAVY") == "1":
        costs.append({"n": 2**20, "r": 8, "p": 1})
    for c in costs:
        theirs = Scrypt(salt=salt, length=keys.KEY_LENGTH, n=c["n"], r=c["r"], p=c["p"]).derive("pässword".encode())
        assert keys._derive_kek("pa\u0308ssword", salt, c["n"], c["r"], c["p"]) == theirs


@pytest.mark.parametrize(
    ("n", "r", "p"), [(2, 1, 1), (2, keys.SCRYPT_MAX_R, keys.SCRYPT_MAX_P), (2**10, keys.SCRYPT_MAX_R, 2)]
)
def test_the_largest_r_and_p_a_slot_may_ask_for_still_derive(n: int, r: int, p: int) -> None:
    # OpenSSL refuses to run when its memory limit is below what the parameters need.
    assert keys._scrypt_problem(n, r, p) is None
    salt = os.urandom(keys.SALT_LENGTH)
    theirs = Scrypt(salt=salt, length=keys.KEY_LENGTH, n=n, r=r, p=p).derive(b"x")
    assert keys._derive_kek("x", salt, n, r, p) == theirs


def test_a_cryptography_that_cannot_load_is_one_sentence(backed_up: Sandbox, tmp_path: Path) -> None:
    # `cryptography` is first imported in the middle of a command now, after the passphrase's
    # scrypt: a broken install (its OpenSSL library gone) must say so, not look like a bug.
    shadow = tmp_path / "shadow" / "cryptography"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("libssl.so.3: cannot open shared object file")\n')
    env = backed_up.env_with(PYTHONPATH=str(shadow.parent))
    before = {p: p.read_bytes() for p in backed_up.repo.rglob("*") if p.is_file()}
    for args in (("list",), ("backup",), ("restore", "--latest", "--to", str(tmp_path / "out"))):
        res = backed_up.phx(*args, env=env, check=None)
        line = assert_error(res, 2, "cryptography", "libssl.so.3", "reinstall")
        assert "internal error" not in line, line
    assert {p: p.read_bytes() for p in backed_up.repo.rglob("*") if p.is_file()} == before
    assert backed_up.phx("list", "--json", env=backed_up.env).code == 0


def test_a_passphrase_that_is_not_utf8_is_one_sentence(backed_up: Sandbox, tmp_path: Path) -> None:
    # Latin-1 bytes where UTF-8 is expected: the key is derived from the passphrase's UTF-8 bytes,
    # which these have none of (an internal error before, from the environment and from a file).
    sb = backed_up
    latin1 = "pässwörd".encode("latin-1")
    secret = tmp_path / "passphrase"
    secret.write_bytes(latin1 + b"\n")
    secret.chmod(0o600)
    command = tmp_path / "ask.sh"
    command.write_text(f"#!/bin/sh\ncat {secret}\n")
    command.chmod(0o700)
    as_env = latin1.decode("utf-8", "surrogateescape")  # what os.environ holds for those bytes
    cases = {
        "PHX_PASSPHRASE": sb.env_with(PHX_PASSPHRASE=as_env),
        "PHX_PASSPHRASE_FILE": sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(secret)),
    }
    for name, env in cases.items():
        res = sb.phx("list", env=env, check=None)
        line = assert_error(res, 2, "passphrase is not UTF-8", "write it in UTF-8")
        assert "internal error" not in line, (name, line)
    res = sb.phx("key", "add", "--method", "passphrase", env=sb.env_with(PHX_NEW_PASSPHRASE=as_env), check=None)
    assert_error(res, 2, "passphrase is not UTF-8")
    sb.write_config(encryption={"enabled": True, "method": "passphrase", "passphraseCommand": str(command)})
    res = sb.phx("list", env=sb.env_with(PHX_PASSPHRASE=None), check=None)
    assert_error(res, 2, "passphrase is not UTF-8")
    assert len(sb.snapshots()) == 1


# Frees 24 MB of 1 kB buffers in the middle of the C heap (every 48th is kept, so glibc cannot
# give them back on its own), then derives a key with the default cost, as `phx` does (its malloc
# settings); prints VmRSS before and after, in kB.
_FREED_HEAP = """
import os, sys
from phoenix_backup.repo import keys
from phoenix_backup.process import limit_malloc_arenas
limit_malloc_arenas()
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
blocks = [bytes([i % 251]) * 1000 for i in range(24_000)]
kept = blocks[::48]
del blocks
before = rss()
c = keys.DEFAULT_SCRYPT_PARAMS
keys._derive_kek("x", os.urandom(keys.SALT_LENGTH), c["n"], c["r"], c["p"])
print(before, rss(), len(kept))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim and /proc/self/status")
def test_the_heaps_free_pages_go_back_before_scrypt_and_its_memory_after() -> None:
    # Issue 20: scrypt's 32 MiB come on top of what the process holds at that moment, the peak of a
    # no-change backup, a verify or a list. Memory the process freed before (start-up, the config)
    # is returned to the system first, and scrypt's own memory when it returns: the process holds
    # less after the derivation than before it (about 23 MB less here; nothing dropped before).
    proc = subprocess.run([sys.executable, "-c", _FREED_HEAP], capture_output=True, text=True, timeout=60, check=True)
    before, after, _kept = map(int, proc.stdout.split())
    assert after < before - 10_000, (before, after)


def _broken_zstandard(sb: Sandbox, tmp_path: Path) -> dict[str, str]:
    """The sandbox's environment with a zstandard that cannot be loaded (as with its libzstd gone)."""
    broken = tmp_path / "broken" / "zstandard"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("libzstd.so.1: cannot open shared object file")\n')
    return sb.env_with(PYTHONPATH=str(broken.parent))


def test_a_zstandard_that_cannot_be_loaded_is_one_sentence_at_its_first_use(sandbox: Sandbox, tmp_path: Path) -> None:
    # zstandard is loaded at its first use (issue 20), not at start-up: in a first backup that is on
    # a writer thread in the middle of the run, in a verify the index's reading. A package that
    # cannot be loaded (a missing libzstd, a half-done upgrade) is one sentence naming it and the
    # fix, exit 2, never "unexpected internal error ... a bug in Phoenix"; nothing is committed, and
    # the next run with it works.
    sb = sandbox
    env = _broken_zstandard(sb, tmp_path)
    assert_error(sb.phx("backup", env=env, check=None), 2, "package zstandard", "cannot be loaded", "reinstall")
    first = sb.backup()["id"]
    assert [s["id"] for s in sb.snapshots()] == [first]  # the failed run committed none
    assert_error(sb.phx("verify", env=env, check=None), 2, "package zstandard", "cannot be loaded", "reinstall")


def test_a_watch_whose_zstandard_cannot_be_loaded_stops_at_its_start(sandbox: Sandbox, tmp_path: Path) -> None:
    # Its first use would be a segment's seal or the check of the chain's last segment, where a
    # failure is retried as a store's would be: the chain dropped, a base tried every 30 s, and the
    # watch ending with exit 0 having captured nothing. It stops at its start instead, in one
    # sentence, exit 2 (as every command failed at start-up before zstandard was loaded lazily).
    res = sandbox.phx("watch", "--duration", "5", "--no-files", env=_broken_zstandard(sandbox, tmp_path), check=None)
    assert_error(res, 2, "package zstandard", "cannot be loaded", "reinstall")


def test_the_doctor_finds_a_zstandard_that_cannot_be_loaded(sandbox: Sandbox, tmp_path: Path) -> None:
    # No command fails at start-up any more when zstandard cannot be loaded: `phx doctor`, which
    # never compresses, loads it, or it would pass (exit 0) an install on which every backup fails.
    res = sandbox.phx("doctor", env=_broken_zstandard(sandbox, tmp_path), check=None)
    assert res.code == 1, res
    assert "✗ package zstandard: the Python package zstandard, which compresses the repository's data, cannot be" in (
        res.out + res.err
    ), res
