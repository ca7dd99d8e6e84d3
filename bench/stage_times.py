"""Where the minutes of a `rest main` run went, from its log: the first and last log line of each
asset step, summed into the stages of the loop (steps that overlap are counted in each).

    python bench/stage_times.py run.log [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from pathlib import Path

LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \+0000 - dagster - \w+ - [^ ]+ - ([0-9a-f-]{36}) - (?:\d+ - )?(\w+) - "
)


def stage_of(step: str) -> str:
    """The loop's stage of a step key such as default__grow_2__improve_1__policy."""
    parts = step.split("__")[1:]
    if not parts:
        return step
    if parts[0].startswith("grow_"):
        return f"{parts[0]} improve steps" if len(parts) > 2 else f"{parts[0]} sampling + scoring"
    return {
        "corpus": "corpus + tokenizer",
        "tokenizer": "corpus + tokenizer",
        "base_policy": "BC training",
        "base_policy_eval": "BC evaluation",
        "base_policy_rewards": "BC evaluation",
        "reward_model": "reward model",
        "best_of_n": "Best-of-N",
        "report": "report",
        "online_rl": "online RL (PPO)",
        "control": "control",
    }.get(parts[0], "checks and other")


def stage_minutes(log: str) -> tuple[dict[str, float], float]:
    spans: dict[tuple[str, str], list[datetime]] = {}
    first = last = None
    for line in log.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
        first, last = first or t, t
        if "__" not in m.group(3):  # a run-level event, not a step
            continue
        span = spans.setdefault((m.group(2), m.group(3)), [t, t])  # one span per step of each run (shard)
        span[1] = t
    stages: dict[str, float] = {}
    for (_, step), (a, b) in spans.items():
        stages[stage_of(step)] = stages.get(stage_of(step), 0.0) + (b - a).total_seconds() / 60
    total = (last - first).total_seconds() / 60 if first else 0.0
    return {k: round(v, 1) for k, v in stages.items()}, round(total, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    stages, total = stage_minutes(args.log.read_text(errors="replace"))
    width = max(len(k) for k in [*stages, "first to last log line"])
    for k, v in stages.items():
        print(f"{k:<{width}}  {v:6.1f} min")
    print(f"{'first to last log line':<{width}}  {total:6.1f} min")
    if args.json:
        args.json.write_text(json.dumps({"stages_minutes": stages, "logged_minutes": total}, indent=1) + "\n")


if __name__ == "__main__":
    main()
