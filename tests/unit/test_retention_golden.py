"""Golden files of retention decisions: every scenario under golden/retention/*.json is run through
the policy and its rendering compared with the `.golden` file beside it.

The golden files were checked by hand against restic's rules (each scenario's description says
what it shows). To regenerate after an intended change: PHX_UPDATE_GOLDEN=1 pytest this file, then
read the diff before keeping it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from phoenix_backup.config.model import Retention
from phoenix_backup.repo.retention import Plan, Policy, apply_policy
from phoenix_backup.repo.snapshot import DatabaseInfo

GOLDEN = Path(__file__).parent / "golden" / "retention"
SCENARIOS = sorted(GOLDEN.glob("*.json"))


@dataclass(frozen=True)
class Snap:
    id: str
    name: str
    time: str
    host: str
    scope: str
    tags: tuple[str, ...]
    incomplete: tuple[object, ...] = ()  # a partial snapshot's unsaved parts
    databases: tuple[DatabaseInfo, ...] = ()


def load_scenario(path: Path) -> tuple[list[Snap], Policy, datetime]:
    doc: dict[str, Any] = json.loads(path.read_text())
    raw = doc["policy"]
    retention = Retention(
        hourly=raw.get("hourly", 0),
        daily=raw.get("daily", 0),
        weekly=raw.get("weekly", 0),
        monthly=raw.get("monthly", 0),
        yearly=raw.get("yearly", 0),
        last=raw.get("last", 0),
        within=raw.get("within"),
        keep_safety_days=raw.get("keepSafetyDays", 7),
    )
    items: list[dict[str, Any]] = []
    for item in doc.get("snapshots", []):
        items.append({"time": item} if isinstance(item, str) else item)
    if "series" in doc:
        series = doc["series"]
        start = datetime.fromisoformat(series["start"])
        for i in range(series["count"]):
            items.append({"time": (start + timedelta(hours=series["stepHours"] * i)).isoformat()})
    snaps = [
        Snap(
            id=f"s{i:04d}",
            name=f"s{i:04d}",
            time=item["time"],
            host=item.get("host", "host"),
            scope=item.get("scope", "full"),
            tags=tuple(item.get("tags", ())),
        )
        for i, item in enumerate(items)
    ]
    # The repository hands snapshots over oldest first.
    snaps.sort(key=lambda s: datetime.fromisoformat(s.time).timestamp())
    return snaps, Policy.from_config(retention), datetime.fromisoformat(doc["now"])


def render(plan: Plan, now: datetime) -> str:
    """Every kept snapshot on its own line with its reasons; runs of removed ones collapsed."""
    lines = [f"policy: {plan.policy.describe()}", f"now: {now.isoformat()}"]
    for key, decisions in plan.groups():
        kept = sum(1 for d in decisions if d.keep)
        lines.append(f"group {key}: keep {kept}, remove {len(decisions) - kept}")
        run: list[str] = []
        for d in decisions:
            tags = f" [{','.join(d.snapshot.tags)}]" if d.snapshot.tags else ""
            if d.keep:
                lines += _removed(run)
                run = []
                lines.append(f"  keep    {d.snapshot.time}{tags}  {', '.join(r.text() for r in d.reasons)}")
            else:
                run.append(d.snapshot.time + tags)
        lines += _removed(run)
    return "\n".join(lines) + "\n"


def _removed(run: list[str]) -> list[str]:
    if len(run) == 1:
        return [f"  remove  {run[0]}"]
    if run:
        return [f"  remove  {run[0]} .. {run[-1]} ({len(run)} snapshots)"]
    return []


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_golden(scenario: Path) -> None:
    snaps, policy, now = load_scenario(scenario)
    text = render(apply_policy(snaps, policy, now), now)
    golden = scenario.with_suffix(".golden")
    if os.environ.get("PHX_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"{golden.name} is missing; run with PHX_UPDATE_GOLDEN=1 and check it by hand"
    assert text == golden.read_text(), f"{scenario.stem}: decisions differ from {golden.name}"


def test_every_scenario_has_a_golden_file() -> None:
    assert len(SCENARIOS) >= 10
    orphans = {p.stem for p in GOLDEN.glob("*.golden")} - {p.stem for p in SCENARIOS}
    assert not orphans, f"golden files without a scenario: {orphans}"
