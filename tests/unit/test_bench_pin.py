"""`bench/run.py` measures a copy of Phoenix taken at its start: that copy is compiled once, as an
installed `phx` is, so that no step pays for compiling every module again when the environment
says not to write bytecode (PYTHONDONTWRITEBYTECODE, as in CI and containers)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "run.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_pinned_copy_imports_without_compiling(tmp_path: Path) -> None:
    live = tmp_path / "live"
    (live / "sub").mkdir(parents=True)
    (live / "__init__.py").write_text("")
    (live / "sub" / "__init__.py").write_text("")
    (live / "sub" / "mod.py").write_text("VALUE = 42\n")
    _bench().pin_package(live, tmp_path / "pinned")
    copied = sorted((tmp_path / "pinned" / "phoenix_backup").rglob("*.py"))
    assert len(copied) == 3
    for source in copied:
        assert Path(importlib.util.cache_from_source(str(source))).is_file(), source
    # Imported as every step imports it: from the compiled files, nothing compiled or written.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(tmp_path / "pinned")}
    probe = (
        "import importlib.machinery as m\n"
        "compiled = []\n"
        "original = m.SourceFileLoader.source_to_code\n"
        "m.SourceFileLoader.source_to_code = lambda self, *a, **k: compiled.append(a[-1]) or original(self, *a, **k)\n"
        "import phoenix_backup.sub.mod as mod\n"
        "print(mod.VALUE, mod.__file__)\n"
        "print([str(c) for c in compiled if 'phoenix_backup' in str(c)])\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    value, compiled = run.stdout.splitlines()
    assert value == f"42 {tmp_path / 'pinned' / 'phoenix_backup' / 'sub' / 'mod.py'}"
    assert compiled == "[]"


def test_a_copy_that_does_not_compile_stops_the_run(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    (live / "__init__.py").write_text("def broken(:\n")
    with pytest.raises(SystemExit, match="does not compile"):
        _bench().pin_package(live, tmp_path / "pinned")
