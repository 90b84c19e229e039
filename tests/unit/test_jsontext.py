"""`--json` documents stay valid Unicode for names that are not UTF-8 (phoenix_backup.jsontext)."""

from __future__ import annotations

import base64
import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phoenix_backup.errors import UnsafePath
from phoenix_backup.jsontext import dumps, dumps_exact, portable
from phoenix_backup.repo.tree import Node


def raw(text: str) -> bytes:
    return base64.b64decode(text)


def test_members_elements_and_keys() -> None:
    name = os.fsdecode(b"caf\xe9.md")
    doc = portable({"path": name, "ok": "plain", "absent": [name, "fine"], "files": {name: 3}, "n": 1})
    assert doc["path"] == "caf\ufffd.md" and raw(doc["pathBytes"]) == b"caf\xe9.md"
    assert doc["ok"] == "plain" and "okBytes" not in doc
    assert doc["absent"][0] == {"text": "caf\ufffd.md", "bytes": base64.b64encode(b"caf\xe9.md").decode()}
    assert doc["absent"][1] == "fine"
    assert doc["files"] == {"caf\ufffd.md": 3, "keyBytes": {"caf\ufffd.md": base64.b64encode(b"caf\xe9.md").decode()}}
    dumps(doc).encode("utf-8")  # strict: valid UTF-8


def test_unicode_names_are_unchanged() -> None:
    doc = {"path": "mémoire/日記.md", "items": [{"path": "é"}]}
    assert portable(doc) == doc


@given(st.binary(min_size=1, max_size=40))
def test_any_bytes_round_trip(name: bytes) -> None:
    text = os.fsdecode(name)
    doc = json.loads(dumps({"path": text}).encode("utf-8").decode("utf-8"))
    got = raw(doc["pathBytes"]) if "pathBytes" in doc else doc["path"].encode("utf-8")
    assert got == name


def test_tree_hardlink_field_is_checked() -> None:
    base = {"name": "b", "type": "file", "mode": 0o644, "mtimeNs": 0, "size": 0, "content": "", "sha256": "0" * 64}
    assert Node.from_json({**base, "hardlink": "workspace/a"}).hardlink == "workspace/a"
    assert Node.from_json(base).hardlink is None  # trees written before the field
    for bad in ("workspace/../etc/passwd", "/abs", "workspace//a"):
        with pytest.raises(UnsafePath):
            Node.from_json({**base, "hardlink": bad})


def test_keys_that_show_alike_all_stay() -> None:
    """caf\\xe9 and caf\\xff both show as caf\\ufffd, and a real name may hold U+FFFD: as keys none
    may overwrite another (the first two each lost a file's entry)."""
    a, b, real = os.fsdecode(b"caf\xe9"), os.fsdecode(b"caf\xff"), "caf\ufffd"
    doc = json.loads(dumps({a: 1, real: 2, b: 3}))
    assert doc[real] == 2
    by_bytes = {raw(v): doc[k] for k, v in doc["keyBytes"].items()}
    assert by_bytes == {b"caf\xe9": 1, b"caf\xff": 3}


def test_dumps_exact_reads_back_every_name() -> None:
    """The form of the files Phoenix reads back (an export's metadata.json and checksums.json):
    valid UTF-8, and json.loads gives the very names back, as keys too."""
    names = [os.fsdecode(n) for n in (b"caf\xe9", b"caf\xff", "caf\ufffd".encode(), b"\xed\xa0\x80", "é".encode())]
    doc = {"files": {n: i for i, n in enumerate(names)}, "list": names}
    text = dumps_exact(doc, indent=2)
    assert json.loads(text.encode("utf-8").decode("utf-8")) == doc
    assert "é" in text  # readable, not escaped
