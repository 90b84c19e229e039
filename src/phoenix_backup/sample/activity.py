"""Simulated days of agent activity on a generated sample workspace.

Each simulated day is deterministic in ``(seed, day)`` given the same starting state, and
touches roughly 0.3–1 % of the rows of each store: new memories and observations (with
embeddings), scattered heat / access-count updates, a few deletions, a new daily note, an edited
MEMORY.md (and its alignment manifest), and a couple of task status changes. Connections are
opened, written and closed normally; the WAL is left as SQLite leaves it.
"""

from __future__ import annotations

import random
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from .workspace import (
    AGENT_ID,
    ALIGNMENT_MANIFEST,
    CATEGORY_NAMES,
    CHANNELS,
    DAY,
    LAST_UPDATED_PREFIX,
    OBSERVATION_KINDS,
    PROJECTS,
    RECENT_HEADER,
    SIM_START,
    TASK_PRIORITIES,
    SampleLayout,
    TextPool,
    daily_note,
    day_name,
    derive_rng,
    embedding_batch,
    iso,
    memory_row,
    observation_content,
    session_id,
    task_title,
    text_pool,
    write_alignment_manifest,
)

__all__ = ["DayStats", "day_date", "simulate_day"]

# Fractions of existing rows touched per day.
_UPDATE_SHARE = 0.004
_ADD_SHARE = 0.0015
_DELETE_SHARE = 0.0003
_OBSERVATION_SHARE = 0.006
_RECENT_LIMIT = 30

_NEXT_STATUS: dict[str, tuple[str, ...]] = {
    "pending": ("in_progress", "in_progress", "cancelled"),
    "in_progress": ("done", "done", "blocked"),
    "blocked": ("in_progress", "cancelled"),
}


@dataclass(frozen=True)
class DayStats:
    """What one simulated day changed. ``files_changed`` holds paths relative to the sample root
    (``workspace/MEMORY.md``, ``home/.argentos/memory.db``, ...), sorted."""

    memories_added: int
    memories_updated: int
    memories_deleted: int
    observations_added: int
    files_changed: tuple[str, ...]


def day_date(day: int) -> str:
    """The calendar date (``YYYY-MM-DD``) of simulated ``day`` (day 0 follows the history)."""
    return day_name(SIM_START + day * DAY)


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; generate the sample workspace first")
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _share(count: int, share: float, minimum: int) -> int:
    return min(count, max(minimum, round(count * share)))


def _day_ts(rng: random.Random, day_start: int) -> int:
    return day_start + rng.randrange(7 * 3600, 23 * 3600)


def _simulate_memory(
    path: Path, rng: random.Random, pool: TextPool, seed: int, day: int, day_start: int, scale: float = 1.0
) -> tuple[int, int, int]:
    emb_rng = derive_rng(seed, "day", day, "memory embeddings")
    category_names = list(CATEGORY_NAMES)
    with closing(_connect(path)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = [row[0] for row in conn.execute("SELECT id FROM memory_items ORDER BY id")]
            n_delete = _share(len(ids), _DELETE_SHARE * scale, 1) if len(ids) > 10 else 0
            n_update = _share(len(ids) - n_delete, _UPDATE_SHARE * scale, 5)
            chosen = rng.sample(ids, n_delete + n_update)
            deleted, updated = chosen[:n_delete], chosen[n_delete:]

            for item_id in updated:
                when = iso(_day_ts(rng, day_start))
                if rng.random() < 0.125:
                    # Consolidation: the agent appends a detail to an existing memory.
                    conn.execute(
                        "UPDATE memory_items SET content = content || ' ' || ?, heat = ?, "
                        "access_count = access_count + ?, updated_at = ? WHERE id = ?",
                        (
                            pool.sentence(rng),
                            round(rng.random(), 4),
                            rng.randint(1, 3),
                            when,
                            item_id,
                        ),
                    )
                else:
                    conn.execute(
                        "UPDATE memory_items SET heat = ?, access_count = access_count + ?, "
                        "updated_at = ? WHERE id = ?",
                        (round(rng.random(), 4), rng.randint(1, 3), when, item_id),
                    )
            for item_id in deleted:
                conn.execute("DELETE FROM item_categories WHERE item_id = ?", (item_id,))
                conn.execute("DELETE FROM memory_items WHERE id = ?", (item_id,))

            n_add = _share(len(ids), _ADD_SHARE * scale, 3) if ids else 3
            vectors = embedding_batch(emb_rng, n_add)
            rows = sorted(
                (
                    memory_row(
                        rng,
                        pool,
                        _day_ts(rng, day_start),
                        vector,
                        day_start + DAY - 1,
                        category_names,
                    )
                    for vector in vectors
                ),
                key=lambda r: r[7],
            )
            conn.executemany(
                "INSERT INTO memory_items(id, agent_id, category, content, summary, heat, "
                "access_count, created_at, updated_at, embedding) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*r[:5], round(0.5 + rng.random() / 2, 4), 0, r[7], r[7], r[9]) for r in rows],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO item_categories(item_id, category_id) VALUES (?, ?)",
                [(r[0], category_names.index(r[2]) + 1) for r in rows],
            )
            conn.execute(
                "INSERT INTO reflections(agent_id, period, content, created_at) VALUES (?, 'daily', ?, ?)",
                (AGENT_ID, pool.text(rng, 4, 10), iso(day_start + 23 * 3600)),
            )
            if rng.random() < 0.3:
                conn.execute(
                    "INSERT INTO lessons(agent_id, lesson, context, confidence, times_applied, "
                    "created_at) VALUES (?, ?, ?, ?, 0, ?)",
                    (
                        AGENT_ID,
                        pool.sentence(rng),
                        pool.text(rng, 1, 2),
                        round(rng.random(), 3),
                        iso(_day_ts(rng, day_start)),
                    ),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return n_add, len(updated), len(deleted)


def _simulate_observations(
    path: Path, rng: random.Random, pool: TextPool, seed: int, day: int, day_start: int, scale: float = 1.0
) -> int:
    emb_rng = derive_rng(seed, "day", day, "observation embeddings")
    with closing(_connect(path)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            (count,) = conn.execute("SELECT count(*) FROM observations").fetchone()
            n_add = _share(int(count), _OBSERVATION_SHARE * scale, 5) if count else 5
            vectors = embedding_batch(emb_rng, n_add)
            times = sorted(_day_ts(rng, day_start) for _ in range(n_add))
            sessions: list[tuple[str, str, str, str, str]] = []
            rows = []
            left = 0
            current = ""
            for ts, vector in zip(times, vectors, strict=True):
                if left <= 0:
                    current = session_id(rng, ts)
                    left = rng.randint(5, 60)
                    sessions.append(
                        (
                            current,
                            rng.choice(CHANNELS),
                            iso(ts),
                            iso(ts + left * 90),
                            pool.sentence(rng),
                        )
                    )
                left -= 1
                kind = rng.choice(OBSERVATION_KINDS)
                rows.append((current, kind, observation_content(rng, pool, kind), iso(ts), vector))
            conn.executemany(
                "INSERT OR IGNORE INTO sessions(id, channel, started_at, ended_at, summary) VALUES (?, ?, ?, ?, ?)",
                sessions,
            )
            conn.executemany(
                "INSERT INTO observations(session_id, kind, content, created_at, embedding) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return n_add


def _simulate_dashboard(path: Path, rng: random.Random, pool: TextPool, day_start: int) -> None:
    with closing(_connect(path)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            open_tasks = conn.execute(
                "SELECT id, status FROM tasks WHERE status IN ('pending', 'in_progress', 'blocked') ORDER BY id"
            ).fetchall()
            for task_id, status in rng.sample(open_tasks, min(len(open_tasks), rng.randint(2, 4))):
                conn.execute(
                    "UPDATE tasks SET status = ?, updated_at = ? WHERE id = ?",
                    (rng.choice(_NEXT_STATUS[status]), iso(_day_ts(rng, day_start)), task_id),
                )
            for _ in range(rng.randint(1, 2)):
                when = iso(_day_ts(rng, day_start))
                conn.execute(
                    "INSERT INTO tasks(title, description, status, priority, project, assignee,"
                    " created_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?)",
                    (
                        task_title(rng),
                        pool.text(rng, 1, 3),
                        rng.choice(TASK_PRIORITIES),
                        rng.choice(PROJECTS),
                        AGENT_ID,
                        when,
                        when,
                    ),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _edit_memory_md(path: Path, rng: random.Random, pool: TextPool, date: str) -> None:
    text = path.read_text(encoding="utf-8") if path.is_file() else "# MEMORY\n"
    lines = text.rstrip("\n").split("\n")

    stamp = f"{LAST_UPDATED_PREFIX} {date}_"
    for i, line in enumerate(lines):
        if line.startswith(LAST_UPDATED_PREFIX):
            lines[i] = stamp
            break
    else:
        lines[1:1] = ["", stamp]

    if RECENT_HEADER not in lines:
        lines.extend(["", RECENT_HEADER, ""])
    recent = lines.index(RECENT_HEADER)
    lines.extend(f"- {date}: {s}" for s in rng.choices(pool.sentences, k=rng.randint(2, 4)))

    # Consolidate: the oldest recent items are promoted into an earlier section.
    bullets = [i for i in range(recent + 1, len(lines)) if lines[i].startswith("- ")]
    while len(bullets) > _RECENT_LIMIT:
        oldest = lines.pop(bullets[0])
        headers = [i for i in range(recent) if lines[i].startswith("## ")]
        if headers:
            section = rng.choice(headers)
            end = section + 1
            while end < recent and not lines[end].startswith("## "):
                end += 1
            while end > section + 1 and not lines[end - 1].strip():
                end -= 1
            lines.insert(end, oldest)
            recent += 1
        bullets = [i for i in range(recent + 1, len(lines)) if lines[i].startswith("- ")]
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))


def simulate_day(layout: SampleLayout, day: int, *, seed: int = 42, scale: float = 1.0) -> DayStats:
    """Apply one deterministic day of agent activity (``day`` ≥ 0) to a generated sample. A day
    applied twice is a ValueError that changes nothing (its memories' ids are already there).

    A day touches a fixed share of each store's rows; ``scale`` multiplies those shares (0.1 on
    a sample ten times larger changes about as many rows as a usual day of the smaller one)."""
    if day < 0:
        raise ValueError(f"day must be 0 or more, not {day}")
    rng = derive_rng(seed, "day", day)
    pool = text_pool(seed)
    day_start = SIM_START + day * DAY
    date = day_date(day)

    try:  # first: a day already applied fails here, rolled back, before any other store changes
        added, updated, deleted = _simulate_memory(
            layout.memory_db, derive_rng(seed, "day", day, "memory"), pool, seed, day, day_start, scale
        )
    except sqlite3.IntegrityError as exc:
        raise ValueError(
            f"day {day} ({date}) was already simulated on the sample in {layout.root} (its new memories are "
            f"there: {exc}); nothing was changed: simulate the next day, or generate the sample anew"
        ) from exc
    observations = _simulate_observations(
        layout.observations_db,
        derive_rng(seed, "day", day, "observations"),
        pool,
        seed,
        day,
        day_start,
        scale,
    )
    _simulate_dashboard(layout.dashboard_db, derive_rng(seed, "day", day, "dashboard"), pool, day_start)

    note = layout.workspace / "memory" / f"{date}.md"
    note.parent.mkdir(parents=True, exist_ok=True)
    note.write_bytes(daily_note(pool, rng, day_start + 12 * 3600).encode("utf-8"))
    _edit_memory_md(layout.workspace / "MEMORY.md", rng, pool, date)
    write_alignment_manifest(layout.workspace)

    root = layout.root
    changed = [
        note,
        layout.workspace / "MEMORY.md",
        layout.workspace / ALIGNMENT_MANIFEST,
        layout.memory_db,
        layout.observations_db,
        layout.dashboard_db,
    ]
    return DayStats(
        memories_added=added,
        memories_updated=updated,
        memories_deleted=deleted,
        observations_added=observations,
        files_changed=tuple(sorted(_relative(p, root) for p in changed)),
    )


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
