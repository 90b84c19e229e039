"""SQLite values to and from the export's JSON and CSV.

JSON keeps every value exactly:

- INTEGER, TEXT and NULL as JSON integers, strings and null; REAL as JSON numbers (Python's
  shortest round-trip form), with non-finite values as `{"$real": "inf"}` / `"-inf"`;
- a vector (float32 BLOB of a vector column) as an array of numbers, each printed with 9
  significant digits, which is exactly enough for every float32 to read back to the same bits;
- any other BLOB as `{"$blob": "<base64>"}`.

Arrays and objects therefore never collide with a column's own values. CSV cannot tell NULL
from the empty string: both are an empty field; vectors are written as the same JSON array text,
other BLOBs as `base64:<base64>`.
"""

from __future__ import annotations

import base64
import json
import math
import sys
from array import array
from typing import Any

SqlValue = int | float | str | bytes | None

_BIG_ENDIAN = sys.byteorder == "big"


def decode_vector(blob: bytes) -> array[float] | None:
    """The float32 values of a little-endian BLOB, or None when it is not a finite float32 array."""
    if len(blob) % 4:
        return None
    values = array("f")
    values.frombytes(blob)
    if _BIG_ENDIAN:  # pragma: no cover - stored vectors are little-endian
        values.byteswap()
    if not all(map(math.isfinite, values)):
        return None
    return values


def encode_vector(values: list[Any]) -> bytes:
    """The little-endian float32 BLOB of a list of numbers."""
    out = array("f", (float(v) for v in values))
    if _BIG_ENDIAN:  # pragma: no cover
        out.byteswap()
    return out.tobytes()


def vector_text(values: array[float]) -> str:
    """`[v0,v1,…]` with 9 significant digits per value (float32 round-trips exactly)."""
    # "-0" would read back as the integer 0 and lose the sign bit.
    return "[" + ",".join(format(v, ".9g") if v or math.copysign(1.0, v) > 0 else "-0.0" for v in values) + "]"


def json_value(value: SqlValue, vector: bool) -> str:
    """One value as JSON text (vectors only when `vector` and the BLOB decodes)."""
    if isinstance(value, bytes):
        if vector:
            decoded = decode_vector(value)
            if decoded is not None:
                return vector_text(decoded)
        return '{"$blob": "' + base64.b64encode(value).decode("ascii") + '"}'
    if isinstance(value, float) and not math.isfinite(value):
        return '{"$real": "' + ("inf" if value > 0 else "-inf") + '"}'
    return json.dumps(value, ensure_ascii=False)


_INT64 = range(-(2**63), 2**63)


def from_json(value: Any) -> SqlValue:
    """A JSON value of the export back to what SQLite stores; anything `json_value` never writes
    is a ValueError (read before any store changes, so a hand-made value imports nothing rather
    than failing a later store's merge, or going in as another value)."""
    if value is None or isinstance(value, (str, int, float)):
        if isinstance(value, bool):  # JSON true/false never comes from SQLite, but be exact
            return int(value)
        if isinstance(value, int) and value not in _INT64:
            raise ValueError(f"the number {str(value)[:30]} is beyond SQLite's 64-bit integers")
        if isinstance(value, float) and not math.isfinite(value):  # 1e400: written {"$real": "inf"}
            raise ValueError(f"the number {value} is written as a number, which `phx export` never does")
        return value
    if isinstance(value, list):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ValueError(f"a vector holds something other than numbers: {value!r:.60}")
        try:
            blob = encode_vector(value)  # an integer past a float is an OverflowError, 1e39 infinity
        except OverflowError:
            blob = b"\xff\xff\xff\xff"
        if decode_vector(blob) is None:
            raise ValueError(f"a vector holds a number beyond 32-bit floats: {value!r:.60}")
        return blob
    if isinstance(value, dict) and len(value) == 1:
        if isinstance(value.get("$blob"), str):
            return base64.b64decode(value["$blob"], validate=True)
        if value.get("$real") in ("inf", "-inf"):
            return math.inf if value["$real"] == "inf" else -math.inf
    raise ValueError(f"unexpected value in an export: {value!r:.60}")


def csv_value(value: SqlValue, vector: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        if vector:
            decoded = decode_vector(value)
            if decoded is not None:
                return vector_text(decoded)
        return "base64:" + base64.b64encode(value).decode("ascii")
    if isinstance(value, float):
        return repr(value)
    return str(value)
