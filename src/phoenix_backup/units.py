"""How sizes read for people: in the CLI's output, notifications and `phx doctor`."""

from __future__ import annotations


def human_size(n: int) -> str:
    """Bytes in binary units with one decimal: `512 B`, `1.5 KiB`, `362.0 MiB`."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
