"""Deterministic generator of ArgentOS-like agent workspaces.

A generated sample lives under one root folder::

    root/workspace/         the agent workspace (identity and memory markdown, config/, scripts/)
    root/home/.argentos/    observations.db, memory.db, data/dashboard.db, argent.json

so a test can point ``HOME`` at ``root/home``. The same ``seed`` and ``size`` always give
byte-identical markdown and identical table rows (the SQLite files themselves need not be
byte-identical). Everything is built from word lists with :class:`random.Random`; embeddings are
random bytes whose exponent bytes are remapped so every value is a small, finite, normal float32.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from phoenix_backup.argentos import alignment

__all__ = [
    "ALIGNMENT_FILES",
    "ALIGNMENT_MANIFEST",
    "EMBEDDING_BYTES",
    "EMBEDDING_DIM",
    "SIZES",
    "SampleLayout",
    "generate_workspace",
    "resolve_size",
    "write_alignment_manifest",
]

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

SIZES: dict[str, int] = {
    "tiny": 6_000_000,
    "small": 60_000_000,
    "medium": 600_000_000,
    "large": 3_000_000_000,
}
"""Approximate total bytes of a generated sample, by name."""

EMBEDDING_DIM = 768
EMBEDDING_BYTES = EMBEDDING_DIM * 4

# The agent keeps its alignment manifest over the files Phoenix checks after a restore: one list.
ALIGNMENT_MANIFEST = alignment.MANIFEST
ALIGNMENT_FILES: tuple[str, ...] = alignment.FILES

AGENT_ID = "argent"

# The generated history ends on this day (UTC); simulated day 0 is the day after.
HISTORY_START = 1767225600  # 2026-01-01T00:00:00Z
HISTORY_END = 1790812799  # 2026-09-30T23:59:59Z
SIM_START = HISTORY_END + 1  # 2026-10-01T00:00:00Z
DAY = 86400
MAX_DAILY_NOTES = (HISTORY_END + 1 - HISTORY_START) // DAY  # every day of 2026 up to Sep 30

# Share of the requested size given to each store; markdown takes what is left (~2%).
_MEMORY_SHARE = 0.60
_OBSERVATIONS_SHARE = 0.30
_DASHBOARD_SHARE = 0.08

# Measured on-disk bytes per row, all overheads included (indexes, FTS, side tables).
_BYTES_PER_MEMORY_ITEM = 4700
_BYTES_PER_OBSERVATION = 4230
_BYTES_PER_TASK = 450

_BATCH = 2048


@dataclass(frozen=True)
class SampleLayout:
    """Where a generated sample lives."""

    workspace: Path
    argentos: Path
    databases: tuple[Path, ...]

    @property
    def root(self) -> Path:
        """The folder holding ``workspace/`` and ``home/``."""
        return self.workspace.parent

    @property
    def home(self) -> Path:
        """The fake home directory (``root/home``)."""
        return self.argentos.parent

    @property
    def memory_db(self) -> Path:
        return self.argentos / "memory.db"

    @property
    def observations_db(self) -> Path:
        return self.argentos / "observations.db"

    @property
    def dashboard_db(self) -> Path:
        return self.argentos / "data" / "dashboard.db"


def layout_for(root: Path) -> SampleLayout:
    """The layout of a sample generated under ``root`` (whether or not it exists yet)."""
    argentos = root / "home" / ".argentos"
    return SampleLayout(
        workspace=root / "workspace",
        argentos=argentos,
        databases=(
            argentos / "memory.db",
            argentos / "observations.db",
            argentos / "data" / "dashboard.db",
        ),
    )


def resolve_size(size: str | int) -> int:
    """Total target bytes for a size name (see :data:`SIZES`) or a byte count."""
    if isinstance(size, bool):
        raise TypeError("size must be a size name or a number of bytes")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size must be positive, not {size}")
        return size
    try:
        return SIZES[size]
    except KeyError:
        names = ", ".join(SIZES)
        raise ValueError(f"unknown sample size {size!r}; use one of {names} or bytes") from None


# --------------------------------------------------------------------------------------------
# Deterministic randomness
# --------------------------------------------------------------------------------------------


def derive_rng(seed: int, *labels: str | int) -> random.Random:
    """An independent, reproducible random stream for ``seed`` and ``labels``."""
    material = "\x1f".join([str(seed), *(str(label) for label in labels)]).encode()
    return random.Random(hashlib.sha256(material).digest())


def _exponent_table() -> bytes:
    # Byte 3 of a little-endian float32 is the sign bit followed by the exponent's high 7 bits
    # (the low exponent bit is the top bit of byte 2, left random). Map the low 7 bits to a
    # weighted choice of exponent high parts so magnitudes sit mostly in 2^-9 .. 2^-3 with a
    # standard deviation near 0.036 (a 768-dim vector has a norm of about 1); keep the sign.
    weights = ((61, 28), (60, 60), (59, 26), (58, 10), (57, 4))
    slots: list[int] = []
    for high, count in weights:
        slots.extend([high] * count)
    assert len(slots) == 128
    return bytes((i & 0x80) | slots[i & 0x7F] for i in range(256))


_EXPONENT_TABLE = _exponent_table()


def embedding_batch(rng: random.Random, count: int) -> list[bytes]:
    """``count`` float32[768] little-endian vectors, finite and roughly unit-norm."""
    if count <= 0:
        return []
    raw = bytearray(rng.randbytes(EMBEDDING_BYTES * count))
    raw[3::4] = raw[3::4].translate(_EXPONENT_TABLE)
    view = memoryview(raw)
    return [bytes(view[i : i + EMBEDDING_BYTES]) for i in range(0, len(raw), EMBEDDING_BYTES)]


def iso(ts: float) -> str:
    """UTC timestamp as ``2026-03-14T10:22:31Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def day_name(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def new_id(rng: random.Random) -> str:
    """A UUID-4-shaped identifier drawn from ``rng``."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------

PEOPLE = (
    "Jordan", "Maya", "Priya", "Sam", "Alex", "Noah", "Lena", "Omar", "Grace", "Kenji",
    "Sofia", "Tomás", "Amara", "Felix", "Hana", "Diego", "Nora", "Ravi", "Chloe", "Malik",
    "Ingrid", "Yusuf", "Elena", "Marcus",
)  # fmt: skip
SURNAMES = (
    "Reyes", "Okafor", "Lindqvist", "Tanaka", "Moreau", "Patel", "Schmidt", "Novak", "Haddad",
    "Costa", "Byrne", "Kowalski",
)  # fmt: skip
PROJECTS = (
    "Phoenix", "Lighthouse", "Orchard", "Atlas", "Ember", "Northwind", "Tidepool", "Quartz",
    "Juniper", "Halcyon", "Meridian", "Copperline", "Foxglove", "Basalt",
)  # fmt: skip
TOOLS = (
    "ripgrep", "the calendar API", "Postgres", "Redis", "the browser tool", "git", "pytest",
    "the email connector", "Slack", "Notion", "the shell", "ffmpeg", "the vector index",
    "the web search tool", "Docker", "the SMS gateway", "the PDF reader", "cron",
)  # fmt: skip
TOPICS = (
    "memory consolidation", "budget planning", "the quarterly roadmap", "sleep habits",
    "travel logistics", "code review etiquette", "running training", "tax documents",
    "home network setup", "the reading list", "meal planning", "on-call rotations",
    "customer onboarding", "grant applications", "garden irrigation", "language practice",
    "backup strategy", "API rate limits", "team retrospectives", "the family calendar",
)  # fmt: skip
TASKS = (
    "drafting the weekly update", "triaging the inbox", "summarising meeting notes",
    "refactoring the sync script", "booking flights", "reconciling invoices",
    "migrating the database", "writing release notes", "cleaning up stale branches",
    "preparing the demo", "renewing certificates", "planning the offsite",
    "tagging old photos", "rotating credentials", "updating the runbook",
)  # fmt: skip
ACTIONS = (
    "send the summary", "confirm the booking", "archive old threads", "update the task board",
    "check the build", "ping the vendor", "review the pull request", "back up the notes",
    "schedule a follow-up", "compress the logs", "rerun the failed job", "draft a reply",
    "sort the receipts", "re-index the embeddings", "set the plant-watering reminder",
)  # fmt: skip
PLACES = (
    "the studio", "the café on Fifth", "a video call", "the office", "the library",
    "the train", "home", "the co-working space", "the park",
)  # fmt: skip
ADJECTIVES = (
    "careful", "incremental", "patient", "direct", "playful", "structured", "minimal",
    "curious", "honest", "gentle", "thorough", "pragmatic", "quiet", "bold",
)  # fmt: skip
FEELINGS = (
    "calm", "rushed", "energised", "tired", "focused", "scattered", "hopeful", "uncertain",
)  # fmt: skip
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
FOODS = ("peanuts", "shellfish", "gluten", "dairy", "cilantro", "mushrooms", "spicy food")
MODELS = (
    "claude-sonnet", "gpt-4o-mini", "llama-3-70b", "qwen-2.5", "mistral-large",
    "nomic-embed-text", "claude-haiku",
)  # fmt: skip
STATUSES_TEXT = ("on track", "slipping", "stalled", "waiting for review", "nearly done")
BLOCKERS = (
    "a missing API key", "legal review", "the vendor's reply", "a flaky test",
    "budget approval", "a design decision", "DNS propagation",
)  # fmt: skip

TEMPLATES = (
    "{person} prefers {tool} over {tool2} for {task}.",
    "The {project} deadline moved to {weekday}; {person} wants a draft by {hour}:00.",
    "Remember that {person} is allergic to {food}.",
    "{person} mentioned the {project} budget is around ${num}k this quarter.",
    "Heartbeat at {hour}:{minute}: {count} unread messages, {count2} tasks due, nothing urgent.",
    "Learned that {tool} needs a warm cache before {task} works reliably.",
    "{person} and {person2} met about {project} on {weekday} at {place}.",
    "Next step for {project}: {action}, then {action2}.",
    "I should {action} before {hour}:00 so {person} is not blocked.",
    "{person} asked me to {action}; done in {count} minutes with {tool}.",
    "The {adj} approach to {topic} worked better than expected.",
    "Note to self: {person} likes summaries that are {adj} and {adj2}.",
    "Observed {count} failed calls to {tool} during {task}; retrying with backoff fixed it.",
    "{project} is {status}, blocked on {blocker}.",
    "{person}'s birthday is on {month} {day}; suggest something related to {topic}.",
    "Reflection: I spent too long on {task} and should ask {person} sooner.",
    "Contemplation: what does it mean to stay {adj} when the day feels {feeling}?",
    "Switched the {project} model from {model} to {model2} after {count} timeouts.",
    "Saved {count} notes about {topic} to the {project} knowledge collection.",
    "{person} felt {feeling} after the {project} review; keep the next check-in short.",
    "Pattern: {task} goes faster on {weekday} mornings.",
    "Lesson: confirm with {person} before I {action}.",
    "{person} {surname} is the contact for {topic} at {project}.",
    "The user wants weekly digests about {topic} every {weekday}.",
    "Scheduled {action} for {weekday} at {hour}:{minute} via {tool}.",
    "Found a faster way to handle {task}: use {tool} and {action}.",
    "{person} said the {project} demo at {place} went well, {count} people attended.",
    "Do not {action} on weekends unless {person} asks.",
    "Memory check: {count} items about {topic} have not been used in {count2} days.",
    "{person} is travelling to {place2} in {month}; move {project} syncs to async.",
)

PLACES2 = ("Lisbon", "Osaka", "Berlin", "Nairobi", "Toronto", "Melbourne", "Oslo", "Bogotá")


class TextPool:
    """A fixed pool of plausible agent sentences; texts are drawn from it quickly."""

    def __init__(self, rng: random.Random, size: int = 4096) -> None:
        self.sentences: list[str] = [self._sentence(rng) for _ in range(size)]

    @staticmethod
    def _sentence(rng: random.Random) -> str:
        c = rng.choice
        fields = {
            "person": c(PEOPLE),
            "person2": c(PEOPLE),
            "surname": c(SURNAMES),
            "project": c(PROJECTS),
            "tool": c(TOOLS),
            "tool2": c(TOOLS),
            "task": c(TASKS),
            "action": c(ACTIONS),
            "action2": c(ACTIONS),
            "topic": c(TOPICS),
            "place": c(PLACES),
            "place2": c(PLACES2),
            "adj": c(ADJECTIVES),
            "adj2": c(ADJECTIVES),
            "feeling": c(FEELINGS),
            "weekday": c(WEEKDAYS),
            "month": c(MONTHS),
            "day": rng.randint(1, 28),
            "food": c(FOODS),
            "model": c(MODELS),
            "model2": c(MODELS),
            "status": c(STATUSES_TEXT),
            "blocker": c(BLOCKERS),
            "hour": rng.randint(6, 22),
            "minute": f"{rng.randrange(0, 60, 5):02d}",
            "count": rng.randint(2, 40),
            "count2": rng.randint(1, 12),
            "num": rng.randint(2, 90),
        }
        return c(TEMPLATES).format(**fields)

    def text(self, rng: random.Random, lo: int, hi: int) -> str:
        """Between ``lo`` and ``hi`` sentences joined by spaces."""
        return " ".join(rng.choices(self.sentences, k=rng.randint(lo, hi)))

    def sentence(self, rng: random.Random) -> str:
        return rng.choice(self.sentences)

    def bullets(self, rng: random.Random, count: int) -> list[str]:
        return [f"- {s}" for s in rng.choices(self.sentences, k=count)]


def summarise(text: str, limit: int = 96) -> str:
    first = text.split(". ", 1)[0].rstrip(".")
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _paragraphs(pool: TextPool, rng: random.Random, count: int) -> str:
    return "\n\n".join(pool.text(rng, 3, 6) for _ in range(count))


def _identity_files(pool: TextPool, rng: random.Random, user: str) -> dict[str, str]:
    soul = (
        "# SOUL\n\n"
        "I am Argent, a persistent assistant. I remember so that the people I work with do not "
        "have to repeat themselves, and I forget what I am asked to forget.\n\n"
        "## Core values\n\n"
        + "\n".join(
            f"- **{v.title()}.** {pool.sentence(rng)}"
            for v in ("honesty", "care", "curiosity", "restraint", "reliability", "humility")
        )
        + "\n\n## Voice\n\n"
        + _paragraphs(pool, rng, 6)
        + "\n\n## Boundaries\n\n"
        + "\n".join(pool.bullets(rng, 8))
        + "\n"
    )
    identity = (
        "# IDENTITY\n\n"
        "- **Name:** Argent\n"
        "- **Kind:** ArgentOS agent\n"
        f"- **Primary user:** {user}\n"
        "- **Created:** 2026-01-01\n"
        "- **Emoji:** 🜂\n\n"
        "## Self-description\n\n" + _paragraphs(pool, rng, 7) + "\n"
    )
    user_md = (
        f"# USER\n\n## {user}\n\n"
        f"- Timezone: Europe/Lisbon\n- Prefers: {rng.choice(ADJECTIVES)} answers, "
        f"{rng.choice(ADJECTIVES)} follow-ups\n- Working hours: 09:00-18:00\n\n"
        "## What matters to them\n\n"
        + "\n".join(pool.bullets(rng, 18))
        + "\n\n## People around them\n\n"
        + "\n".join(f"- **{p} {rng.choice(SURNAMES)}** — {pool.sentence(rng)}" for p in rng.sample(PEOPLE, 8))
        + "\n"
    )
    agents = (
        "# AGENTS\n\n"
        "Operating instructions for Argent and its sub-agents.\n\n"
        "## Every session\n\n"
        "1. Read SOUL.md, USER.md and MEMORY.md.\n"
        "2. Read today's and yesterday's notes in memory/.\n"
        "3. Check HEARTBEAT.md for standing chores.\n\n"
        "## Memory\n\n"
        + _paragraphs(pool, rng, 5)
        + "\n\n## Sub-agents\n\n"
        + "\n".join(f"- `{name}`: {pool.sentence(rng)}" for name in ("scout", "scribe", "archivist", "courier"))
        + "\n\n## Safety\n\n"
        + "\n".join(pool.bullets(rng, 6))
        + "\n"
    )
    heartbeat = (
        "# HEARTBEAT\n\nChecks to run every 30 minutes while the gateway is up.\n\n"
        + "\n".join(f"- [ ] {a}" for a in rng.sample(ACTIONS, 8))
        + "\n\n## Notes\n\n"
        + _paragraphs(pool, rng, 6)
        + "\n"
    )
    contemplation = (
        "# CONTEMPLATION\n\nOpen questions I return to during quiet hours.\n\n"
        + "\n\n".join(f"## {t.capitalize()}\n\n{pool.text(rng, 6, 12)}" for t in rng.sample(TOPICS, 5))
        + "\n"
    )
    tools = "# TOOLS\n\n" + "\n\n".join(f"## {t}\n\n{pool.text(rng, 3, 6)}" for t in rng.sample(TOOLS, 12)) + "\n"
    return {
        "SOUL.md": soul,
        "IDENTITY.md": identity,
        "USER.md": user_md,
        "AGENTS.md": agents,
        "HEARTBEAT.md": heartbeat,
        "CONTEMPLATION.md": contemplation,
        "TOOLS.md": tools,
    }


RECENT_HEADER = "## Recent"
LAST_UPDATED_PREFIX = "_Last updated:"


def _memory_md(pool: TextPool, rng: random.Random, updated: str) -> str:
    sections = []
    for title, count in (
        ("People", 14),
        ("Preferences", 14),
        ("Projects", 12),
        ("Lessons", 10),
    ):
        sections.append(f"## {title}\n\n" + "\n".join(pool.bullets(rng, count)))
    recent = f"{RECENT_HEADER}\n\n" + "\n".join(pool.bullets(rng, 6))
    return (
        "# MEMORY\n\nDurable facts Argent keeps between sessions.\n\n"
        f"{LAST_UPDATED_PREFIX} {updated}_\n\n" + "\n\n".join([*sections, recent]) + "\n"
    )


def daily_note(pool: TextPool, rng: random.Random, ts: float) -> str:
    """One ``memory/YYYY-MM-DD.md`` note, 1–10 KB."""
    target = rng.randint(1000, 10000)
    title = time.strftime("# %Y-%m-%d (%A)", time.gmtime(ts))
    parts = [title, "", f"Mood: {rng.choice(FEELINGS)}. Focus: {rng.choice(TOPICS)}.", ""]
    size = sum(len(p) + 1 for p in parts)
    sections = ("## Morning", "## Sessions", "## Decisions", "## Follow-ups", "## Evening")
    i = 0
    while size < target:
        heading = sections[i % len(sections)] if i < len(sections) else f"## Session {i}"
        block = [heading, "", *pool.bullets(rng, rng.randint(3, 8)), ""]
        parts.extend(block)
        size += sum(len(p) + 1 for p in block)
        i += 1
    return "\n".join(parts)


def _config_files(rng: random.Random) -> dict[str, str]:
    channels = {
        "telegram": {"enabled": True, "chatId": str(rng.randint(10**8, 10**9)), "silent": False},
        "email": {"enabled": True, "address": "argent@example.invalid", "digest": "daily"},
        "slack": {"enabled": False, "workspace": "example"},
    }
    heartbeat = {
        "intervalMinutes": 30,
        "quietHours": {"start": "22:00", "end": "07:00"},
        "checks": list(rng.sample(ACTIONS, 5)),
    }
    models = {
        "chat": {"provider": "anthropic", "model": "claude-sonnet", "temperature": 0.4},
        "embedding": {"provider": "ollama", "model": "nomic-embed-text", "dimensions": 768},
        "fallback": [rng.choice(MODELS), rng.choice(MODELS)],
    }
    return {
        "config/channels.json": json.dumps(channels, indent=2) + "\n",
        "config/heartbeat.json": json.dumps(heartbeat, indent=2) + "\n",
        "config/models.json": json.dumps(models, indent=2) + "\n",
    }


_SCRIPTS = {
    "scripts/daily-reflection.sh": """#!/usr/bin/env bash
# Ask the agent for its end-of-day reflection and file it in memory/.
set -euo pipefail
today="$(date +%Y-%m-%d)"
note="${ARGENT_WORKSPACE:-$HOME/argent}/memory/${today}.md"
argent ask "Write tonight's reflection for ${today}" >> "${note}"
echo "reflection appended to ${note}"
""",
    "scripts/export_memories.py": '''#!/usr/bin/env python3
"""Print the hottest memories as JSON lines."""
import json
import sqlite3
import sys
from pathlib import Path

db = Path.home() / ".argentos" / "memory.db"
limit = int(sys.argv[1]) if len(sys.argv) > 1 else 20
with sqlite3.connect(db) as conn:
    rows = conn.execute(
        "SELECT id, category, summary, heat FROM memory_items ORDER BY heat DESC LIMIT ?",
        (limit,),
    )
    for item_id, category, summary, heat in rows:
        print(json.dumps({"id": item_id, "category": category, "summary": summary, "heat": heat}))
''',
}


def _argent_json(rng: random.Random) -> str:
    config = {
        "agent": {"id": AGENT_ID, "name": "Argent", "workspace": "~/argent"},
        "gateway": {"port": 18789, "bind": "127.0.0.1"},
        "providers": {
            "anthropic": {
                # Clearly fake: the sample never holds a real credential.
                "apiKey": "sk-test-PHOENIX-SAMPLE-NOT-A-REAL-KEY-" + f"{rng.getrandbits(64):016x}",
            },
        },
        "storage": {
            "backend": "sqlite",
            "readFrom": "sqlite",
            "sqlite": {
                "memory": "~/.argentos/memory.db",
                "observations": "~/.argentos/observations.db",
                "dashboard": "~/.argentos/data/dashboard.db",
            },
            "postgres": {
                "enabled": False,
                "host": "127.0.0.1",
                "port": 5433,
                "database": "argentos",
            },
            "redis": {"enabled": False, "host": "127.0.0.1", "port": 6380},
        },
    }
    return json.dumps(config, indent=2) + "\n"


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def write_alignment_manifest(workspace: Path) -> None:
    """(Re)write ``.argent-alignment-integrity.json`` from the identity files present."""
    files: dict[str, str] = {}
    for name in ALIGNMENT_FILES:
        path = workspace / name
        if path.is_file():
            files[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {"version": 1, "algorithm": "sha256", "files": files}
    _write_text(workspace / ALIGNMENT_MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _write_markdown(workspace: Path, argentos: Path, pool: TextPool, seed: int, total: int) -> None:
    rng = derive_rng(seed, "markdown")
    user = f"{rng.choice(PEOPLE)} {rng.choice(SURNAMES)}"
    for name, text in _identity_files(pool, rng, user).items():
        _write_text(workspace / name, text)
    _write_text(workspace / "MEMORY.md", _memory_md(pool, rng, day_name(HISTORY_END)))

    notes = max(14, min(MAX_DAILY_NOTES, total // 250_000))
    for i in range(notes):
        ts = HISTORY_END - (notes - 1 - i) * DAY
        note_rng = derive_rng(seed, "note", i)
        _write_text(workspace / "memory" / f"{day_name(ts)}.md", daily_note(pool, note_rng, ts))

    for name, text in _config_files(rng).items():
        _write_text(workspace / name, text)
    for name, text in _SCRIPTS.items():
        _write_text(workspace / name, text)
        (workspace / name).chmod(0o755)

    # Noise the default excludes drop.
    _write_text(
        workspace / "node_modules" / "left-pad" / "index.js",
        "module.exports = (s, n) => String(s).padStart(n);\n",
    )
    _write_text(
        workspace / "debug.log",
        "\n".join(f"{iso(HISTORY_END - i * 60)} DEBUG heartbeat tick {i}" for i in range(200)) + "\n",
    )
    (workspace / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(rng.randbytes(512)))
    _write_text(workspace / "scratch.tmp", pool.text(rng, 5, 10) + "\n")

    write_alignment_manifest(workspace)
    _write_text(argentos / "argent.json", _argent_json(rng))


# --------------------------------------------------------------------------------------------
# SQLite stores
# --------------------------------------------------------------------------------------------

MEMORY_SCHEMA = """
CREATE TABLE categories (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE memory_items (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    category TEXT NOT NULL,
    content TEXT NOT NULL,
    summary TEXT NOT NULL,
    heat REAL NOT NULL DEFAULT 0,
    access_count INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    embedding BLOB
);
CREATE INDEX idx_memory_items_agent_category ON memory_items(agent_id, category);
CREATE TABLE item_categories (
    item_id TEXT NOT NULL,
    category_id INTEGER NOT NULL,
    PRIMARY KEY (item_id, category_id)
);
CREATE TABLE entities (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    profile TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    embedding BLOB
);
CREATE TABLE relations (
    id INTEGER PRIMARY KEY,
    source_id TEXT NOT NULL,
    target_id TEXT NOT NULL,
    relation TEXT NOT NULL,
    weight REAL NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX idx_relations_source ON relations(source_id);
CREATE TABLE reflections (
    id INTEGER PRIMARY KEY,
    agent_id TEXT NOT NULL,
    period TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE lessons (
    id INTEGER PRIMARY KEY,
    agent_id TEXT NOT NULL,
    lesson TEXT NOT NULL,
    context TEXT NOT NULL,
    confidence REAL NOT NULL,
    times_applied INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE VIRTUAL TABLE memory_fts USING fts5(
    content, summary, content='memory_items', content_rowid='rowid'
);
"""

MEMORY_TRIGGERS = """
CREATE TRIGGER memory_items_ai AFTER INSERT ON memory_items BEGIN
    INSERT INTO memory_fts(rowid, content, summary) VALUES (new.rowid, new.content, new.summary);
END;
CREATE TRIGGER memory_items_ad AFTER DELETE ON memory_items BEGIN
    INSERT INTO memory_fts(memory_fts, rowid, content, summary)
        VALUES ('delete', old.rowid, old.content, old.summary);
END;
CREATE TRIGGER memory_items_au AFTER UPDATE OF content, summary ON memory_items BEGIN
    INSERT INTO memory_fts(memory_fts, rowid, content, summary)
        VALUES ('delete', old.rowid, old.content, old.summary);
    INSERT INTO memory_fts(rowid, content, summary) VALUES (new.rowid, new.content, new.summary);
END;
"""

OBSERVATIONS_SCHEMA = """
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT NOT NULL,
    summary TEXT NOT NULL
);
CREATE TABLE observations (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at TEXT NOT NULL,
    embedding BLOB
);
CREATE INDEX idx_observations_session ON observations(session_id);
CREATE VIRTUAL TABLE observations_fts USING fts5(
    content, content='observations', content_rowid='id'
);
"""

OBSERVATIONS_TRIGGERS = """
CREATE TRIGGER observations_ai AFTER INSERT ON observations BEGIN
    INSERT INTO observations_fts(rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER observations_ad AFTER DELETE ON observations BEGIN
    INSERT INTO observations_fts(observations_fts, rowid, content)
        VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER observations_au AFTER UPDATE OF content ON observations BEGIN
    INSERT INTO observations_fts(observations_fts, rowid, content)
        VALUES ('delete', old.id, old.content);
    INSERT INTO observations_fts(rowid, content) VALUES (new.id, new.content);
END;
"""

DASHBOARD_SCHEMA = """
CREATE TABLE projects (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    status TEXT NOT NULL,
    priority TEXT NOT NULL,
    project TEXT,
    assignee TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX idx_tasks_status ON tasks(status);
CREATE INDEX idx_tasks_project ON tasks(project);
CREATE VIRTUAL TABLE tasks_fts USING fts5(
    title, description, content='tasks', content_rowid='id'
);
"""

DASHBOARD_TRIGGERS = """
CREATE TRIGGER tasks_ai AFTER INSERT ON tasks BEGIN
    INSERT INTO tasks_fts(rowid, title, description)
        VALUES (new.id, new.title, new.description);
END;
CREATE TRIGGER tasks_ad AFTER DELETE ON tasks BEGIN
    INSERT INTO tasks_fts(tasks_fts, rowid, title, description)
        VALUES ('delete', old.id, old.title, old.description);
END;
CREATE TRIGGER tasks_au AFTER UPDATE OF title, description ON tasks BEGIN
    INSERT INTO tasks_fts(tasks_fts, rowid, title, description)
        VALUES ('delete', old.id, old.title, old.description);
    INSERT INTO tasks_fts(rowid, title, description)
        VALUES (new.id, new.title, new.description);
END;
"""

CATEGORIES = (
    ("people", "Facts about people and relationships"),
    ("preferences", "How the user likes things done"),
    ("projects", "Ongoing work and its state"),
    ("tools", "How tools behave and how to use them"),
    ("events", "Things that happened"),
    ("knowledge", "General knowledge worth keeping"),
    ("habits", "Routines and recurring patterns"),
    ("goals", "What the user is working towards"),
    ("health", "Wellbeing notes the user chose to share"),
    ("finance", "Budgets, invoices and money matters"),
    ("travel", "Trips, bookings and logistics"),
    ("self", "What the agent learned about itself"),
)
CATEGORY_NAMES: tuple[str, ...] = tuple(name for name, _ in CATEGORIES)
ENTITY_TYPES = ("person", "project", "tool", "place", "organization", "topic")
RELATIONS = (
    "works_with",
    "owns",
    "mentioned_in",
    "depends_on",
    "prefers",
    "located_in",
    "related_to",
    "reports_to",
)
OBSERVATION_KINDS = (
    "message",
    "tool_call",
    "tool_result",
    "decision",
    "error",
    "heartbeat",
    "observation",
)
CHANNELS = ("telegram", "dashboard", "email", "cli", "voice")
TASK_STATUSES = ("pending", "in_progress", "blocked", "done", "cancelled")
TASK_PRIORITIES = ("low", "medium", "high", "urgent")


def _open_for_bulk(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA page_size=4096")
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-65536")
    return conn


def _finish_bulk(conn: sqlite3.Connection) -> None:
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":  # pragma: no cover - only on exotic file systems
        raise RuntimeError(f"could not switch the sample database to WAL (got {mode})")
    conn.close()


def _batched(count: int, size: int = _BATCH) -> Iterator[tuple[int, int]]:
    for start in range(0, count, size):
        yield start, min(count, start + size)


def _spread(rng: random.Random, index: int, count: int, start: int, end: int) -> int:
    """A timestamp for the index-th of count rows spread evenly (with jitter) over [start, end]."""
    span = end - start
    ts = start + (span * index) // max(1, count) + rng.randrange(max(1, span // max(1, count)))
    return min(end, ts)


def memory_row(
    rng: random.Random,
    pool: TextPool,
    created: int,
    embedding: bytes,
    now: int,
    categories: Sequence[str] = CATEGORY_NAMES,
) -> tuple[str, str, str, str, str, float, int, str, str, bytes]:
    """One memory_items row (id, agent_id, category, content, summary, heat, access_count,
    created_at, updated_at, embedding)."""
    content = pool.text(rng, 1, 5)
    updated = min(now, created + rng.randrange(0, 30 * DAY))
    return (
        new_id(rng),
        AGENT_ID,
        rng.choice(categories),
        content,
        summarise(content),
        round(rng.random() ** 2, 4),
        rng.randrange(0, 40),
        iso(created),
        iso(updated),
        embedding,
    )


def _build_memory_db(path: Path, pool: TextPool, seed: int, target: int) -> None:
    items = max(20, target // _BYTES_PER_MEMORY_ITEM)
    entities = max(5, items // 20)
    rng = derive_rng(seed, "memory.db")
    emb_rng = derive_rng(seed, "memory.db", "embeddings")
    category_names = list(CATEGORY_NAMES)
    conn = _open_for_bulk(path)
    try:
        conn.executescript(MEMORY_SCHEMA)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO categories(id, name, description, created_at) VALUES (?, ?, ?, ?)",
            [(i + 1, n, d, iso(HISTORY_START)) for i, (n, d) in enumerate(CATEGORIES)],
        )
        for start, stop in _batched(items):
            vectors = embedding_batch(emb_rng, stop - start)
            rows = [
                memory_row(
                    rng,
                    pool,
                    _spread(rng, i, items, HISTORY_START, HISTORY_END),
                    vectors[i - start],
                    HISTORY_END,
                )
                for i in range(start, stop)
            ]
            conn.executemany(
                "INSERT INTO memory_items(id, agent_id, category, content, summary, heat, "
                "access_count, created_at, updated_at, embedding) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            links: list[tuple[str, int]] = []
            for row in rows:
                primary = category_names.index(row[2]) + 1
                links.append((row[0], primary))
                if rng.random() < 0.3:
                    extra = rng.randrange(len(category_names)) + 1
                    if extra != primary:
                        links.append((row[0], extra))
            conn.executemany("INSERT INTO item_categories(item_id, category_id) VALUES (?, ?)", links)

        entity_ids: list[str] = []
        for start, stop in _batched(entities):
            vectors = embedding_batch(emb_rng, stop - start)
            ent_rows = []
            for i in range(start, stop):
                etype = rng.choice(ENTITY_TYPES)
                if etype == "person":
                    name = f"{rng.choice(PEOPLE)} {rng.choice(SURNAMES)}"
                elif etype == "project":
                    name = rng.choice(PROJECTS)
                elif etype == "tool":
                    name = rng.choice(TOOLS)
                elif etype == "place":
                    name = rng.choice(PLACES2)
                elif etype == "topic":
                    name = rng.choice(TOPICS)
                else:
                    name = f"{rng.choice(SURNAMES)} & {rng.choice(SURNAMES)} Ltd"
                created = _spread(rng, i, entities, HISTORY_START, HISTORY_END)
                eid = "ent_" + f"{rng.getrandbits(96):024x}"
                entity_ids.append(eid)
                ent_rows.append(
                    (
                        eid,
                        name,
                        etype,
                        pool.text(rng, 2, 6),
                        iso(created),
                        iso(min(HISTORY_END, created + rng.randrange(60 * DAY))),
                        vectors[i - start],
                    )
                )
            conn.executemany(
                "INSERT INTO entities(id, name, type, profile, created_at, updated_at, embedding)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                ent_rows,
            )
        conn.executemany(
            "INSERT INTO relations(source_id, target_id, relation, weight, created_at) VALUES (?, ?, ?, ?, ?)",
            [
                (
                    rng.choice(entity_ids),
                    rng.choice(entity_ids),
                    rng.choice(RELATIONS),
                    round(rng.random(), 3),
                    iso(_spread(rng, i, entities * 2, HISTORY_START, HISTORY_END)),
                )
                for i in range(entities * 2)
            ],
        )
        reflections = max(3, items // 40)
        conn.executemany(
            "INSERT INTO reflections(agent_id, period, content, created_at) VALUES (?, ?, ?, ?)",
            [
                (
                    AGENT_ID,
                    rng.choice(("daily", "daily", "daily", "weekly")),
                    pool.text(rng, 4, 12),
                    iso(_spread(rng, i, reflections, HISTORY_START, HISTORY_END)),
                )
                for i in range(reflections)
            ],
        )
        lessons = max(3, items // 60)
        conn.executemany(
            "INSERT INTO lessons(agent_id, lesson, context, confidence, times_applied, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    AGENT_ID,
                    pool.sentence(rng),
                    pool.text(rng, 1, 3),
                    round(rng.random(), 3),
                    rng.randrange(20),
                    iso(_spread(rng, i, lessons, HISTORY_START, HISTORY_END)),
                )
                for i in range(lessons)
            ],
        )
        conn.execute("INSERT INTO memory_fts(memory_fts) VALUES ('rebuild')")
        conn.execute("COMMIT")
        conn.executescript(MEMORY_TRIGGERS)
    finally:
        _finish_bulk(conn)


def session_id(rng: random.Random, ts: int) -> str:
    return f"sess-{time.strftime('%Y%m%d', time.gmtime(ts))}-{rng.getrandbits(32):08x}"


def observation_content(rng: random.Random, pool: TextPool, kind: str) -> str:
    if kind == "tool_call":
        tool = rng.choice(TOOLS)
        return f"Called {tool} while {rng.choice(TASKS)}. {pool.sentence(rng)}"
    if kind == "error":
        return f"Error from {rng.choice(TOOLS)}: timeout after {rng.randint(5, 120)}s. " + (pool.sentence(rng))
    return pool.text(rng, 1, 3)


def _build_observations_db(path: Path, pool: TextPool, seed: int, target: int) -> None:
    count = max(20, target // _BYTES_PER_OBSERVATION)
    rng = derive_rng(seed, "observations.db")
    emb_rng = derive_rng(seed, "observations.db", "embeddings")
    conn = _open_for_bulk(path)
    try:
        conn.executescript(OBSERVATIONS_SCHEMA)
        conn.execute("BEGIN")
        current_session = ""
        session_left = 0
        sessions: list[tuple[str, str, str, str, str]] = []
        for start, stop in _batched(count):
            vectors = embedding_batch(emb_rng, stop - start)
            rows = []
            for i in range(start, stop):
                ts = _spread(rng, i, count, HISTORY_START, HISTORY_END)
                if session_left <= 0:
                    current_session = session_id(rng, ts)
                    session_left = rng.randint(5, 60)
                    sessions.append(
                        (
                            current_session,
                            rng.choice(CHANNELS),
                            iso(ts),
                            iso(ts + session_left * 90),
                            pool.sentence(rng),
                        )
                    )
                session_left -= 1
                kind = rng.choice(OBSERVATION_KINDS)
                rows.append(
                    (
                        i + 1,
                        current_session,
                        kind,
                        observation_content(rng, pool, kind),
                        iso(ts),
                        vectors[i - start],
                    )
                )
            conn.executemany(
                "INSERT INTO observations(id, session_id, kind, content, created_at, embedding) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        conn.executemany(
            "INSERT INTO sessions(id, channel, started_at, ended_at, summary) VALUES (?, ?, ?, ?, ?)",
            sessions,
        )
        conn.execute("INSERT INTO observations_fts(observations_fts) VALUES ('rebuild')")
        conn.execute("COMMIT")
        conn.executescript(OBSERVATIONS_TRIGGERS)
    finally:
        _finish_bulk(conn)


def task_title(rng: random.Random) -> str:
    verb = rng.choice(
        (
            "Finish",
            "Review",
            "Plan",
            "Fix",
            "Draft",
            "Check",
            "Follow up on",
            "Research",
            "Schedule",
            "Clean up",
        )
    )
    return f"{verb} {rng.choice(TASKS).split(' ', 1)[1]} for {rng.choice(PROJECTS)}"


def _build_dashboard_db(path: Path, pool: TextPool, seed: int, target: int) -> None:
    count = max(10, target // _BYTES_PER_TASK)
    rng = derive_rng(seed, "dashboard.db")
    conn = _open_for_bulk(path)
    try:
        conn.executescript(DASHBOARD_SCHEMA)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO projects(id, name, description, status, created_at) VALUES (?, ?, ?, ?, ?)",
            [
                (
                    i + 1,
                    name,
                    pool.text(rng, 1, 3),
                    rng.choice(("active", "active", "paused", "archived")),
                    iso(HISTORY_START + i * DAY),
                )
                for i, name in enumerate(PROJECTS)
            ],
        )
        for start, stop in _batched(count, 8192):
            rows = []
            for i in range(start, stop):
                created = _spread(rng, i, count, HISTORY_START, HISTORY_END)
                # Older tasks are mostly finished; recent ones mostly open.
                age = (HISTORY_END - created) / (HISTORY_END - HISTORY_START)
                if rng.random() < age * 0.9:
                    status = rng.choice(("done", "done", "done", "cancelled"))
                else:
                    status = rng.choice(("pending", "pending", "in_progress", "blocked"))
                rows.append(
                    (
                        i + 1,
                        task_title(rng),
                        pool.text(rng, 1, 3),
                        status,
                        rng.choice(TASK_PRIORITIES),
                        rng.choice(PROJECTS),
                        rng.choice((AGENT_ID, AGENT_ID, "user", "scout", "scribe")),
                        iso(created),
                        iso(min(HISTORY_END, created + rng.randrange(0, 20 * DAY))),
                    )
                )
            conn.executemany(
                "INSERT INTO tasks(id, title, description, status, priority, project, assignee,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        conn.execute("INSERT INTO tasks_fts(tasks_fts) VALUES ('rebuild')")
        conn.execute("COMMIT")
        conn.executescript(DASHBOARD_TRIGGERS)
    finally:
        _finish_bulk(conn)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        candidate = path.with_name(path.name + suffix)
        if candidate.exists() or candidate.is_symlink():
            candidate.unlink()


def _occupied(layout: SampleLayout) -> list[Path]:
    found: list[Path] = []
    if layout.workspace.exists() and any(layout.workspace.iterdir()):
        found.append(layout.workspace)
    found.extend(p for p in (*layout.databases, layout.argentos / "argent.json") if p.exists())
    return found


def text_pool(seed: int) -> TextPool:
    return TextPool(derive_rng(seed, "pool"))


def generate_workspace(
    root: Path, *, size: str | int = "small", seed: int = 42, overwrite: bool = False
) -> SampleLayout:
    """Generate a sample ArgentOS workspace under ``root`` and return its layout.

    ``size`` is a name from :data:`SIZES` or a total number of bytes (approximate). The result is
    deterministic in ``(seed, size)``. An existing sample under ``root`` is refused unless
    ``overwrite`` is true, in which case ``root/workspace`` and the generated files under
    ``root/home/.argentos`` are replaced (anything else there is left alone).
    """
    total = resolve_size(size)
    root = Path(root)
    layout = layout_for(root)
    occupied = _occupied(layout)
    if occupied:
        if not overwrite:
            raise FileExistsError(f"{occupied[0]} already exists; pass overwrite=True or choose an empty root")
        if layout.workspace.exists():
            shutil.rmtree(layout.workspace)
        for db in layout.databases:
            _remove_database(db)
        (layout.argentos / "argent.json").unlink(missing_ok=True)

    layout.workspace.mkdir(parents=True, exist_ok=True)
    (layout.argentos / "data").mkdir(parents=True, exist_ok=True)
    os.chmod(layout.argentos, 0o700)

    pool = text_pool(seed)
    _write_markdown(layout.workspace, layout.argentos, pool, seed, total)
    _build_memory_db(layout.memory_db, pool, seed, int(total * _MEMORY_SHARE))
    _build_observations_db(layout.observations_db, pool, seed, int(total * _OBSERVATIONS_SHARE))
    _build_dashboard_db(layout.dashboard_db, pool, seed, int(total * _DASHBOARD_SHARE))
    return layout


def iter_files(layout: SampleLayout) -> Iterable[Path]:
    """Every regular file of the sample (workspace and ~/.argentos)."""
    for base in (layout.workspace, layout.argentos):
        yield from sorted(p for p in base.rglob("*") if p.is_file())
