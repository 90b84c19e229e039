"""Writers, the mirror of sources/: a snapshot's files, SQLite stores, PostgreSQL and Redis
databases written back to disk and servers, safely."""

from typing import Literal

# How a restore or an import merges into what is there: `skip` keeps existing rows (keys),
# `update` overwrites them. SQLite stores, PostgreSQL agent rows and Redis keys alike.
ConflictMode = Literal["skip", "update"]
CONFLICT_MODES: tuple[ConflictMode, ...] = ("skip", "update")
