"""The Markdown export: a store rendered for a person, not for a machine.

- ArgentOS `memory.db`: memories grouped by category, hottest first, each with its heat indicator
  (🔥 above 0.7, • from 0.3 to 0.7, ❄️ below 0.3); entities and their relations as a Mermaid graph
  (the strongest `MAX_GRAPH_EDGES` relations, so the diagram stays drawable) followed by the full
  lists; reflections; lessons.
- `observations.db`: sessions, newest first, with their observations.
- `dashboard.db`: projects with task counts, then tasks by status.
- Any other store: table by table (at most `MAX_TABLE_ROWS` rows each; the JSON export has all).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import TextIO

from phoenix_backup.memory.schema import DatabaseSchema, TableInfo
from phoenix_backup.memory.values import decode_vector
from phoenix_backup.sql import quote

MAX_GRAPH_EDGES = 150
MAX_TABLE_ROWS = 1000
MAX_CELL = 200

HOT, WARM, COLD = "🔥", "•", "❄️"


def heat_icon(heat: float | None) -> str:
    h = float(heat or 0.0)
    if h > 0.7:
        return HOT
    if h < 0.3:
        return COLD
    return WARM


def one_line(text: object, limit: int | None = None) -> str:
    s = " ".join(str(text if text is not None else "").split())
    if limit is not None and len(s) > limit:
        s = s[: limit - 1].rstrip() + "…"
    return s


def cell(value: object, vector: bool = False) -> str:
    if isinstance(value, bytes):
        if vector and (decoded := decode_vector(value)) is not None:
            return f"vector({len(decoded)})"
        return f"<{len(value)} bytes>"
    if value is None:
        return ""
    return one_line(value, MAX_CELL).replace("|", "\\|")


def _has(schema: DatabaseSchema, table: str, *columns: str) -> bool:
    t = schema.table(table)
    return t is not None and all(c in t.columns for c in columns)


def _count(con: sqlite3.Connection, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()[0])


def render(con: sqlite3.Connection, schema: DatabaseSchema, title: str, out: TextIO) -> None:
    """Write the Markdown of one store to `out`."""
    if schema.kind == "argentos-memory":
        _memory(con, schema, title, out)
    elif schema.kind == "argentos-observations" and _has(schema, "observations", "session_id", "content"):
        _observations(con, schema, title, out)
    elif schema.kind == "argentos-dashboard" and _has(schema, "tasks", "title", "status"):
        _dashboard(con, schema, title, out)
    else:
        out.write(f"# {title}\n\nAn unknown schema, rendered table by table.\n")
        for table in schema.tables:
            _table(con, table, out)


def _memory(con: sqlite3.Connection, schema: DatabaseSchema, title: str, out: TextIO) -> None:
    out.write(f"# Memories — {title}\n\n")
    out.write(f"Heat: {HOT} hot (above 0.7) · {WARM} warm (0.3 to 0.7) · {COLD} cold (below 0.3)\n\n")
    counts = {t.name: _count(con, t.name) for t in schema.tables}
    out.write("| what | rows |\n|---|---|\n" + "".join(f"| {name} | {n} |\n" for name, n in counts.items()) + "\n")
    if _has(schema, "memory_items", "category", "content", "heat"):
        _memories_by_category(con, schema, out)
    if _has(schema, "entities", "id", "name") and _has(schema, "relations", "source_id", "target_id"):
        _graph(con, schema, out)
    if _has(schema, "reflections", "content"):
        out.write("## Reflections\n\n")
        cols = schema.table("reflections")
        assert cols is not None
        period = "period" if "period" in cols.columns else "''"
        created = "created_at" if "created_at" in cols.columns else "''"
        for when, per, content in con.execute(
            f"SELECT {created}, {period}, content FROM reflections ORDER BY {created}, rowid"
        ):
            out.write(f"### {one_line(when)} {('(' + one_line(per) + ')') if per else ''}\n\n{content}\n\n")
    if _has(schema, "lessons", "lesson"):
        out.write("## Lessons\n\n")
        t = schema.table("lessons")
        assert t is not None
        conf = "confidence" if "confidence" in t.columns else "NULL"
        applied = "times_applied" if "times_applied" in t.columns else "NULL"
        context = "context" if "context" in t.columns else "''"
        for lesson, c, n, ctx in con.execute(
            f"SELECT lesson, {conf}, {applied}, {context} FROM lessons ORDER BY {conf} DESC, rowid"
        ):
            extra = []
            if c is not None:
                extra.append(f"confidence {float(c):.2f}")
            if n is not None:
                extra.append(f"applied {int(n)}×")
            tail = f" ({', '.join(extra)})" if extra else ""
            out.write(f"- **{one_line(lesson)}**{tail}" + (f" — {one_line(ctx)}" if ctx else "") + "\n")
        out.write("\n")


def _memories_by_category(con: sqlite3.Connection, schema: DatabaseSchema, out: TextIO) -> None:
    described: dict[str, str] = {}
    if _has(schema, "categories", "name", "description"):
        described = {str(n): str(d) for n, d in con.execute("SELECT name, description FROM categories ORDER BY id")}
    present = [
        (str(c), int(n))
        for c, n in con.execute("SELECT category, count(*) FROM memory_items GROUP BY category ORDER BY category")
    ]
    order = {name: i for i, name in enumerate(described)}
    present.sort(key=lambda cn: (order.get(cn[0], len(order)), cn[0]))
    t = schema.table("memory_items")
    assert t is not None
    summary = "summary" if "summary" in t.columns else "''"
    created = "created_at" if "created_at" in t.columns else "''"
    access = "access_count" if "access_count" in t.columns else "NULL"
    out.write("## Memories by category\n\n")
    for category, n in present:
        heading = f"### {category} ({n})"
        if category in described:
            heading += f" — {described[category]}"
        out.write(heading + "\n\n")
        rows = con.execute(
            f"SELECT heat, content, {summary}, {created}, {access} FROM memory_items "
            f"WHERE category IS ? ORDER BY heat DESC, {created}",
            (category,),
        )
        for heat, content, _summ, when, accessed in rows:
            meta = [f"heat {float(heat or 0):.2f}"]
            if when:
                meta.append(str(when)[:10])
            if accessed:
                meta.append(f"used {int(accessed)}×")
            out.write(f"- {heat_icon(heat)} {one_line(content)} _({', '.join(meta)})_\n")
        out.write("\n")


def _mermaid_label(text: str) -> str:
    return one_line(text, 60).replace('"', "'").replace("[", "(").replace("]", ")")


def _graph(con: sqlite3.Connection, schema: DatabaseSchema, out: TextIO) -> None:
    ent = schema.table("entities")
    rel = schema.table("relations")
    assert ent is not None and rel is not None
    etype = "type" if "type" in ent.columns else "''"
    names = {
        str(i): (str(n), str(t or "")) for i, n, t in con.execute(f"SELECT id, name, {etype} FROM entities ORDER BY id")
    }
    relation = "relation" if "relation" in rel.columns else "''"
    weight = "weight" if "weight" in rel.columns else "0"
    edges = con.execute(
        f"SELECT source_id, target_id, {relation}, {weight} FROM relations ORDER BY {weight} DESC, rowid"
    ).fetchall()
    shown = edges[:MAX_GRAPH_EDGES]
    out.write("## Entities and relationships\n\n")
    if len(edges) > len(shown):
        out.write(f"The graph shows the {len(shown)} strongest of {len(edges)} relations; all are listed below.\n\n")
    ids: dict[str, str] = {}

    def node(key: str) -> str:
        if key not in ids:
            ids[key] = f"e{len(ids)}"
        return ids[key]

    lines = ["```mermaid", "graph LR"]
    for src, dst, what, _w in shown:
        lines.append(f"  {node(str(src))} -->|{_mermaid_label(str(what)) or 'related'}| {node(str(dst))}")
    decl = []
    for key, nid in ids.items():
        name, typ = names.get(key, (key, ""))
        decl.append(f'  {nid}["{_mermaid_label(name)}' + (f" ({_mermaid_label(typ)})" if typ else "") + '"]')
    out.write("\n".join(lines[:2] + decl + lines[2:] + ["```", ""]) + "\n")
    out.write("### Entities\n\n| name | type | profile |\n|---|---|---|\n")
    profile = "profile" if "profile" in ent.columns else "''"
    for name, typ, prof in con.execute(f"SELECT name, {etype}, {profile} FROM entities ORDER BY name, id"):
        out.write(f"| {cell(name)} | {cell(typ)} | {cell(prof)} |\n")
    out.write("\n### Relationships\n\n| from | relation | to | weight |\n|---|---|---|---|\n")
    for src, dst, what, w in edges:
        a = names.get(str(src), (str(src), ""))[0]
        b = names.get(str(dst), (str(dst), ""))[0]
        out.write(f"| {cell(a)} | {cell(what)} | {cell(b)} | {cell(w)} |\n")
    out.write("\n")


def _observations(con: sqlite3.Connection, schema: DatabaseSchema, title: str, out: TextIO) -> None:
    out.write(f"# Observations — {title}\n\n")
    t = schema.table("observations")
    assert t is not None
    kind = "kind" if "kind" in t.columns else "''"
    created = "created_at" if "created_at" in t.columns else "''"
    sessions: dict[str, tuple[str, ...]] = {}
    if _has(schema, "sessions", "id"):
        s = schema.table("sessions")
        assert s is not None
        cols = [c if c in s.columns else "''" for c in ("channel", "started_at", "ended_at", "summary")]
        for row in con.execute(f"SELECT id, {', '.join(cols)} FROM sessions"):
            sessions[str(row[0])] = tuple(str(v or "") for v in row[1:])
    out.write(f"{_count(con, 'observations')} observations in {len(sessions)} sessions, newest first.\n\n")
    current: object = object()
    for sid, k, content, when in con.execute(
        f"SELECT session_id, {kind}, content, {created} FROM observations ORDER BY {created} DESC, rowid DESC"
    ):
        if sid != current:
            current = sid
            channel, started, ended, summ = sessions.get(str(sid), ("", "", "", ""))
            out.write(f"\n### Session {sid}" + (f" ({channel})" if channel else "") + "\n\n")
            if started:
                out.write(f"{started} – {ended}" + (f": {one_line(summ)}" if summ else "") + "\n\n")
        out.write(f"- {str(when)[11:16] or str(when)} **{one_line(k)}** {one_line(content)}\n")
    out.write("\n")


def _dashboard(con: sqlite3.Connection, schema: DatabaseSchema, title: str, out: TextIO) -> None:
    out.write(f"# Dashboard — {title}\n\n")
    t = schema.table("tasks")
    assert t is not None
    if _has(schema, "projects", "name"):
        p = schema.table("projects")
        assert p is not None
        status = "status" if "status" in p.columns else "''"
        desc = "description" if "description" in p.columns else "''"
        per_project: dict[str, dict[str, int]] = {}
        if "project" in t.columns:
            for proj, st, n in con.execute("SELECT project, status, count(*) FROM tasks GROUP BY project, status"):
                per_project.setdefault(str(proj), {})[str(st)] = int(n)
        out.write("## Projects\n\n| project | status | tasks | description |\n|---|---|---|---|\n")
        for name, st, d in con.execute(f"SELECT name, {status}, {desc} FROM projects ORDER BY name"):
            tasks = ", ".join(f"{n} {s}" for s, n in sorted(per_project.get(str(name), {}).items()))
            out.write(f"| {cell(name)} | {cell(st)} | {cell(tasks)} | {cell(d)} |\n")
        out.write("\n")
    cols = [c for c in ("id", "title", "priority", "project", "assignee", "updated_at") if c in t.columns]
    statuses = [str(s) for (s,) in con.execute("SELECT DISTINCT status FROM tasks")]
    open_first = ("in_progress", "blocked", "pending")
    statuses.sort(key=lambda s: (open_first.index(s) if s in open_first else len(open_first), s))
    for status in statuses:
        n = int(con.execute("SELECT count(*) FROM tasks WHERE status IS ?", (status,)).fetchone()[0])
        out.write(f"## Tasks: {status} ({n})\n\n| {' | '.join(cols)} |\n|{'---|' * len(cols)}\n")
        order = "updated_at DESC" if "updated_at" in t.columns else "rowid"
        for row in con.execute(
            f"SELECT {', '.join(quote(c) for c in cols)} FROM tasks WHERE status IS ? ORDER BY {order}", (status,)
        ):
            out.write("| " + " | ".join(cell(v) for v in row) + " |\n")
        out.write("\n")


def _table(con: sqlite3.Connection, table: TableInfo, out: TextIO) -> None:
    total = _count(con, table.name)
    out.write(f"\n## {table.name} ({total} rows)\n\n")
    if total > MAX_TABLE_ROWS:
        out.write(f"The first {MAX_TABLE_ROWS} rows by key; the JSON and CSV exports hold all {total}.\n\n")
    cols = table.columns
    out.write("| " + " | ".join(cell(c) for c in cols) + " |\n|" + "---|" * len(cols) + "\n")
    rows: Iterable[tuple[object, ...]] = con.execute(
        table.select_sql(ordered=True) + f" LIMIT {MAX_TABLE_ROWS}"
    ).fetchall()
    vectors = set(table.vector_columns)
    for row in rows:
        out.write("| " + " | ".join(cell(v, c in vectors) for c, v in zip(cols, row, strict=True)) + " |\n")
