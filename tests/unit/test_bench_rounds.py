"""`bench/run.py` repeats the write-heavy steps in rounds with the tools' order changed each round,
and reports medians: on this machine the tool that writes into memory the host has just taken back
pays several times the system time of the next one (docs/benchmarks.md, "System time on this
machine"), so one run in a fixed order measures the moment, not the tool."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from test_bench_pin import _bench

TOOLS = ["phoenix", "restic", "tar|zstd"]


def test_rounds_put_every_tool_first_last_and_after_every_other() -> None:
    orders = _bench().round_orders(TOOLS, 6)
    assert orders[:3] == [TOOLS, TOOLS[::-1], ["restic", "tar|zstd", "phoenix"]]
    # Six rounds of three tools are the six orders, each once.
    assert sorted(map(tuple, orders)) == sorted(itertools.permutations(TOOLS))
    for tool in TOOLS:
        assert sum(o[0] == tool for o in orders) == 2
        assert sum(o[-1] == tool for o in orders) == 2
    # Three rounds (the default): each tool first once.
    assert sorted(o[0] for o in orders[:3]) == sorted(TOOLS)
    assert _bench().round_orders(TOOLS, 1) == [TOOLS]
    assert _bench().round_orders(["a", "b"], 4) == [["a", "b"], ["b", "a"], ["b", "a"], ["a", "b"]]


def _measure(wall: float, user: float, sys_: float = 0.5, rss_kb: int = 50_000) -> dict[str, Any]:
    return {"wall": wall, "user": user, "sys": sys_, "cpu": user + sys_, "maxRssKb": rss_kb, "rc": 0}


def _doc(rounds: dict[str, list[dict[str, Any]]] | None) -> dict[str, Any]:
    """A results document as run.py writes it (before its summary), one simulated day."""
    results: dict[str, dict[str, Any]] = {}
    for n, tool in enumerate(TOOLS):
        results[tool] = {
            "full": {**_measure(3.0 + n, 4.0 + n), "repoBytes": 300_000_000},
            "nochange": {**_measure(0.5, 0.4), "repoBytes": 300_000_000},
            "day1": {**_measure(1.0 + n, 1.5), "repoBytes": 310_000_000},
            "restore": {**_measure(5.0, 1.0), "verified": True, "problems": []},
        }
    results["phoenix"]["drill"] = _measure(4.0, 3.0)
    results["phoenix"]["restoreAfterDrill"] = {**_measure(2.8, 1.5), "verified": True, "problems": []}
    doc: dict[str, Any] = {
        "size": "medium",
        "seed": 42,
        "days": 1,
        "date": "2026-12-05T18:00:00+00:00",
        "cpus": 2,
        "loadavgStart": [0.5, 0.5, 0.5],
        "loadavgEnd": [1.0, 1.0, 1.0],
        "versions": {"phoenix": "phx 0.1.0"},
        "command": "python bench/run.py",
        "dataset": {
            "workspaceFiles": 1,
            "workspaceBytes": 1_000_000,
            "databaseBytes": {"memory.db": 600_000_000},
            "totalBytes": 601_000_000,
            "excludes": [],
        },
        "steps": ["full", "nochange", "day1", "restore"],
        "tools": TOOLS,
        "results": results,
        "realChange": [{"day": 1, "realBytes": 10_000_000, "pageBytes": 9_000_000, "fileBytes": 1_000_000}],
        "sourceWarnings": [],
    }
    if rounds is not None:
        doc["rounds"] = rounds
    return doc


def _rounds(step: str, per_tool: dict[str, list[tuple[float, float, float]]]) -> list[dict[str, Any]]:
    """Rounds of `step` in the benchmark's order; per_tool: (wall, user, sys) of each round."""
    out = []
    for i, order in enumerate(_bench().round_orders(TOOLS, 3)):
        out.append({"order": order, "results": {t: _measure(*per_tool[t][i]) for t in order}})
    return out


def test_the_ratios_are_ratios_of_medians_over_the_rounds_in_wall_and_user_time() -> None:
    bench = _bench()
    restore = {
        # Phoenix's first round paid for memory the host had taken back (7x the system time).
        "phoenix": [(5.39, 1.78, 6.08), (2.17, 1.70, 0.98), (2.32, 1.74, 1.04)],
        "restic": [(1.72, 1.88, 0.56), (1.56, 1.90, 0.60), (1.69, 1.86, 0.55)],
        "tar|zstd": [(1.19, 0.62, 1.43), (1.10, 0.60, 0.40), (1.15, 0.61, 0.45)],
    }
    full = {
        "phoenix": [(2.41, 2.25, 1.58), (2.00, 2.20, 0.70), (2.10, 2.30, 0.80)],
        "restic": [(3.06, 4.41, 0.66), (3.50, 4.50, 0.70), (3.20, 4.30, 0.60)],
        "tar|zstd": [(1.59, 2.58, 0.44), (1.50, 2.50, 0.40), (1.70, 2.60, 0.50)],
    }
    after = {
        "phoenix": [(2.84, 1.47, 1.85), (1.60, 1.40, 0.50), (1.65, 1.45, 0.55)],
        "restic": [(1.60, 1.80, 0.50), (1.58, 1.85, 0.50), (1.80, 1.90, 0.60)],
        "tar|zstd": [(1.10, 0.60, 0.40), (1.10, 0.60, 0.40), (1.10, 0.60, 0.40)],
    }
    doc = _doc(
        {
            "full": _rounds("full", full),
            "restore": _rounds("restore", restore),
            "restoreAfterDrill": _rounds("restoreAfterDrill", after),
        }
    )
    summ = bench.summarize(doc)
    p = summ["phoenix"]
    assert p["medians"]["restore"] == {"wall": 2.32, "user": 1.74, "sys": 1.04, "cpu": pytest.approx(2.78), "n": 3}
    assert p["restore"] == 2.32
    assert p["ratios"]["restore"] == pytest.approx(2.32 / 1.69)
    assert p["userRatios"]["restore"] == pytest.approx(1.74 / 1.88)
    assert p["ratios"]["full"] == pytest.approx(2.10 / 3.20)
    assert p["userRatios"]["full"] == pytest.approx(2.25 / 4.41)
    assert p["ratios"]["full_floor"] == pytest.approx(2.10 / 1.59)
    # After the drill: against restic's restores of the same rounds, not of the earlier ones.
    assert p["ratios"]["restoreAfterDrill"] == pytest.approx(1.65 / 1.60)
    assert p["userRatios"]["restoreAfterDrill"] == pytest.approx(1.45 / 1.85)
    # Steps without rounds keep their single measurement, now with user CPU beside the wall time.
    assert p["ratios"]["daily"] == pytest.approx(1.0 / 2.0)
    assert p["userRatios"]["nochange"] == pytest.approx(1.0)

    table = bench.markdown({**doc, "summary": summ})
    assert "| phoenix | 0.66x / 0.51x | 1.32x / 0.87x |" in table
    assert "| 1.37x / 0.93x | " in table  # the restore: wall / user
    assert "| restore | phoenix | 2.32 s | 1.74 | 1.04 | 1.37x | 0.93x | 5.39 / 2.17 / 2.32 |" in table
    assert "1: phoenix, restic, tar|zstd; 2: tar|zstd, restic, phoenix; 3: restic, tar|zstd, phoenix" in table
    # The target is evaluated on the medians: 1.37x is not met, the full backup's 0.66x is not either.
    assert "| restore (median of 3) | 2.32 s | restic 1.69 s | 1.37x | ≤ 0.5x (0.84 s) | **no** | 0.93x |" in table
    assert "| restore after `phx drill` (median of 3) | 1.65 s | restic 1.60 s (after the drill too) | 1.03x |" in table


def test_a_results_file_without_rounds_is_still_summarised_and_tabled() -> None:
    bench = _bench()
    doc = _doc(None)
    summ = bench.summarize(doc)
    p = summ["phoenix"]
    assert p["medians"] == {}
    assert p["restore"] == 5.0
    assert p["ratios"]["restore"] == pytest.approx(1.0)
    assert p["ratios"]["restoreAfterDrill"] == pytest.approx(2.8 / 5.0)
    assert p["userRatios"]["full"] == pytest.approx(4.0 / 5.0)
    table = bench.markdown({**doc, "summary": summ})
    assert "no rounds" in table
    assert "Write-heavy steps in rounds" not in table
    assert "| restore | 5.00 s | restic 5.00 s | 1.00x |" in table


def test_one_round_is_tabled_as_a_single_run() -> None:
    bench = _bench()
    one = {t: [(5.0, 1.0, 0.5)] for t in TOOLS}
    doc = _doc({"restore": [{"order": TOOLS, "results": {t: _measure(*one[t][0]) for t in TOOLS}}]})
    summ = bench.summarize(doc)
    assert summ["phoenix"]["ratios"]["restore"] == pytest.approx(1.0)
    table = bench.markdown({**doc, "summary": summ})
    assert "no rounds" in table
    assert "Write-heavy steps in rounds" not in table and "median of" not in table


def test_rounds_below_one_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        _bench().main(["--rounds", "0", "--replot", "unused.json"])
    assert stop.value.code == 2
    assert "--rounds must be at least 1" in capsys.readouterr().err
