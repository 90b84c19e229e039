"""Fuzzing every decoder of repository input (pack header, index, tree, snapshot, lock) and of an
export's metadata.json, as someone who can write the repository's storage or hand over an export.

Each input must end in the decoder's own clean error (tests/hostile.py `CLEAN`) or decode into
values every command can use: a node's times and owners fit the system calls a restore makes, a
snapshot's time sorts and prints, a lock describes itself. Three layers:

- the regression corpus (tests/corpus): the attacks of issue 14 and what fuzzing found;
- hypothesis: random bytes, and valid encodings with one field or one byte changed. A small budget
  in the default run, a large one with PHX_TEST_HEAVY=1;
- atheris (coverage-guided, tests/fuzz_decoders.py) where it is installed, seeded with the corpus.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hostile
from phoenix_backup.repo.locks import decode_lock
from phoenix_backup.repo.snapshot import Snapshot
from phoenix_backup.repo.tree import decode_tree

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
EXAMPLES = 4000 if HEAVY else 60
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["..", "/", "a/b", "\0", "", "x" * 300, "2026-03-15T14:30:00", "0001-01-01T00:00:00+14:00"])
)
wild_json = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _usable(kind: str, data: bytes) -> None:
    """What decoded must be usable: the values commands hand to the system and to datetime."""
    if kind == "tree":
        for node in decode_tree(data, "tree"):
            assert 0 <= node.uid < 2**32 - 1 and 0 <= node.gid < 2**32 - 1
            assert -(2**63) <= node.mtime_ns < 2**63 and -(2**63) <= node.ctime_ns < 2**63
            assert node.size == sum(e.length for e in node.content)
            assert node.type != "dir" or (node.subtree is not None and len(node.subtree) == 32)
            os.fsencode(node.link_target or "")  # os.symlink takes it
    elif kind == "snapshot":
        snap = Snapshot.from_json_bytes(data, "ab" * 32)
        snap.datetime.astimezone(UTC).isoformat()
        snap.datetime.astimezone().strftime("%Y-%m-%d %H:%M")
        # It names archive folders and drill reports (always after a prefix) and is printed.
        assert "/" not in snap.name and snap.name.isprintable() and len(snap.tree) == 32
        for text in (snap.host, snap.username, *snap.tags, *snap.sources.values()):
            text.encode("utf-8", "surrogateescape")  # printable: no lone surrogate
    elif kind == "lock":
        decode_lock(data, "locks/x").describe().encode("utf-8", "surrogateescape")


def check(kind: str, data: bytes) -> None:
    """The property: one clean error, or a value every command can use."""
    try:
        hostile.decode(kind, data)
    except hostile.CLEAN[kind]:
        return
    _usable(kind, data)


# ---------------------------------------------------------------------------------------------
# The regression corpus


@pytest.mark.parametrize(
    ("kind", "name", "data"), list(hostile.corpus()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_corpus_input_ends_in_one_clean_error(kind: str, name: str, data: bytes) -> None:
    with pytest.raises(hostile.CLEAN[kind]):
        hostile.decode(kind, data)


def test_the_corpus_holds_every_crafted_attack() -> None:
    on_disk = {(kind, name): data for kind, name, data in hostile.corpus()}
    for kind, items in hostile.crafted().items():
        for name, data in items.items():
            assert on_disk.get((kind, name)) == data, (
                f"tests/corpus/{kind}/{name} is stale: run python tests/hostile.py"
            )


# ---------------------------------------------------------------------------------------------
# hypothesis: random bytes and one-field changes of valid encodings


@pytest.mark.parametrize("kind", hostile.KINDS)
@given(data=st.binary(max_size=600))
@FUZZ
def test_random_bytes(kind: str, data: bytes) -> None:
    check(kind, data)


VALID: dict[str, Any] = {
    "tree": lambda: json.loads(
        hostile.tree(
            hostile.file_node("MEMORY.md"),
            hostile.dir_node("memory", b"\1" * 32),
            {"name": "link", "type": "symlink", "mode": 0o777, "mtimeNs": 0, "uid": 0, "gid": 0, "linkTarget": "x"},
        )
    ),
    "snapshot": lambda: hostile.snapshot_doc(b"\1" * 32),
    "lock": hostile.lock_doc,
    "export_metadata": lambda: json.loads(hostile.export_meta(hostile.export_db())),
}


def _paths(doc: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: object) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[head] = _replace(doc[head], rest, value)
    return copy


@pytest.mark.parametrize("kind", sorted(VALID))
@given(data=st.data())
@FUZZ
def test_one_field_changed(kind: str, data: st.DataObject) -> None:
    doc = VALID[kind]()
    path = data.draw(st.sampled_from(_paths(doc)), label="path")
    value = data.draw(wild_json, label="value")
    check(kind, json.dumps(_replace(doc, path, value)).encode())


@pytest.mark.parametrize("kind", hostile.KINDS)
@given(data=st.data())
@FUZZ
def test_one_byte_changed(kind: str, data: st.DataObject) -> None:
    seeds = [raw for k, _name, raw in hostile.corpus() if k == kind and len(raw) < 20_000]
    if kind in VALID:
        seeds.append(json.dumps(VALID[kind]()).encode())
    raw = bytearray(data.draw(st.sampled_from(seeds), label="seed"))
    if raw:
        pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
        raw[pos] = data.draw(st.integers(0, 255), label="byte")
    cut = data.draw(st.integers(0, len(raw)), label="cut")
    check(kind, bytes(raw[:cut]))


# ---------------------------------------------------------------------------------------------
# atheris


def test_atheris_finds_nothing(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris; Linux x86_64 wheels)")
    corpus = tmp_path / "corpus"
    harness = Path(__file__).resolve().parents[1] / "fuzz_decoders.py"
    subprocess.run(
        [sys.executable, "-c", f"import sys; sys.argv=['x']; sys.path.insert(0, {str(harness.parent)!r}); "
         f"import fuzz_decoders; fuzz_decoders.seed_corpus(__import__('pathlib').Path({str(corpus)!r}))"],
        check=True,
    )  # fmt: skip
    budget = ["-max_total_time=900"] if HEAVY else ["-runs=6000"]
    proc = subprocess.run(
        [sys.executable, str(harness), str(corpus), *budget, "-rss_limit_mb=1500", "-timeout=20"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    # A finding is saved as crash-*/oom-*/timeout-*: its bytes belong in tests/corpus once fixed.
    found = {p.name: p.read_bytes()[:200] for p in sorted(tmp_path.glob("*-*")) if p.is_file()}
    assert proc.returncode == 0 and not found, f"atheris found {found}:\n{proc.stderr[-4000:]}"
