"""SQL identifiers in the statements Phoenix writes itself (SQLite and PostgreSQL alike)."""


def quote(name: str) -> str:
    """An SQL identifier, quoted: a table or column name is never text to interpret, whatever it
    holds (quotes, spaces, keywords)."""
    return '"' + name.replace('"', '""') + '"'
