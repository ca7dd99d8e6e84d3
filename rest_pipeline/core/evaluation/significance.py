"""Is a reward gain more than noise? Paired bootstrap over the sentences two policies both translated.

Checkpoints of one run differ by a few thousandths of mean reward; a confidence interval on the
per-sentence difference says which of those differences a reader may believe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.records import Evaluation


@dataclass(frozen=True)
class PairedDelta:
    metric: str
    sentences: int
    delta: float  # mean of (b - a) over sentences
    low: float  # 95 % paired-bootstrap interval of the delta
    high: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_delta(a: pd.DataFrame, b: pd.DataFrame, metric: str, resamples: int = 2000, seed: int = 0) -> PairedDelta:
    """b minus a on `metric`, paired by source_id; both frames must cover the same sentences."""
    if metric not in a.columns or metric not in b.columns:
        raise KeyError(f"column '{metric}' missing from one of the evaluations")
    joined = a[["source_id", metric]].merge(b[["source_id", metric]], on="source_id", suffixes=("_a", "_b"))
    if len(joined) != len(a) or len(joined) != len(b):
        raise ValueError(f"the evaluations cover different sentences ({len(a)} vs {len(b)}, {len(joined)} shared)")
    diff = (joined[f"{metric}_b"] - joined[f"{metric}_a"]).to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return PairedDelta(metric, len(diff), round(float(diff.mean()), 5), round(float(low), 5), round(float(high), 5))


def eval_deltas(
    store: ExperimentStore,
    a_eval: Evaluation,
    b_eval: Evaluation,
    splits: list[str],
    metrics: list[str],
    b_store: ExperimentStore | None = None,
) -> list[dict]:
    """One row per (split, metric): b - a with its interval, from two evaluations' per-sentence outputs
    (b may come from another experiment's store)."""
    rows = []
    for split in splits:
        a = pd.read_parquet(store.resolve(a_eval.splits[split].hypotheses))
        b = pd.read_parquet((b_store or store).resolve(b_eval.splits[split].hypotheses))
        for m in metrics:
            d = paired_delta(a, b, m)
            rows.append(
                {
                    "split": split,
                    "metric": m,
                    "delta": d.delta,
                    "ci95": f"[{d.low:+.4f}, {d.high:+.4f}]",
                    "significant": d.significant,
                }
            )
    return rows
