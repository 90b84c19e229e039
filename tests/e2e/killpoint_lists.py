"""tests/e2e/killpoint.py with format 6's extent lists made small in the killed `phx` (as
conftest.py makes them in the test process): a backup of the tiny sample then writes list blobs,
so its kill points include theirs (tests/e2e/test_format6_adversary.py)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from phoenix_backup.repo import tree

SCRIPT = Path(__file__).resolve()

if __name__ == "__main__":
    # Only in the killed `phx`: a test that imports SCRIPT keeps the real sizes in its process.
    tree.INLINE_EXTENTS = 2
    tree.LIST_SPAN = 16384
    tree.MAX_LIST_EXTENTS = 4
    target = str(SCRIPT.with_name("killpoint.py"))
    sys.argv[0] = target
    runpy.run_path(target, run_name="__main__")
