"""Values to and from the export (float32 vectors exactly), checksums.json, and heat indicators."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phoenix_backup.memory import checksums
from phoenix_backup.memory.checksums import verify_checksums, write_checksums
from phoenix_backup.memory.markdown import heat_icon
from phoenix_backup.memory.values import csv_value, decode_vector, from_json, json_value


@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=300))
def test_vectors_round_trip_bit_exactly(values: list[float]) -> None:
    blob = struct.pack(f"<{len(values)}f", *values)
    text = json_value(blob, vector=True)
    assert text.startswith("[")
    back = from_json(json.loads(text))
    assert back == blob


@given(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.text(), st.binary()))
def test_scalars_round_trip(value: int | float | str | bytes | None) -> None:
    assert from_json(json.loads(json_value(value, vector=False))) == value


def test_values_that_are_not_vectors_stay_blobs() -> None:
    nan = struct.pack("<64f", *([math.nan] * 64))
    assert decode_vector(nan) is None
    assert json.loads(json_value(nan, vector=True)) == {"$blob": json.loads(json_value(nan, vector=False))["$blob"]}
    odd = b"\x00" * 257
    assert from_json(json.loads(json_value(odd, vector=True))) == odd
    assert json.loads(json_value(math.inf, vector=False)) == {"$real": "inf"}
    assert from_json({"$real": "-inf"}) == -math.inf


@pytest.mark.parametrize(
    "value",
    [
        *(2**63, -(2**63) - 1, {"$real": "nan"}, {"$real": "inf", "x": 1}, {"$blob": 5}, ["1.5"], [True], [[0.5]], {}),
        # a vector number past a float ended the import as an internal error (OverflowError); one
        # past a 32-bit float, and a bare 1e400, went in as infinity
        *([10**400], [0.5, 1e39], [-1e400], 1e400, -1e400),
    ],
    ids=lambda v: repr(v)[:24],
)
def test_a_value_phx_export_never_writes_is_refused(value: object) -> None:
    # A hand-made export's values: an integer past int64 failed the merge of its store after the
    # stores before it were merged (an OverflowError, "internal error"); `{"$real": "nan"}` went in
    # as -inf, a vector of strings or booleans as floats.
    with pytest.raises(ValueError):
        from_json(value)


def test_csv_values() -> None:
    assert csv_value(None, False) == ""
    assert csv_value(b"\x01\x02", False) == "base64:AQI="
    assert csv_value(struct.pack("<2f", 0.5, -1.0), True) == "[0.5,-1]"
    assert csv_value(0.1, False) == "0.1"


def test_heat_indicators() -> None:
    assert [heat_icon(h) for h in (0.95, 0.71, 0.7, 0.5, 0.3, 0.29, 0.0, None)] == [
        "🔥",
        "🔥",
        "•",
        "•",
        "•",
        "❄️",
        "❄️",
        "❄️",
    ]


def test_checksums_written_and_verified(tmp_path: Path) -> None:
    (tmp_path / "databases" / "memory").mkdir(parents=True)
    (tmp_path / "metadata.json").write_text("{}\n")
    (tmp_path / "databases" / "memory" / "lessons.json").write_text("[\n]\n")
    doc = write_checksums(tmp_path)
    files = doc["files"]
    assert isinstance(files, dict)
    assert sorted(files) == ["databases/memory/lessons.json", "metadata.json"]
    assert files["metadata.json"] == hashlib.sha256(b"{}\n").hexdigest()
    listing = "".join(f"{files[p]}  {p}\n" for p in sorted(files))
    assert doc["combined"] == hashlib.sha256(listing.encode()).hexdigest()
    assert json.loads((tmp_path / "checksums.json").read_text()) == doc
    if shutil.which("sha256sum"):  # the documented way to check an export without Phoenix
        proc = subprocess.run(["sha256sum", "-c", "-"], input=listing, text=True, cwd=tmp_path, capture_output=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    report = verify_checksums(tmp_path)
    assert report.ok and report.checked == 2

    (tmp_path / "databases" / "memory" / "lessons.json").write_text("[\n{}\n]\n")
    (tmp_path / "extra.txt").write_text("added later")
    problems = verify_checksums(tmp_path).problems
    assert problems == [
        "databases/memory/lessons.json does not match its SHA-256",
        "extra.txt is not listed in checksums.json",
    ]
    (tmp_path / "metadata.json").unlink()
    assert "metadata.json is missing" in verify_checksums(tmp_path).problems


@pytest.mark.parametrize("bad", ["{", '{"algorithm": "md5", "files": {}}'])
def test_unreadable_checksums(tmp_path: Path, bad: str) -> None:
    (tmp_path / "checksums.json").write_text(bad)
    report = verify_checksums(tmp_path)
    assert not report.ok and "unreadable" in report.problems[0]


def _export_with_links(tmp_path: Path) -> tuple[Path, Path]:
    """An export folder, and a folder outside it holding a copy of its files."""
    export, outside = tmp_path / "export", tmp_path / "outside"
    (export / "databases" / "memory").mkdir(parents=True)
    (export / "metadata.json").write_text("{}\n")
    (export / "databases" / "memory" / "lessons.json").write_text("[\n]\n")
    write_checksums(export)
    shutil.copytree(export, outside)
    return export, outside


@pytest.mark.parametrize("planted", ["checksums.json", "metadata.json", "databases"])
def test_an_export_file_reached_through_a_link_is_a_problem_and_never_read(tmp_path: Path, planted: str) -> None:
    # phx export writes no links. One planted in an export (its checksums are unkeyed) led the
    # check out of it: checksums.json, metadata.json or a folder of table files was read, and
    # hashed, wherever the link pointed (/etc/..., the live store, /dev/zero: a MemoryError).
    export, outside = _export_with_links(tmp_path)
    shutil.rmtree(export / planted) if planted == "databases" else (export / planted).unlink()
    (export / planted).symlink_to(outside / planted)
    report = verify_checksums(export)
    assert not report.ok
    assert f"{planted}" in report.problems[0] and "symbolic link" in report.problems[0], report.problems


def test_a_fifo_or_oversized_checksums_json_is_a_problem_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A FIFO named checksums.json blocked `phx import` for ever (until a writer came).
    import signal

    def hung(*_: object) -> None:
        raise TimeoutError("verify_checksums blocked on a FIFO")

    export, _outside = _export_with_links(tmp_path)
    (export / "checksums.json").rename(tmp_path / "checksums.json")
    os.mkfifo(export / "checksums.json")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        report = verify_checksums(export)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert report.problems == [
        "checksums.json is unreadable (it is not a regular file, which `phx export` always writes)"
    ]
    # One read whole is bounded: a larger one is refused, not read (the bound made small here).
    (export / "checksums.json").unlink()
    (tmp_path / "checksums.json").rename(export / "checksums.json")
    assert verify_checksums(export).ok
    monkeypatch.setattr(checksums, "MAX_JSON_BYTES", 100)
    assert "larger than the 100 B" in verify_checksums(export).problems[0]
