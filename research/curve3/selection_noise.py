"""Does a step's gain on valid predict its gain on test? (#31: is selection on valid picking noise?)

    .venv/bin/python research/curve3/selection_noise.py --home /work/timed/data

Reads the stored per-sentence greedy rewards of every evaluated Improve step of `default` and the
curve-3 branches (no model is run) and, for each step against the parent it was trained from, the
paired mean gain of the learned reward on all of valid, on two fixed halves of valid (split by a hash
of the source id) and on test. Prints and writes research/results/curve3_20261206/selection_noise.json:
the correlation across steps of valid gain with test gain (95 % bootstrap over steps), the split-half
agreement of valid with itself, and the mean test gain of steps that the chain would keep on one half
against those it would reject.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

RUNS = ("default", "c3_lr1e4", "c3_lr1e4_2g", "c3_lr5e5")
OUT = Path(__file__).resolve().parents[1] / "results" / "curve3_20261206" / "selection_noise.json"


def rewards(folder: Path, split: str) -> pd.Series:
    df = pd.read_parquet(folder / f"{split}.greedy.parquet")
    return df.set_index("source_id").reward_learned


def half(source_id: str) -> int:
    return hashlib.sha256(source_id.encode()).digest()[0] % 2


def eval_folder(experiments: Path, run: str, policy: str) -> Path:
    if policy == "base":
        return experiments / "default" / "evaluations" / "base_rewards"  # BC's greedy outputs, scored
    return experiments / run / "evaluations" / policy


def interval(diff: pd.Series, seed: int = 0, n: int = 2000) -> list[float]:
    rng = np.random.default_rng(seed)
    values = diff.to_numpy()
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(n)]
    return [round(float(np.quantile(means, 0.025)), 4), round(float(np.quantile(means, 0.975)), 4)]


def steps(experiments: Path) -> list[dict]:
    """Every step the chain kept (its checkpoint evaluated; a rejected step hands on its parent's), once per
    checkpoint (c3_lr1e4_2g's grow 1 is c3_lr1e4's)."""
    rows, seen = [], set()
    for run in RUNS:
        for record in sorted((experiments / run / "policies").glob("grow_*/improve_*/step.json")):
            step = json.loads(record.read_text())
            if step["status"] != "improved" or step["checkpoint_hash"] in seen:
                continue
            seen.add(step["checkpoint_hash"])
            name = f"grow_{step['grow']}/improve_{step['step']}"
            child, parent = eval_folder(experiments, run, name), eval_folder(experiments, run, step["parent"])
            row = {"run": run, "step": name, "parent": step["parent"], "lr": step["lr"]}
            for split in ("valid", "test"):
                diff = rewards(child, split) - rewards(parent, split)
                row[split] = round(float(diff.mean()), 5)
                row[f"{split}_95ci"] = interval(diff)
                if split == "valid":
                    halves = diff.groupby(diff.index.map(half)).mean()
                    row["valid_a"], row["valid_b"] = round(float(halves[0]), 5), round(float(halves[1]), 5)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", type=Path, required=True, help="the REST_HOME holding default and the curve-3 runs")
    args = ap.parse_args()
    rows = steps(args.home / "experiments")
    df = pd.DataFrame(rows)
    print(df.drop(columns=["valid_95ci"]).to_string(index=False))
    first = df[df.parent == "base"]
    later = df[df.parent != "base"]
    result = {
        "what": "each kept Improve step against the checkpoint it was trained from: paired mean learned-reward "
        "gain (greedy outputs) on valid, on two fixed halves of valid, and on test; 95 % bootstrap over sentences",
        "kept_steps": len(df),
        "mean_valid_gain": round(float(df.valid.mean()), 5),
        "mean_test_gain": round(float(df.test.mean()), 5),
        "first_steps_from_bc": {"n": len(first), "mean_valid_gain": round(float(first.valid.mean()), 5),
                                "mean_test_gain": round(float(first.test.mean()), 5)},
        "later_steps": {"n": len(later), "mean_valid_gain": round(float(later.valid.mean()), 5),
                        "mean_test_gain": round(float(later.test.mean()), 5)},
        "rows": rows,
    }  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
