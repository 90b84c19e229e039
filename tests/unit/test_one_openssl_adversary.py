"""The SHA-256 of `repo/crypto.py` (through `cryptography`) against hashlib's, which it replaced,
and the one-OpenSSL promise of `phx watch` against the modules a watch may load later."""

from __future__ import annotations

import array
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from phoenix_backup.repo.crypto import BackgroundSha256, Sha256, sha256_hex

DATA = bytes(range(256)) * 64


def _typed_buffers() -> list[object]:
    """Buffers hashlib hashes by their bytes whatever their item format."""
    return [
        memoryview(DATA).cast("I"),
        memoryview(DATA).cast("d"),
        memoryview(bytearray(DATA)).cast("H")[3:700],
        array.array("f", [1.5, -2.0, 3.25]),
        memoryview(b""),
    ]


@pytest.mark.parametrize("buffer", _typed_buffers(), ids=["uint32", "double", "uint16-slice", "array", "empty"])
def test_sha256_hashes_every_buffer_hashlib_hashes_to_the_same_digest(buffer: object) -> None:
    expected = hashlib.sha256(buffer).hexdigest()  # type: ignore[arg-type]
    assert sha256_hex(buffer) == expected  # type: ignore[arg-type]
    fed = Sha256()
    fed.update(buffer)  # type: ignore[arg-type]
    assert fed.hexdigest() == expected and fed.digest().hex() == expected
    with BackgroundSha256() as background:
        background.update(buffer)  # type: ignore[arg-type]
        assert background.hexdigest() == expected


@pytest.mark.parametrize("bad", [None, "text", 5])
def test_sha256_refuses_what_hashlib_refuses(bad: object) -> None:
    with pytest.raises(TypeError):
        hashlib.sha256(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Sha256(bad)  # type: ignore[arg-type]


def test_a_non_contiguous_view_is_refused_not_hashed_in_part() -> None:
    with pytest.raises(BufferError):
        Sha256(memoryview(DATA)[::2])


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
def test_a_watch_whose_target_is_a_git_repository_maps_one_openssl(tmp_path: Path) -> None:
    """`phx watch` loads `cryptography` and never the system's libcrypto; a Git target (or a Git
    replica) loads storage/git.py and names its clone: that must not map libcrypto either."""
    script = (
        "import json\n"
        "from pathlib import Path\n"
        "from phoenix_backup.repo.crypto import load_cryptography\n"
        "load_cryptography()\n"
        "from phoenix_backup.storage.git import clone_dir\n"
        f"print(clone_dir({{'XDG_DATA_HOME': {str(tmp_path)!r}, 'HOME': {str(tmp_path)!r}}}, 'git@x:y.git', 'main'))\n"
        "maps = Path('/proc/self/maps').read_text()\n"
        "print(json.dumps(sorted({l.split()[-1] for l in maps.splitlines() if 'libcrypto.so' in l})))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split("\n")
    # The clone's folder is the one every version named (the SHA-256 of URL and branch): an
    # existing clone is found again.
    assert Path(out[0]).name == hashlib.sha256(b"git@x:y.git\0main").hexdigest()[:16], out
    mapped = [lib for lib in json.loads(out[1]) if "cryptography" not in lib]
    assert not mapped, mapped
