"""Curve 5's criterion (README.md): ReST − control on test per run, pooled over the four unseen runs.

    .venv/bin/python research/curve5/pooled.py --curve4-home /work/timed/data --curve5-home /work/c5/data

For each run: the paired per-sentence difference of the final policy's and the control's greedy test
outputs (learned reward, each run's own reward model; chrF reward), its mean and 95 % bootstrap interval
(research/curve4/pooled.py's). Pooled: per test sentence, the mean of that difference over the runs,
then the same bootstrap. Cross-check (not the criterion): the seed-2 runs' outputs scored again with
seed 1234's reward model (the default's). Writes research/results/curve5_20261206/pooled.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
CURVE4 = ("c4_lr3e5", "c4_lr7e5")  # seed 1234's BC and reward model; not used to draw the prediction
CURVE5 = ("c5_s2", "c5_s2_lr3e5")  # seed 2's
OUT = HERE.parents[0] / "results" / "curve5_20261206" / "pooled.json"


def _curve4():
    spec = importlib.util.spec_from_file_location("curve4_pooled", HERE.parent / "curve4" / "pooled.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cross_scored(experiments: Path, run: str, reward_dir: Path) -> pd.Series:
    """ReST − control per test sentence under another run's learned reward model."""
    from rest_pipeline.core.rewards.learned import CometReward

    reward = CometReward(reward_dir, name="learned")

    def scores(folder: Path) -> pd.Series:
        d = pd.read_parquet(folder / "test.greedy.parquet").set_index("source_id")
        return pd.Series(reward.score(d["source"].tolist(), d["hypothesis"].tolist(), d["reference"].tolist()),
                         index=d.index)  # fmt: skip

    rest = scores(experiments / run / "evaluations" / "grow_1" / "improve_1")
    control = scores(experiments / run / "policies" / "control" / "eval")
    return rest - control.loc[rest.index]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--curve4-home", type=Path, required=True)
    ap.add_argument("--curve5-home", type=Path, required=True)
    args = ap.parse_args()
    c4 = _curve4()
    homes = {**{r: args.curve4_home for r in CURVE4}, **{r: args.curve5_home for r in CURVE5}}
    diffs = {run: c4.diff(home / "experiments", run) for run, home in homes.items()}
    result: dict = {"what": "ReST final minus the originals-only control, greedy test outputs, paired per sentence"}
    for run, d in diffs.items():
        result[run] = {col: c4.summary(d[col]) for col in d.columns}
    pooled = sum(diffs.values()) / len(diffs)
    result["pooled_four"] = {col: c4.summary(pooled[col]) for col in pooled.columns}
    seed2 = sum(diffs[r] for r in CURVE5) / len(CURVE5)
    result["pooled_seed2"] = {col: c4.summary(seed2[col]) for col in seed2.columns}
    result["criterion_met"] = (
        result["pooled_four"]["reward_learned"]["ci95"][0] > 0 and result["pooled_four"]["reward_chrf"]["ci95"][1] >= 0
    )
    result["secondary_met"] = all(result[r]["reward_learned"]["mean"] > 0 for r in CURVE5) and (
        result["pooled_seed2"]["reward_learned"]["ci95"][0] > 0
    )
    from rest_pipeline.core.store.experiment import ExperimentStore

    default_reward = ExperimentStore(args.curve4_home / "experiments" / "default").reward_model_dir
    cross = {r: cross_scored(args.curve5_home / "experiments", r, default_reward) for r in CURVE5}
    result["cross_check_seed1234_reward"] = {r: c4.summary(d) for r, d in cross.items()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
