"""JSON that stays valid for any file name.

A Linux file name is bytes, not text. Python hands over the bytes that are not UTF-8 as lone
surrogates (PEP 383), which JSON cannot carry: printed raw they make the document invalid UTF-8,
escaped (`\\udce9`) they are text no other language decodes back. So every string of a JSON
document Phoenix prints is made valid Unicode first, and the exact bytes travel beside it:

- an object member `"path": <name>` becomes `"path": <name with each undecodable byte as U+FFFD>`
  plus `"pathBytes": <base64 of the exact bytes>`;
- an array element becomes `{"text": <the U+FFFD form>, "bytes": <base64>}`;
- an object key becomes its U+FFFD form (numbered, ` (2)`, when another key already shows so),
  and the object gets `"keyBytes": {<that form>: <base64>}`.

Strings that are valid UTF-8, which is every string of an ordinary workspace, are left exactly as
they were, so documents without such names do not change.

A file Phoenix reads back itself (an export's `metadata.json` and `checksums.json`) needs the name
itself, also as an object key, which cannot take a sibling: `dumps_exact` writes the undecodable
bytes as JSON's `\\udcXX` escapes instead, which `json.loads` turns back into the same name.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def portable(doc: Any) -> Any:
    """`doc` with every string valid Unicode, as the module docstring describes."""
    if isinstance(doc, dict):
        out: dict[str, Any] = {}
        key_bytes: dict[str, str] = {}
        # Keys are names here: two undecodable ones (caf\xe9, caf\xff) or one and a real name
        # holding U+FFFD would show alike, so a shown key already taken gets a number.
        taken = {k for k in doc if not isinstance(k, str) or _undecodable(k) is None}
        for key, value in doc.items():
            if isinstance(key, str) and (raw := _undecodable(key)) is not None:
                key = shown = _display(raw)
                n = 2
                while key in taken:
                    key, n = f"{shown} ({n})", n + 1
                taken.add(key)
                key_bytes[key] = _b64(raw)
            if isinstance(value, str) and (raw := _undecodable(value)) is not None:
                out[key] = _display(raw)
                out[f"{key}Bytes"] = _b64(raw)
            else:
                out[key] = portable(value)
        if key_bytes:
            out["keyBytes"] = key_bytes
        return out
    if isinstance(doc, list | tuple):
        return [_element(v) for v in doc]
    return doc


def dumps(doc: Any, **kwargs: Any) -> str:
    """`json.dumps` of the portable form; non-ASCII text stays readable (ensure_ascii off), but
    DEL and the C1 control characters (U+0080-U+009F: U+009B starts an escape sequence on some
    terminals), which JSON may carry raw, are `\\uXXXX` escapes like the C0 ones: the same
    strings, and nothing but text on a terminal."""
    return _CONTROL.sub(_escape, json.dumps(portable(doc), ensure_ascii=False, **kwargs))


# Outside strings a JSON document holds none of these: every one is inside a string.
_CONTROL = re.compile("[\x7f-\x9f]")


def _escape(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


def dumps_exact(doc: Any, **kwargs: Any) -> str:
    """`json.dumps` with non-ASCII text readable and every surrogate (a byte of a name that is not
    UTF-8) as its `\\uXXXX` escape: valid UTF-8 text that `json.loads` reads back exactly."""
    text = json.dumps(doc, ensure_ascii=False, **kwargs)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _element(value: Any) -> Any:
    if isinstance(value, str) and (raw := _undecodable(value)) is not None:
        return {"text": _display(raw), "bytes": _b64(raw)}
    return portable(value)


def _undecodable(text: str) -> bytes | None:
    """The exact bytes of `text` when it is not valid Unicode (it holds surrogates), else None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape")  # a name read from the file system
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")  # a lone surrogate from elsewhere


def _display(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
