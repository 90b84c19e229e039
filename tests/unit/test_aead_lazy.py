"""`cryptography` (9 MB) loads with the first AEAD (`crypto.aead`), and its InvalidTag with it,
once per process rather than at every decrypt (`crypto.InvalidTag`): damaged bytes must still be
one CorruptObject sentence, in a process where nothing loaded `cryptography` before."""

from __future__ import annotations

import subprocess
import sys

_FIRST_DECRYPT = """
import os, sys
from phoenix_backup.repo import checks, crypto, keys, writeonly
from phoenix_backup.errors import CorruptObject
assert "cryptography" not in sys.modules
sealer = crypto.Sealer(os.urandom(32))
sealed = bytearray(sealer.seal(b"payload", b"aad"))
sealed[-1] ^= 1
try:
    sealer.open(bytes(sealed), b"aad", "blob x")
except CorruptObject as exc:
    print(exc)
master = keys.MasterSecrets.generate()
slot = keys.wrap_passphrase(master, "right", kdf_params={"n": 2, "r": 1, "p": 1})
print(keys.unwrap(slot, keys.Credentials(passphrase="wrong")))
"""


def test_tampered_bytes_fail_authentication_at_a_processs_first_decrypt() -> None:
    out = subprocess.run([sys.executable, "-c", _FIRST_DECRYPT], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["blob x fails authentication (damaged or tampered)", "None"]
