"""SQL identifiers in the statements Phoenix writes itself (SQLite and PostgreSQL alike), and
SQLite's error messages as text."""

import sqlite3


def quote(name: str) -> str:
    """An SQL identifier, quoted: a table or column name is never text to interpret, whatever it
    holds (quotes, spaces, keywords)."""
    return '"' + name.replace('"', '""') + '"'


def sqlite_error_text(exc: sqlite3.Error | UnicodeDecodeError) -> str:
    """SQLite's message. Python raises UnicodeDecodeError instead of an error whose message quotes
    a name that is not UTF-8 (a damaged schema): that message, decoded leniently."""
    if isinstance(exc, UnicodeDecodeError) and isinstance(exc.object, bytes):
        return exc.object.decode("utf-8", "replace")
    return str(exc) or "the check failed"
