"""SQL identifiers in the statements Phoenix writes itself (SQLite and PostgreSQL alike), and
SQLite's error messages as text."""

import re
import sqlite3


def quote(name: str) -> str:
    """An SQL identifier, quoted: a table or column name is never text to interpret, whatever it
    holds (quotes, spaces, keywords)."""
    return '"' + name.replace('"', '""') + '"'


# What SQLite reads as one piece of a statement: a quoted name or string ("..", `..`, [..], '..',
# each possibly cut short), a comment (dropped), a word, or any other character. A word is what
# SQLite takes for one: ASCII letters, digits, `_`, `$` and every character beyond ASCII (`au€dit`,
# a no-break space, an emoji, a combining accent are all inside one unquoted name).
_TOKEN = re.compile(
    r"""\"(?:[^"]|\"\")*\"?|`(?:[^`]|``)*`?|\[[^\]]*\]?|'(?:[^']|'')*'?|/\*.*?(?:\*/|$)|--[^\n]*"""
    r"""|[A-Za-z0-9_$\u0080-\U0010ffff]+|\S""",
    re.DOTALL,
)
_CLOSE = {'"': '"', "`": "`", "'": "'", "[": "]"}


def tokens(text: str) -> list[str]:
    """An SQLite statement's tokens, comments left out: a quote, `--` or `/*` inside a quoted name
    is part of the name, never the start of a string or a comment."""
    return [t for t in _TOKEN.findall(text) if not t.startswith(("--", "/*"))]


def statement_ends(text: str) -> bool:
    """Whether an SQLite text holds the end of a statement (a `;` closing it) anywhere, as
    SQLite reads it: a `;` inside a trigger's BEGIN ... END, a string, a quoted name or a comment
    ends nothing. `sqlite_master` keeps each statement without its `;`, so there any end is a
    second statement after the first (`... END; CREATE TRIGGER b ... END`).

    Only two `;` can be the first end (sqlite3_complete's states): the first `;` of all, unless
    the statement is a trigger, whose end is a `;` after `; END`. No other `;` is asked about: a
    prefix for each made a trigger of many statements cost its square (a hand-made export's
    metadata.json may be 256 MiB)."""
    words = tokens(text)
    semis = [k for k, w in enumerate(words) if w == ";"]
    ends = semis[:1] + [k for k in semis[1:] if words[k - 1].upper() == "END" and words[k - 2] == ";"]
    return any(sqlite3.complete_statement(" ".join(words[: k + 1])) for k in ends)


def fold_name(name: str) -> str:
    """A name as SQLite compares names: ASCII letters in any case."""
    return "".join(c.lower() if c.isascii() else c for c in name)


def unquote(token: str) -> str:
    """The name a token stands for: quotes taken off (doubled ones made single), any spelling."""
    close = _CLOSE.get(token[:1])
    if close is None:
        return token
    inner = token[1:-1] if len(token) > 1 and token.endswith(close) else token[1:]
    return inner if close == "]" else inner.replace(close * 2, close)


def virtual_table(text: str | None) -> tuple[str, list[str]] | None:
    """The module (lower-cased, "?" when unnamed) and the tokens after it of a `CREATE VIRTUAL
    TABLE` statement; None for other statements. Token by token: a table or column named
    `x USING vec0` or `n(, content='')` is a name, never the module or an option."""
    words = tokens(text or "")
    if [w.upper() for w in words[:3]] != ["CREATE", "VIRTUAL", "TABLE"]:
        return None
    at = next((i for i, w in enumerate(words) if w.upper() == "USING"), len(words))
    if at + 1 >= len(words):
        return "?", []
    return unquote(words[at + 1]).lower(), words[at + 2 :]


# A piece of a PostgreSQL script (standard_conforming_strings on, as pg_dumpall writes it): a
# quoted name, a string, a comment, an end of statement, anything else.
_PG_PIECE = re.compile(r"""\"(?:[^"]|\"\")*\"?|'(?:[^']|'')*'?|--[^\n]*|;|[^"';-]+|-""")


def pg_statements(text: str) -> list[str]:
    """A PostgreSQL script's statements, each ending with `;`, comments left out: a newline or a
    `;` inside a quoted name (a role named `a<newline>GRANT ... TO me;`) stays in that name.

    It reads what `pg_dumpall --globals-only` writes: quoted names, standard strings, `--`
    comments. It does not know block comments, `E''` strings or dollar quotes, so a crafted script
    can hide a `;` from it: a caller runs only statements it rebuilt from pieces it checked
    (`sinks/postgres.py`), never a piece as it came."""
    out: list[str] = []
    now: list[str] = []
    for piece in _PG_PIECE.findall(text):
        if piece.startswith("--"):
            continue
        now.append(piece)
        if piece == ";":
            out.append("".join(now).strip())
            now = []
    return out


def sqlite_error_text(exc: sqlite3.Error | UnicodeDecodeError) -> str:
    """SQLite's message. Python raises UnicodeDecodeError instead of an error whose message quotes
    a name that is not UTF-8 (a damaged schema): that message, decoded leniently."""
    if isinstance(exc, UnicodeDecodeError) and isinstance(exc.object, bytes):
        return exc.object.decode("utf-8", "replace")
    return str(exc) or "the check failed"
