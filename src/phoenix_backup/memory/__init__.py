"""What Phoenix knows about agent memory stores, independent of any repository.

- `schema`: which tables of an SQLite store hold data (and by which key), which are derived
  (FTS5/FTS4 and sqlite-vec `vec0` shadow tables), which columns hold embedding vectors, and which
  known ArgentOS schema a store follows;
- `values`: float32 vectors and other values to and from JSON and CSV;
- `checksums`: the `checksums.json` of an export;
- `sanitize`: secrets found and redacted in config and env files;
- `markdown`: the person-readable rendering of the known schemas.

The use cases built on these live in `ops/export.py`, `ops/import_.py`, `sinks/sqlite_merge.py` and
`ops/diff.py`.
"""
