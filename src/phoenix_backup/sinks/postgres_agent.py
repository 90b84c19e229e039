"""One agent's saved rows merged into a shared PostgreSQL database: the agent-scoped restore, and
the same merge run by `phx drill` against a scratch copy of the live tables.

A merge runs in one transaction, with `app.agent_id` set so that row-level security applies:

1. stage: each saved table's CSV is copied into a temporary table with the live table's column
   types (no constraints, so a refused row is refused by the live table, under its own name); rows
   of other agents are dropped;
2. triggers: `session_replication_role = replica` is set when the role may (a superuser, or on
   PostgreSQL 15+ a role granted SET on it), so user triggers do not fire; it also turns off the
   foreign-key triggers, so step 5 checks every foreign key itself. Otherwise the user triggers
   that will fire are named beforehand (`trigger_warning`: the restore asks, or needs --yes);
3. order: tables are written parents first, from the catalog's foreign keys; a cycle is written
   with its constraints deferred when they are DEFERRABLE, and otherwise stops the merge before
   anything is written, naming the cycle (with triggers off, a cycle needs neither);
4. write: a table with a primary key by key, updating only rows whose contents differ (`IS
   DISTINCT FROM` on the text of every column: types without an equality operator compare too)
   and inserting only rows whose key is not there (no system column is read, so a partitioned
   table merges like any other), `skip` keeping rows that exist; a table without a primary key
   gets the saved rows that are missing from the agent's rows (matched on the whole row,
   duplicates counted) and, with `keyless="replace"`, loses the agent's rows the snapshot lacks
   (refused when other rows may reference them). Only a table's own rows are read and written
   (`ONLY`: not those of tables inheriting from it); agent_id's type comes from the catalog;
5. check: the foreign keys of every written row (with triggers off), then every saved row must be
   there, with the saved contents (`update`) or at least its key (`skip`).

The drill copies each agent table into a temporary table (columns, defaults, CHECK, NOT NULL,
primary, unique and exclusion constraints, unique indexes with a predicate or on expressions,
identity, generated columns), with the agent's live rows, the rows of other tables they
reference, and the foreign keys between them, then runs steps 2-5 against the
copies and rolls back: it fails where the merge of the same rows into the live tables would fail
(order, foreign keys, constraints, changed columns, privileges), and never writes to the shared
tables. What it cannot see: other agents' rows (a key held by another agent) and user triggers.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

from phoenix_backup.errors import RestoreError
from phoenix_backup.sources import postgres as pg

KeylessMode = Literal["add", "replace"]
KEYLESS_MODES: tuple[KeylessMode, ...] = ("add", "replace")
# Only one table of a merge is written at a time, but all are staged first (the drill copies the
# parents its rows reference, and the check reads every staged table).
_STAGED = "phx_saved_{}"
_SCRATCH = "phx_scratch_{}"
_PARENT = "phx_parent_{}"
_ROW = "phx:row"  # a row number in a staging table (tables without a primary key)
_FK_ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
# pg_trigger.tgtype bits.
_BEFORE, _INSERT, _DELETE, _UPDATE, _INSTEAD = 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 6


@dataclass(frozen=True)
class ForeignKey:
    name: str
    child: str  # schema.table
    parent: str
    child_columns: tuple[str, ...]
    parent_columns: tuple[str, ...]
    deferrable: bool
    initially_deferred: bool
    on_delete: str  # pg_constraint.confdeltype
    on_update: str
    match_full: bool
    child_name: tuple[str, str]  # (schema, table): `child` is ambiguous when a name holds a dot
    parent_name: tuple[str, str]


@dataclass(frozen=True)
class Trigger:
    table: str
    name: str
    when: str  # e.g. "BEFORE UPDATE"


@dataclass
class MergeResult:
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    found: dict[str, int] = field(default_factory=dict)  # rows there after the merge, as checked
    problems: list[str] = field(default_factory=list)  # the check failed: the restore is not good
    warnings: list[str] = field(default_factory=list)
    triggers_off: bool = False


class _Saved:
    """One staged table: the saved rows of this agent, and where they are merged into."""

    def __init__(self, index: int, table: pg.AgentTable, target: sql.Identifier) -> None:
        self.index = index
        self.table = table
        self.live = sql.Identifier(table.schema, table.table)
        self.target = target  # the live table, or the drill's scratch copy
        # Its own rows, not those of tables inheriting from it (a partitioned table's are its own).
        self.rows = target if table.partitioned else sql.SQL("ONLY {}").format(target)
        self.staged = sql.Identifier(_STAGED.format(index))
        self.saved = 0
        self.foreign = 0


# -- the catalog ---------------------------------------------------------------------------------


def foreign_keys(con: psycopg.Connection[Any], tables: Iterable[str]) -> list[ForeignKey]:
    """The foreign keys whose referencing or referenced table is one of `tables` (schema.table)."""
    rows = con.execute(
        """
        SELECT c.conname, cn.nspname || '.' || cc.relname, pn.nspname || '.' || pc.relname,
               ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k(n, o)
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o),
               ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k(n, o)
                     JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o),
               c.condeferrable, c.condeferred, c.confdeltype, c.confupdtype, c.confmatchtype = 'f',
               cn.nspname, cc.relname, pn.nspname, pc.relname
        FROM pg_constraint c
        JOIN pg_class cc ON cc.oid = c.conrelid JOIN pg_namespace cn ON cn.oid = cc.relnamespace
        JOIN pg_class pc ON pc.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace
        WHERE c.contype = 'f' AND c.conparentid = 0
          AND (cn.nspname || '.' || cc.relname = ANY(%s) OR pn.nspname || '.' || pc.relname = ANY(%s))
        ORDER BY 2, 1
        """,
        (list(tables), list(tables)),
    ).fetchall()
    return [
        ForeignKey(
            str(r[0]),
            str(r[1]),
            str(r[2]),
            tuple(r[3]),
            tuple(r[4]),
            bool(r[5]),
            bool(r[6]),
            str(r[7]),
            str(r[8]),
            bool(r[9]),
            (str(r[10]), str(r[11])),
            (str(r[12]), str(r[13])),
        )
        for r in rows
    ]


def merge_order(tables: list[str], fks: list[ForeignKey]) -> tuple[list[str], list[list[str]]]:
    """`tables` parents first (Kahn's algorithm, ties by name), and the cycles left over: each a
    list of tables that reference each other (a table referencing itself is no cycle: one INSERT
    writes all its rows, and its foreign keys are checked at the end of the statement)."""
    keys = set(tables)
    parents: dict[str, set[str]] = {t: set() for t in tables}
    for fk in fks:
        if fk.child in keys and fk.parent in keys and fk.child != fk.parent:
            parents[fk.child].add(fk.parent)
    order: list[str] = []
    done: set[str] = set()
    while True:
        ready = sorted(t for t in tables if t not in done and parents[t] <= done)
        if not ready:
            break
        order.append(ready[0])
        done.add(ready[0])
    rest = [t for t in sorted(tables) if t not in done]
    cycles = _cycles(rest, {t: parents[t] - done for t in rest})
    # Tables in or below a cycle follow, each cycle's members together, parents still first where
    # the graph allows it.
    return order + rest, cycles


def _cycles(nodes: list[str], parents: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one table (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(parents[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[str] = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def cycle_problem(cycles: list[list[str]], fks: list[ForeignKey]) -> str | None:
    """None when every foreign key inside each cycle is DEFERRABLE (the merge defers them), else
    the sentence naming the cycle and its constraints that are not."""
    for cycle in cycles:
        members = set(cycle)
        inside = [fk for fk in fks if fk.child in members and fk.parent in members and fk.child != fk.parent]
        fixed = [fk for fk in inside if not fk.deferrable]
        if fixed:
            path = " -> ".join([*cycle, cycle[0]])
            names = ", ".join(f"{fk.name} on {fk.child}" for fk in fixed)
            return (
                f"tables {path} reference each other through foreign keys that are not DEFERRABLE ({names}), so "
                "their rows cannot be written in any order; make them DEFERRABLE (ALTER TABLE ... ALTER CONSTRAINT "
                "... DEFERRABLE), or restore as a role that may set session_replication_role (a superuser, or "
                "GRANT SET ON PARAMETER session_replication_role on PostgreSQL 15+)"
            )
    return None


def user_triggers(con: psycopg.Connection[Any], tables: Iterable[str], *, replica: bool) -> list[Trigger]:
    """The user triggers on `tables` that fire on INSERT, UPDATE or DELETE in this session's mode:
    with replica mode, those enabled ALWAYS or REPLICA; otherwise every enabled one but REPLICA."""
    fire = ("A", "R") if replica else ("O", "A")
    rows = con.execute(
        """
        SELECT n.nspname || '.' || c.relname, t.tgname, t.tgtype FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND t.tgenabled = ANY(%s) AND n.nspname || '.' || c.relname = ANY(%s)
        ORDER BY 1, 2
        """,
        (list(fire), list(tables)),
    ).fetchall()
    out: list[Trigger] = []
    for table, name, kind in rows:
        events = [e for bit, e in ((_INSERT, "INSERT"), (_UPDATE, "UPDATE"), (_DELETE, "DELETE")) if kind & bit]
        if not events:
            continue  # TRUNCATE only
        timing = "INSTEAD OF" if kind & _INSTEAD else "BEFORE" if kind & _BEFORE else "AFTER"
        out.append(Trigger(str(table), str(name), f"{timing} {' OR '.join(events)}"))
    return out


def describe_triggers(triggers: list[Trigger]) -> str:
    return "; ".join(f"{t.table}: {t.name} ({t.when})" for t in triggers)


def try_replica(con: psycopg.Connection[Any]) -> bool:
    """Set `session_replication_role = replica` for the rest of the transaction, if the role may."""
    try:
        with con.transaction():
            con.execute("SET LOCAL session_replication_role = replica")
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def _role(con: psycopg.Connection[Any]) -> str:
    row = con.execute("SELECT current_user").fetchone()
    return str(row[0]) if row else "?"


def trigger_warning(con: psycopg.Connection[Any], tables: list[str]) -> str | None:
    """Inside a transaction: the sentence saying which user triggers a merge into `tables` will
    fire, or None when none will. Leaves replica mode set when the role may."""
    replica = try_replica(con)
    firing = user_triggers(con, tables, replica=replica)
    if not firing:
        return None
    if replica:
        why = "they are enabled ALWAYS or REPLICA"
    else:
        role = _role(con)
        why = (
            f"role {role} may not set session_replication_role (a superuser may; on PostgreSQL 15+ "
            f"GRANT SET ON PARAMETER session_replication_role TO {role})"
        )
    return f"the restore will fire these user triggers for the rows it writes ({why}): {describe_triggers(firing)}"


# -- the merge -----------------------------------------------------------------------------------


def merge(
    con: psycopg.Connection[Any],
    tables: list[pg.AgentTable],
    rows_of: Callable[[pg.AgentTable], Iterator[bytes]],
    agent: str,
    *,
    mode: Literal["skip", "update"],
    keyless: KeylessMode,
    drill: bool = False,
) -> MergeResult:
    """Merge the saved rows (`rows_of(table)`: CSV with a header) inside the caller's transaction,
    which has `app.agent_id` set. Raises RestoreError (or psycopg.Error) when the merge cannot be
    done; the caller rolls back. `drill`: into scratch copies (the caller always rolls back)."""
    result = MergeResult()
    keys = [t.key for t in tables]
    tables = live_tables(con, tables)
    _check_privileges(con, tables, mode, keyless)
    fks = foreign_keys(con, keys)
    result.triggers_off = try_replica(con)
    if not result.triggers_off:
        firing = user_triggers(con, keys, replica=False)
        if firing:
            done = "will fire for the rows the restore writes (the drill's copies have none)" if drill else "fired"
            result.warnings.append(
                f"user triggers {done}, as role {_role(con)} may not set session_replication_role: "
                f"{describe_triggers(firing)}"
            )
    order, cycles = merge_order(keys, fks)
    if cycles and not result.triggers_off:
        problem = cycle_problem(cycles, fks)
        if problem is not None:
            raise RestoreError(problem)
        con.execute("SET CONSTRAINTS ALL DEFERRED")
    by_key = {t.key: t for t in tables}
    saved: dict[str, _Saved] = {}
    names: dict[str, str] = {}  # temporary tables by the live table they stand for, for messages
    for i, key in enumerate(order):
        t = by_key[key]
        s = _Saved(i, t, sql.Identifier(_SCRATCH.format(i)) if drill else sql.Identifier(t.schema, t.table))
        names[_STAGED.format(i)] = key
        try:
            _stage(con, s, rows_of(s.table), agent)
        except psycopg.Error as exc:
            raise RestoreError(f"{key}: {_named(pg.pg_reason(exc), names)}") from exc
        saved[key] = s
    parents: dict[str, sql.Identifier] = {}
    if drill:
        parents = _scratch_copies(con, saved, fks, agent, names)
    for key in order:
        s = saved[key]
        try:
            result.stats[key] = _write(con, s, agent, mode, keyless, fks)
        except psycopg.Error as exc:
            raise RestoreError(f"{key}: {_named(pg.pg_reason(exc), names)}") from exc
    if cycles and not result.triggers_off:
        try:
            con.execute("SET CONSTRAINTS ALL IMMEDIATE")
        except psycopg.Error as exc:
            raise RestoreError(_named(pg.pg_reason(exc), names)) from exc
    if result.triggers_off:
        orphans = _orphans(con, saved, parents, fks, agent, keyless, drill=drill)
        if orphans:
            raise RestoreError(_named("; ".join(orphans), names))
    _check(con, saved, agent, mode, result)
    if not drill:  # a sequence is not rolled back: the drill's would move the live ones
        _advance_sequences(con, saved, result)
    return result


def _advance_sequences(con: psycopg.Connection[Any], saved: dict[str, _Saved], result: MergeResult) -> None:
    """Move each sequence of a written column (serial, identity) past the saved values, as pg_dump's
    setval does for a whole database: rows restored into a table whose sequence is behind them (a new
    machine's empty tables) made the application's next insert fail on a duplicate key."""
    for key, s in saved.items():
        owned = con.execute(
            # pg_sequences.last_value: NULL before the first nextval (or without USAGE or SELECT).
            "SELECT a.attname, s.oid::regclass::text, n.nspname, s.relname, p.increment_by, p.min_value, p.max_value, "
            "COALESCE(p.last_value::numeric + p.increment_by, p.start_value), "
            # Read (its last_value and is_called, below) and set.
            "has_sequence_privilege(s.oid, 'SELECT') AND has_sequence_privilege(s.oid, 'UPDATE') "
            "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "JOIN pg_class s ON s.relkind = 'S' JOIN pg_namespace n ON n.oid = s.relnamespace "
            "JOIN pg_sequences p ON p.schemaname = n.nspname AND p.sequencename = s.relname "
            "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped "
            # Integer columns only: a sequence may be owned by a text column, whose max() is no number.
            "AND (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END) "
            "IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) AND ("
            # Owned by the column (serial, identity, OWNED BY) ...
            "EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = s.oid "
            "AND d.refclassid = 'pg_class'::regclass AND d.refobjid = a.attrelid AND d.refobjsubid = a.attnum "
            "AND d.deptype IN ('a', 'i')) "
            # ... or the column's default is its nextval (a sequence of its own, one shared, an inherited default).
            "OR EXISTS (SELECT FROM pg_attrdef ad WHERE ad.adrelid = a.attrelid AND ad.adnum = a.attnum "
            "AND pg_get_expr(ad.adbin, ad.adrelid) = format('nextval(%%L::regclass)', s.oid::regclass::text)))",
            (s.live.as_string(con),),
        ).fetchall()
        for column, seq, seq_schema, seq_name, increment, low, high, following, allowed in owned:
            if column not in s.table.columns:
                continue
            edge = sql.SQL("max" if increment > 0 else "min")
            row = con.execute(
                sql.SQL("SELECT {}({})::bigint FROM {}").format(edge, sql.Identifier(column), s.staged)
            ).fetchone()
            value = None if row is None else row[0]
            if value is None or (value < following if increment > 0 else value > following):
                continue
            if not low <= value + increment <= high:
                result.warnings.append(
                    f"sequence {seq} of {key}.{column} cannot go past the restored rows (up to {value}): it ends at "
                    f"{high if increment > 0 else low}; the next insert may fail (or, CYCLE, take a restored key); "
                    f"widen it with ALTER SEQUENCE {seq} {'MAXVALUE' if increment > 0 else 'MINVALUE'} ..."
                )
                continue
            if allowed:
                # Checked again in the statement that sets it, so never moved back; is_called false
                # (the next nextval gives value + increment) leaves no currval on the session.
                con.execute(
                    # Its state read from the sequence itself: pg_sequences shows no last_value after a
                    # setval(..., false) or ALTER SEQUENCE RESTART, and a sequence two tables share (or a
                    # child table inherits) was moved back by the second table, a restarted one below it.
                    sql.SQL(
                        "SELECT setval(%(seq)s::regclass, (%(v)s::numeric + p.increment_by)::bigint, false) "
                        "FROM {} q, pg_sequences p WHERE p.schemaname = %(schema)s AND p.sequencename = %(name)s "
                        "AND %(v)s::numeric + p.increment_by BETWEEN p.min_value AND p.max_value "
                        "AND sign(p.increment_by) * (%(v)s::numeric + p.increment_by - q.last_value "
                        "- CASE WHEN q.is_called THEN p.increment_by ELSE 0 END) > 0"
                    ).format(sql.Identifier(seq_schema, seq_name)),
                    {"seq": seq, "v": value, "schema": seq_schema, "name": seq_name},
                )
                continue
            result.warnings.append(
                f"sequence {seq} of {key}.{column} may be behind the restored rows (up to {value}) and role "
                f"{_role(con)} may not set it: the next insert may fail on a duplicate key; as a role that may, "
                f"run SELECT setval({sql.Literal(seq).as_string(con)}, {value})"
            )


def _named(text: str, names: dict[str, str]) -> str:
    """A server message about a scratch copy, naming the live table instead."""
    if not names:
        return text
    # One pass, with a function rather than a template: a live name is put in as it is (one
    # holding `\d` or `\g<0>` stopped the message; one holding another scratch name was renamed again).
    scratch = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.sub(rf'"?\b({scratch})\b"?', lambda m: names[m.group(1)], text)


def live_tables(con: psycopg.Connection[Any], tables: list[pg.AgentTable]) -> list[pg.AgentTable]:
    """The saved tables as the live database has them: each must still have every saved column;
    the type of agent_id and whether the table is partitioned come from the catalog, never from
    the snapshot's manifest (its `agentIdType` is written into SQL, and a manifest is only data)."""
    out: list[pg.AgentTable] = []
    for t in tables:
        rows = con.execute(
            "SELECT a.attname, c.relkind, format_type(a.atttypid, a.atttypmod) FROM pg_class c "
            "JOIN pg_attribute a ON a.attrelid = c.oid WHERE c.oid = %s::regclass AND a.attnum > 0 "
            "AND NOT a.attisdropped",
            (sql.Identifier(t.schema, t.table).as_string(con),),
        ).fetchall()
        live = {str(r[0]): str(r[2]) for r in rows}
        gone = [c for c in dict.fromkeys((*t.columns, "agent_id")) if c not in live]
        if gone:
            raise RestoreError(
                f"{t.key} has no column {', '.join(gone)} any more, which the snapshot's rows have; add it back, or "
                "write the rows as files with --to DIR and load what still fits by hand"
            )
        out.append(dataclasses.replace(t, agent_type=live["agent_id"], partitioned=rows[0][1] == "p"))
    return out


def _check_privileges(
    con: psycopg.Connection[Any], tables: list[pg.AgentTable], mode: str, keyless: KeylessMode
) -> None:
    role = _role(con)
    for t in tables:
        need = ["SELECT", "INSERT"]
        if t.primary_key and mode == "update":
            need.append("UPDATE")
        if not t.primary_key and keyless == "replace":
            need.append("DELETE")
        name = sql.Identifier(t.schema, t.table).as_string(con)
        missing = [
            p for p in need if not (con.execute("SELECT has_table_privilege(%s, %s)", (name, p)).fetchone() or [0])[0]
        ]
        if missing:
            raise RestoreError(
                f"role {role} may not {' or '.join(missing)} {t.key}; grant it (GRANT {', '.join(need)} ON {t.key} "
                f"TO {role}) or restore as a role that may"
            )


def _text_row(alias: str, columns: Iterable[str]) -> sql.Composable:
    """ROW(alias.c1::text, ...): a row compared by the text of each value, so that every type
    compares (json, point and others have no equality operator) and `1.0` differs from `1.00`."""
    return sql.SQL("ROW({})").format(
        sql.SQL(", ").join(sql.SQL("{}.{}::text").format(sql.Identifier(alias), sql.Identifier(c)) for c in columns)
    )


def _stage(con: psycopg.Connection[Any], s: _Saved, blocks: Iterator[bytes], agent: str) -> None:
    t = s.table
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in t.columns)
    con.execute(
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(s.staged, cols, s.live)
    )
    con.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN {} bigint GENERATED ALWAYS AS IDENTITY").format(
            s.staged, sql.Identifier(_ROW)
        )
    )
    with (
        con.cursor() as cur,
        cur.copy(sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER true)").format(s.staged, cols)) as copy,
    ):
        for block in blocks:
            copy.write(block)
    row = con.execute(sql.SQL("SELECT count(*) FROM {}").format(s.staged)).fetchone()
    s.saved = int(row[0]) if row else 0
    # Only this agent's rows are ever written, whatever the file holds.
    s.foreign = con.execute(
        sql.SQL("DELETE FROM {} WHERE NOT ({})").format(s.staged, pg.agent_filter(t)), (agent,)
    ).rowcount


def _count(con: psycopg.Connection[Any], query: sql.SQL | sql.Composed, params: tuple[Any, ...] = ()) -> int:
    row = con.execute(query, params).fetchone()
    return int(row[0] or 0) if row else 0


def _key_match(t: pg.AgentTable) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("t.{c} = r.{c}").format(c=sql.Identifier(c)) for c in (*t.primary_key, "agent_id")
    )


def _keyed_state(con: psycopg.Connection[Any], s: _Saved) -> tuple[int, int]:
    """(saved rows whose key is there, saved rows there with the same contents)."""
    t = s.table
    there = sql.SQL("t.{} IS NOT NULL").format(sql.Identifier(t.primary_key[0]))  # key columns are NOT NULL
    same = sql.SQL("{} IS NOT DISTINCT FROM {}").format(_text_row("t", t.columns), _text_row("r", t.columns))
    row = con.execute(
        sql.SQL(
            "SELECT count(*) FILTER (WHERE {}), count(*) FILTER (WHERE {} AND {}) FROM {} r LEFT JOIN {} t ON {}"
        ).format(there, there, same, s.staged, s.rows, _key_match(t))
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _multiset(s: _Saved, agent_filter: sql.Composable) -> sql.Composable:
    """WITH live, saved: each row's text and its number among equal rows (duplicates count); a
    live row also where it is (tableoid, ctid), a saved one its row number."""
    t = s.table
    live_row = sql.SQL("{}::text").format(_text_row("t", t.columns))
    saved_row = sql.SQL("{}::text").format(_text_row("r", t.columns))
    return sql.SQL(
        "WITH live AS (SELECT {lr} AS v, row_number() OVER (PARTITION BY {lr}) AS n, t.tableoid AS rel, "
        "t.ctid AS at FROM {target} t WHERE {f}), "
        "saved AS (SELECT r.{row} AS id, {sr} AS v, row_number() OVER (PARTITION BY {sr}) AS n FROM {staged} r) "
    ).format(lr=live_row, sr=saved_row, target=s.rows, f=agent_filter, row=sql.Identifier(_ROW), staged=s.staged)


def _t_filter(t: pg.AgentTable) -> sql.Composable:
    return sql.SQL("t.{} = CAST(%s AS {})").format(sql.Identifier("agent_id"), sql.SQL(t.agent_type))


def _keyless_present(con: psycopg.Connection[Any], s: _Saved, agent: str) -> tuple[int, int]:
    """(saved rows there, the agent's rows there that the snapshot does not have)."""
    with_ = _multiset(s, _t_filter(s.table))
    present = _count(
        con,
        with_
        + sql.SQL("SELECT count(*) FROM saved s WHERE EXISTS (SELECT 1 FROM live l WHERE l.v = s.v AND l.n = s.n)"),
        (agent,),
    )
    live = _count(con, sql.SQL("SELECT count(*) FROM {} t WHERE ").format(s.rows) + _t_filter(s.table), (agent,))
    return present, live - present


def _write(
    con: psycopg.Connection[Any], s: _Saved, agent: str, mode: str, keyless: KeylessMode, fks: list[ForeignKey]
) -> dict[str, int]:
    t = s.table
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in t.columns)
    overriding = sql.SQL(" OVERRIDING SYSTEM VALUE") if t.identity_always else sql.SQL("")
    mine = s.saved - s.foreign
    stats = {"saved": s.saved, "otherAgents": s.foreign}
    if not t.primary_key:
        deleted = _delete_extra(con, s, agent, fks) if keyless == "replace" else 0
        missing = _multiset(s, _t_filter(t)) + sql.SQL(
            "INSERT INTO {} ({}){} SELECT {} FROM {} r WHERE r.{} IN (SELECT s.id FROM saved s "
            "WHERE NOT EXISTS (SELECT 1 FROM live l WHERE l.v = s.v AND l.n = s.n))"
        ).format(s.target, cols, overriding, cols, s.staged, sql.Identifier(_ROW))
        inserted = con.execute(missing, (agent,)).rowcount
        return {**stats, "inserted": inserted, "deleted": deleted, "unchanged": mine - inserted}
    present, identical = _keyed_state(con, s)
    pk = sql.SQL(", ").join(sql.Identifier(c) for c in t.primary_key)
    rest = [c for c in t.columns if c not in t.primary_key]
    # One statement, so that its foreign keys are checked once both parts are written (a row
    # updated may come to reference one inserted, a parent in the same table, or the reverse).
    # Only the rows whose key is not there are offered to INSERT, so that a BEFORE INSERT trigger
    # fires for nothing else (a key held by a row this role cannot see is left by ON CONFLICT).
    insert = sql.SQL(
        "INSERT INTO {} ({}){} SELECT {} FROM {} r WHERE NOT EXISTS (SELECT 1 FROM {} t WHERE {}) "
        "ON CONFLICT ({}) DO NOTHING RETURNING 1"
    ).format(
        s.target,
        cols,
        overriding,
        cols,
        s.staged,
        s.rows,
        sql.SQL(" AND ").join(sql.SQL("t.{c} = r.{c}").format(c=sql.Identifier(c)) for c in t.primary_key),
        pk,
    )
    # Only rows that differ are rewritten: an unchanged row keeps its tuple, fires nothing and
    # costs no WAL. Another agent's row with the same key is no match.
    update: sql.Composable = sql.SQL("SELECT WHERE false")
    if mode == "update" and rest:
        update = sql.SQL(
            "UPDATE {} AS t SET ({}) = ROW({}) FROM {} r WHERE {} AND {} IS DISTINCT FROM {} RETURNING 1"
        ).format(
            s.rows,
            sql.SQL(", ").join(sql.Identifier(c) for c in rest),
            sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(c)) for c in rest),
            s.staged,
            _key_match(t),
            _text_row("t", t.columns),
            _text_row("r", t.columns),
        )
    row = con.execute(
        sql.SQL("WITH ins AS ({}), upd AS ({}) SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM upd)").format(
            insert, update
        )
    ).fetchone()
    inserted, updated = (int(row[0]), int(row[1])) if row else (0, 0)
    return {
        **stats,
        "inserted": inserted,
        "updated": updated,
        "unchanged": identical,
        # Rows whose key is there with other contents, kept as they are (--conflict-mode skip).
        "skipped": present - identical - updated,
    }


def _delete_extra(con: psycopg.Connection[Any], s: _Saved, agent: str, fks: list[ForeignKey]) -> int:
    """--keyless replace: delete the agent's rows of a table without a primary key that the
    snapshot does not have (rows it has stay as they are: nothing is deleted to be written
    again). Refused, before anything is deleted, when other rows may reference them: an ON DELETE
    action would reach rows of other agents, or (triggers off) leave references dangling."""
    gone = sql.Identifier(f"phx_gone_{s.index}")
    con.execute(
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS ").format(gone)
        + _multiset(s, _t_filter(s.table))
        + sql.SQL(
            "SELECT l.rel, l.at FROM live l WHERE NOT EXISTS (SELECT 1 FROM saved s WHERE s.v = l.v AND s.n = l.n)"
        ),
        (agent,),
    )
    doomed = _count(con, sql.SQL("SELECT count(*) FROM {}").format(gone))
    for fk in fks if doomed else []:
        if fk.parent != s.table.key:
            continue
        child = sql.Identifier(*fk.child_name)
        refs = sql.SQL(" AND ").join(
            sql.SQL("p.{} = c.{}").format(sql.Identifier(p), sql.Identifier(c))
            for p, c in zip(fk.parent_columns, fk.child_columns, strict=True)
        )
        n = _count(
            con,
            sql.SQL(
                "SELECT count(*) FROM {} c WHERE EXISTS (SELECT 1 FROM {} p JOIN {} g ON p.tableoid = g.rel "
                "AND p.ctid = g.at WHERE {})"
            ).format(child, s.rows, gone, refs),
        )
        hidden = _count(con, sql.SQL("SELECT row_security_active(%s::regclass)::int"), (child.as_string(con),))
        if n or hidden:
            seen = (
                f"{n} row(s) of {fk.child} reference them"
                if n
                else f"row-level security hides rows of {fk.child} from role {_role(con)}, which may reference them"
            )
            raise RestoreError(
                f"--keyless replace would delete {doomed} row(s) of agent {agent} in {s.table.key} that the snapshot "
                f"does not have, and {seen} (foreign key {fk.name}, ON DELETE {_FK_ACTIONS.get(fk.on_delete)}); "
                "restore with --keyless add, or remove those references first"
            )
    return con.execute(
        sql.SQL("DELETE FROM {} t USING {} g WHERE t.tableoid = g.rel AND t.ctid = g.at").format(s.rows, gone)
    ).rowcount


def _orphans(
    con: psycopg.Connection[Any],
    saved: dict[str, _Saved],
    parents: dict[str, sql.Identifier],
    fks: list[ForeignKey],
    agent: str,
    keyless: KeylessMode,
    *,
    drill: bool,
) -> list[str]:
    """With the foreign-key triggers off (replica mode), every foreign key the merge could break,
    checked: the references of the rows written, and references to rows it replaced or changed."""
    problems: list[str] = []
    for fk in fks:
        parent_s = saved.get(fk.parent)
        parent = parent_s.rows if parent_s else parents.get(fk.parent, sql.Identifier(*fk.parent_name))
        refs = sql.SQL(" AND ").join(
            sql.SQL("p.{} = c.{}").format(sql.Identifier(p), sql.Identifier(c))
            for p, c in zip(fk.parent_columns, fk.child_columns, strict=True)
        )
        given = sql.SQL(" AND ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(c)) for c in fk.child_columns)
        orphan = sql.SQL("{} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {})").format(given, parent, refs)
        child = saved.get(fk.child)
        if child is not None:
            t = child.table
            if t.primary_key:
                match = sql.SQL(" AND ").join(
                    sql.SQL("c.{k} = r.{k}").format(k=sql.Identifier(k)) for k in t.primary_key
                )
                query = sql.SQL("SELECT count(*) FROM {} c JOIN {} r ON {} WHERE {}").format(
                    child.rows, child.staged, match, orphan
                )
                n = _count(con, query)
            else:
                query = sql.SQL("SELECT count(*) FROM {} c WHERE c.{} = CAST(%s AS {}) AND {}").format(
                    child.rows, sql.Identifier("agent_id"), sql.SQL(t.agent_type), orphan
                )
                n = _count(con, query, (agent,))
            if n:
                problems.append(
                    f"{n} restored row(s) of {fk.child} reference rows of {fk.parent} that are not there "
                    f"(foreign key {fk.name})"
                )
        if parent_s is None:
            continue
        pt = parent_s.table
        if pt.primary_key and tuple(pt.primary_key) == fk.parent_columns:
            continue  # a merge never changes a key
        if not pt.primary_key and keyless != "replace":
            continue  # rows were only added
        if child is None and drill:
            continue  # the drill copies no table outside the agent's
        target = child.rows if child is not None else sql.Identifier(*fk.child_name)
        n = _count(con, sql.SQL("SELECT count(*) FROM {} c WHERE {}").format(target, orphan))
        if n:
            problems.append(
                f"{n} row(s) of {fk.child} reference rows of {fk.parent} that the restore replaced or changed "
                f"(foreign key {fk.name})"
            )
    return problems


def _copy_keys(con: psycopg.Connection[Any], live: sql.Identifier, copy: sql.Identifier, names: dict[str, str]) -> None:
    """The primary key, unique and exclusion constraints and the other unique indexes (with a
    predicate or on expressions too) of `live`, on `copy`: whatever can refuse a row the merge
    writes, and what ON CONFLICT and the foreign keys need. Other indexes change no outcome.
    Each is named `phx_key_<n>`, which `names` maps to the live one's name for messages."""
    name = live.as_string(con)
    constraints = con.execute(
        "SELECT c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c WHERE c.conrelid = %s::regclass "
        "AND c.contype IN ('p', 'u', 'x') ORDER BY c.contype <> 'p', c.oid",
        (name,),
    ).fetchall()
    for live_name, definition in constraints:
        key = f"phx_key_{len(names)}"
        names[key] = str(live_name)
        # The server's own text of the live table's constraint (no name, no table in it).
        con.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(copy, sql.Identifier(key), sql.SQL(str(definition)))
        )
    indexes = con.execute(
        """
        SELECT i.indexrelid::regclass::text,
               ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true) FROM generate_series(1, i.indnkeyatts) k),
               coalesce(to_jsonb(i) ->> 'indnullsnotdistinct', 'false') = 'true',
               pg_get_expr(i.indpred, i.indrelid, true)
        FROM pg_index i WHERE i.indrelid = %s::regclass AND i.indisunique
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid)
        ORDER BY i.indexrelid
        """,
        (name,),
    ).fetchall()
    for live_name, keys, nulls_not_distinct, predicate in indexes:
        key = f"phx_key_{len(names)}"
        names[key] = str(live_name)
        con.execute(
            sql.SQL("CREATE UNIQUE INDEX {} ON {} ({}){}{}").format(
                sql.Identifier(key),
                copy,
                sql.SQL(", ").join(sql.SQL(str(k)) for k in keys),
                sql.SQL(" NULLS NOT DISTINCT" if nulls_not_distinct else ""),
                sql.SQL(f" WHERE {predicate}" if predicate else ""),
            )
        )


def _scratch_copies(
    con: psycopg.Connection[Any], saved: dict[str, _Saved], fks: list[ForeignKey], agent: str, names: dict[str, str]
) -> dict[str, sql.Identifier]:
    """The drill's scratch copy of the live schema: each agent table (with the agent's live rows),
    the rows of other tables they reference, and the foreign keys between them. Returns the
    copies of the referenced tables outside the agent's."""
    for key, s in saved.items():
        t = s.table
        names[_SCRATCH.format(s.index)] = key
        con.execute(
            sql.SQL(
                "CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED "
                "INCLUDING IDENTITY) ON COMMIT DROP"
            ).format(s.target, s.live)
        )
        _copy_keys(con, s.live, s.target, names)
        # Every column the live table has now (a column added since the backup too).
        live_cols = con.execute(
            "SELECT attname, attidentity FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            (s.live.as_string(con),),
        ).fetchall()
        cols = sql.SQL(", ").join(sql.Identifier(str(c[0])) for c in live_cols)
        always = any(c[1] == "a" for c in live_cols)
        overriding = sql.SQL(" OVERRIDING SYSTEM VALUE") if always else sql.SQL("")
        con.execute(
            sql.SQL("INSERT INTO {} ({}){} SELECT {} FROM {} t WHERE ").format(s.target, cols, overriding, cols, t.rows)
            + _t_filter(t),
            (agent,),
        )
    parents: dict[str, sql.Identifier] = {}
    for fk in fks:
        child = saved.get(fk.child)
        if child is None or fk.parent in saved:
            continue
        live = sql.Identifier(*fk.parent_name)
        if fk.parent not in parents:
            name = _PARENT.format(len(parents))
            names[name] = fk.parent
            parents[fk.parent] = sql.Identifier(name)
            con.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(parents[fk.parent], live))
            _copy_keys(con, live, parents[fk.parent], names)
        pcols = sql.SQL(", ").join(sql.SQL("p.{}").format(sql.Identifier(c)) for c in fk.parent_columns)
        ccols = sql.SQL(", ").join(sql.Identifier(c) for c in fk.child_columns)
        con.execute(
            sql.SQL(
                "INSERT INTO {} SELECT p.* FROM {} p WHERE ({}) IN (SELECT {} FROM {} UNION SELECT {} FROM {}) "
                "ON CONFLICT DO NOTHING"
            ).format(parents[fk.parent], live, pcols, ccols, child.staged, ccols, child.target)
        )
    for fk in fks:
        child = saved.get(fk.child)
        if child is None:
            continue
        parent_s = saved.get(fk.parent)
        parent = parent_s.target if parent_s else parents[fk.parent]
        clauses = [
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({})").format(
                child.target,
                sql.Identifier(fk.name),
                sql.SQL(", ").join(sql.Identifier(c) for c in fk.child_columns),
                parent,
                sql.SQL(", ").join(sql.Identifier(c) for c in fk.parent_columns),
            ),
            sql.SQL(" MATCH FULL" if fk.match_full else ""),
            sql.SQL(f" ON DELETE {_FK_ACTIONS.get(fk.on_delete, 'NO ACTION')}"),
            sql.SQL(f" ON UPDATE {_FK_ACTIONS.get(fk.on_update, 'NO ACTION')}"),
            sql.SQL(" DEFERRABLE" if fk.deferrable else ""),
            sql.SQL(" INITIALLY DEFERRED" if fk.initially_deferred else ""),
            # The live rows copied were valid where they are; what is checked is what the merge writes.
            sql.SQL(" NOT VALID"),
        ]
        con.execute(sql.Composed(clauses))
    return parents


def _check(con: psycopg.Connection[Any], saved: dict[str, _Saved], agent: str, mode: str, result: MergeResult) -> None:
    """Every saved row must be there: with its contents (`update`), or its key (`skip`)."""
    for key, s in saved.items():
        mine = s.saved - s.foreign
        stats = result.stats[key]
        if not s.table.primary_key:
            present, extra = _keyless_present(con, s, agent)
            stats["present"] = present
            stats["extra"] = extra
            result.found[key] = present
            if present != mine:
                result.problems.append(f"{key}: {present} of {mine} saved rows are there")
            if extra:
                result.warnings.append(
                    f"{key} has no primary key: {extra} row(s) of agent {agent} there are not in the snapshot and were "
                    "kept (rows are matched on all their columns; --keyless replace replaces the agent's rows of such "
                    "tables with the saved ones)"
                )
            continue
        present, identical = _keyed_state(con, s)
        stats["present"] = present
        stats["identical"] = identical
        result.found[key] = identical if mode == "update" else present
        if present != mine:
            result.problems.append(
                f"{key}: {present} of {mine} saved rows are there (a key held by another agent's row cannot be "
                "restored by this agent)"
            )
        elif mode == "update" and identical != mine:
            differ = f"{key}: {mine - identical} of {mine} rows differ from the snapshot after the restore"
            if result.triggers_off:
                result.problems.append(differ)
            else:
                result.warnings.append(f"{differ} (changed by the user triggers that fired)")
