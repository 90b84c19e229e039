"""Deterministic sample ArgentOS workspaces and simulated agent activity.

Used by ``phx demo`` (size ``small``) and by the benchmarks in ``bench/``::

    layout = generate_workspace(tmp, size="small", seed=42)
    for day in range(7):
        stats = simulate_day(layout, day, seed=42)
"""

from .activity import DayStats, day_date, simulate_day
from .workspace import (
    ALIGNMENT_FILES,
    ALIGNMENT_MANIFEST,
    EMBEDDING_BYTES,
    EMBEDDING_DIM,
    SIZES,
    SampleLayout,
    generate_workspace,
    layout_for,
    resolve_size,
    write_alignment_manifest,
)

__all__ = [
    "ALIGNMENT_FILES",
    "ALIGNMENT_MANIFEST",
    "EMBEDDING_BYTES",
    "EMBEDDING_DIM",
    "SIZES",
    "DayStats",
    "SampleLayout",
    "day_date",
    "generate_workspace",
    "layout_for",
    "resolve_size",
    "simulate_day",
    "write_alignment_manifest",
]
