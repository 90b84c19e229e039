"""Coverage-guided fuzzing of the repository's decoders with atheris (libFuzzer for Python).

    python tests/fuzz_decoders.py CORPUS_DIR... -runs=100000       # or -max_total_time=600

The first byte of each input chooses the decoder (pack header, index, tree, snapshot, lock, export
metadata), the rest is its input. An input may decode or raise that decoder's own clean error
(tests/hostile.py `CLEAN`); any other exception is a finding, which libFuzzer saves as `crash-*`.
Seed it with a copy of tests/corpus (see `seed_corpus`): libFuzzer adds what it finds to the first
folder it is given. `tests/unit/test_decoder_fuzz.py` runs it with a small budget, or a large one
under PHX_TEST_HEAVY=1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["phoenix_backup", "hostile"]):
    import hostile


def seed_corpus(folder: Path) -> None:
    """Write tests/corpus into `folder` in this harness's input form (a kind byte, then the input)."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind, name, data in hostile.corpus():
        (folder / f"{kind}-{name}").write_bytes(bytes((hostile.KINDS.index(kind),)) + data)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    kind = hostile.KINDS[data[0] % len(hostile.KINDS)]
    try:
        hostile.decode(kind, data[1:])
    except hostile.CLEAN[kind]:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
