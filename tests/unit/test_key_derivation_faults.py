"""The key derivation of passphrase slots where it can fail (issue 20's hashlib.scrypt): scrypt
parameters OpenSSL refuses although they look sane, a Python whose hashlib has no scrypt or
refuses it (FIPS mode), a process that cannot get the memory a slot asks for, and `cryptography`
that cannot be loaded. Each ends in one sentence, and a planted slot never locks the owner out."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from phoenix_backup.errors import CorruptObject, ToolMissing, UsageError, WrongPassphrase
from phoenix_backup.repo import keys

FAST = {"n": 2**10, "r": 8, "p": 1}


def planted(own: keys.KeySlot, **params: object) -> keys.KeySlot:
    """A passphrase slot anyone who can write the storage could add, through JSON as it arrives."""
    slot = replace(own, id=keys._new_slot_id(), params={**own.params, **params}, meta=b"", info=None)
    return keys.KeySlot.from_json(slot.to_json())


@pytest.mark.parametrize(("n", "p"), [(2**16, 1), (2**21, 1), (2**16, 16)])  # within the work a slot may ask for
def test_a_slot_openssl_refuses_is_skipped_and_the_owner_still_opens(n: int, p: int) -> None:
    # RFC 7914 wants n < 2**(16*r); OpenSSL refuses the rest ("memory limit exceeded", a
    # ValueError the opening did not expect: an internal error, and the real slot never tried).
    master = keys.MasterSecrets.generate()
    own = keys.wrap_passphrase(master, "pw", kdf_params=FAST)
    hostile = planted(own, n=n, r=1, p=p)
    slot, opened = keys.open_any([hostile, own], keys.Credentials(passphrase="pw"))
    assert (slot.id, opened) == (own.id, master)
    with pytest.raises(CorruptObject, match=f"key slot {hostile.id} has unsafe scrypt parameters .*below 2\\*\\*16"):
        keys.open_any([hostile], keys.Credentials(passphrase="pw"))


def test_a_new_slot_refuses_parameters_openssl_refuses() -> None:
    with pytest.raises(UsageError, match="invalid scrypt parameters: n=65536 must be below 2\\*\\*16 when r=1"):
        keys.wrap_passphrase(keys.MasterSecrets.generate(), "pw", kdf_params={"n": 2**16, "r": 1, "p": 1})


@pytest.mark.parametrize(
    ("n", "r", "p"),
    [(2, 1, 1), (2**15, 1, 1), (2**4, 1, 16), (2**16, 2, 1), (2**10, 3, 5), (2**15, 8, 1), (2**12, 32, 16)],
)
def test_every_parameter_a_slot_may_hold_derives_cryptographys_key(n: int, r: int, p: int) -> None:
    # Slots written before issue 20 were derived by `cryptography`'s scrypt: the same bytes.
    assert keys._scrypt_problem(n, r, p) is None
    salt = os.urandom(keys.SALT_MAX_LENGTH if p == 16 else keys.SALT_LENGTH)
    theirs = Scrypt(salt=salt, length=keys.KEY_LENGTH, n=n, r=r, p=p).derive("Å passphrase".encode())
    assert keys._derive_kek("A\u030a passphrase", salt, n, r, p) == theirs


@pytest.fixture(autouse=True)
def _stdlib_scrypt_first(monkeypatch: pytest.MonkeyPatch) -> None:
    # This process has loaded `cryptography` (above), which `_derive_kek` would then use alone (as
    # `phx watch` does); a command derives before it loads it, from hashlib's scrypt first.
    monkeypatch.setattr(keys, "_cryptography_loaded", lambda: False, raising=False)


def test_a_python_whose_hashlib_has_no_scrypt_still_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    # CPython built against an OpenSSL without scrypt has no hashlib.scrypt at all.
    master = keys.MasterSecrets.generate()
    own = keys.wrap_passphrase(master, "pw", kdf_params=FAST)
    monkeypatch.delattr(hashlib, "scrypt")
    assert keys.open_any([own], keys.Credentials(passphrase="pw")) == (own, master)
    with pytest.raises(WrongPassphrase):
        keys.open_any([own], keys.Credentials(passphrase="not it"))
    again = keys.wrap_passphrase(master, "pw2", kdf_params=FAST)
    monkeypatch.undo()
    assert keys.open_any([again], keys.Credentials(passphrase="pw2"))[1] == master


def fips_refusal(*args: object, **kwargs: object) -> bytes:
    """What hashlib.scrypt raises where OpenSSL refuses it (FIPS mode: scrypt is no approved KDF)."""
    raise ValueError("[digital envelope routines] unsupported")


def test_a_hashlib_refusing_scrypt_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    master = keys.MasterSecrets.generate()
    own = keys.wrap_passphrase(master, "pw", kdf_params=FAST)
    monkeypatch.setattr(hashlib, "scrypt", fips_refusal)
    assert keys.open_any([own], keys.Credentials(passphrase="pw")) == (own, master)


def test_no_scrypt_anywhere_is_one_sentence_not_a_wrong_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    master = keys.MasterSecrets.generate()
    own = keys.wrap_passphrase(master, "pw", kdf_params=FAST)
    monkeypatch.setattr(hashlib, "scrypt", fips_refusal)
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.kdf.scrypt", None)
    with pytest.raises(ToolMissing, match=r"^this Python's hashlib cannot run scrypt and the package cryptography"):
        keys.open_any([own], keys.Credentials(passphrase="pw"))
    with pytest.raises(ToolMissing):
        keys.wrap_passphrase(master, "pw", kdf_params=FAST)


# A process whose address space is capped below what a planted slot asks for (a small VPS, a
# container memory limit): the slot is skipped with its sentence, the owner's still opens.
_CAPPED = textwrap.dedent(
    """
    import resource
    from phoenix_backup.repo import keys
    master = keys.MasterSecrets.generate()
    own = keys.wrap_passphrase(master, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1})
    doc = own.to_json().replace(b'"n":1024', b'"n":262144').replace(b'"n": 1024', b'"n": 262144')
    greedy = keys.KeySlot.from_json(doc.replace(own.id.encode(), keys._new_slot_id().encode()))
    assert greedy.params["n"] == 2**18, greedy.params
    import cryptography.hazmat.primitives.kdf.scrypt  # loaded before the cap, like the rest
    with open("/proc/self/status") as status:
        vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    cap = vm + (128 << 20)  # 128 MiB more than this process holds now; the slot asks for 256
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        keys.open_any([greedy], keys.Credentials(passphrase="pw"))
    except keys.CorruptObject as exc:
        print(exc)
    slot, opened = keys.open_any([greedy, own], keys.Credentials(passphrase="pw"))
    assert (slot.id, opened) == (own.id, master)
    print("owner opened")
    """
)


def test_a_slot_needing_more_memory_than_the_process_may_have_is_skipped() -> None:
    proc = subprocess.run([sys.executable, "-c", _CAPPED], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    skipped, opened = proc.stdout.splitlines()
    assert "needs 256 MiB for its key derivation, more memory than this process could get" in skipped, skipped
    assert opened == "owner opened"


def test_a_slot_key_is_derived_once_and_a_wrong_passphrase_still_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 20: a command that opens the repository twice (ahead of its work, then for it) runs
    # scrypt once; what is kept is per passphrase, so another passphrase is derived and refused.
    master = keys.MasterSecrets.generate()
    own = keys.wrap_passphrase(master, "pw", kdf_params=FAST)
    runs: list[str] = []
    derive = keys._derive_kek

    def counted(passphrase: str, *args: Any) -> bytes:
        runs.append(passphrase)
        return derive(passphrase, *args)

    monkeypatch.setattr(keys, "_derive_kek", counted)
    for _ in range(3):
        assert keys.open_any([own], keys.Credentials(passphrase="pw")) == (own, master)
    for _ in range(2):
        with pytest.raises(WrongPassphrase):
            keys.open_any([own], keys.Credentials(passphrase="pw "))
    assert runs == ["pw", "pw "]


def test_once_cryptography_is_loaded_its_scrypt_derives_and_hashlib_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `phx watch` loads `cryptography` first and runs for weeks: a second OpenSSL (the system's,
    # which hashlib loads) would be 3.4 MiB held all along. A hashlib giving other bytes shows
    # which one derived.
    monkeypatch.setattr(keys, "_cryptography_loaded", lambda: True, raising=False)
    monkeypatch.setattr(hashlib, "scrypt", lambda *args, **kwargs: bytes(keys.KEY_LENGTH))
    salt = os.urandom(keys.SALT_LENGTH)
    theirs = Scrypt(salt=salt, length=keys.KEY_LENGTH, n=2**10, r=8, p=1).derive(b"pw")
    assert keys._derive_kek("pw", salt, 2**10, 8, 1) == theirs
