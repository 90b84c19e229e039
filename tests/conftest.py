"""Every test's own cache: code that falls back on the user's cache folder (no PHX_CACHE_DIR; the
lock sightings, restore journals) writes below the session's temporary folder, never in the real
`~/.cache/phoenix` of whoever runs the suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cache = tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        yield cache
