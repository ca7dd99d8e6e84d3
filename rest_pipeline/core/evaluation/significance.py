"""Is a reward gain more than noise? Paired bootstrap over the sentences two policies both translated.

Checkpoints of one run differ by a few thousandths of mean reward; a confidence interval on the
per-sentence difference says which of those differences a reader may believe. BLEU is a corpus score,
not a mean over sentences, so its interval resamples sentences and recomputes both corpus scores from
sacrebleu's per-sentence statistics (as sacrebleu's own paired bootstrap does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sacrebleu.metrics import BLEU

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


def _bootstrap_interval(means: np.ndarray, diff: float, metric: str, sentences: int) -> PairedDelta:
    low, high = np.percentile(means, [2.5, 97.5])
    return PairedDelta(metric, sentences, round(float(diff), 5), round(float(low), 5), round(float(high), 5))


def _aligned(a: pd.DataFrame, b: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    missing = [c for c in columns if c not in a.columns or c not in b.columns]
    if missing:
        raise KeyError(f"column(s) {missing} missing from one of the evaluations")
    joined = a[["source_id", *columns]].merge(b[["source_id", *columns]], on="source_id", suffixes=("_a", "_b"))
    if len(joined) != len(a) or len(joined) != len(b):
        raise ValueError(f"the evaluations cover different sentences ({len(a)} vs {len(b)}, {len(joined)} shared)")
    return joined


def paired_delta(a: pd.DataFrame, b: pd.DataFrame, metric: str, resamples: int = 2000, seed: int = 0) -> PairedDelta:
    """b minus a on `metric`, paired by source_id; both frames must cover the same sentences."""
    joined = _aligned(a, b, [metric])
    diff = (joined[f"{metric}_b"] - joined[f"{metric}_a"]).to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    return _bootstrap_interval(means, diff.mean(), metric, len(diff))


def paired_bleu_delta(a: pd.DataFrame, b: pd.DataFrame, resamples: int = 2000, seed: int = 0) -> PairedDelta:
    """Corpus BLEU of b minus a (sacrebleu's default BLEU), paired by source_id, with a 95 % interval
    from resampling sentences; both frames need `hypothesis` and `reference` columns."""
    joined = _aligned(a, b, ["hypothesis", "reference"])
    if (joined["reference_a"] != joined["reference_b"]).any():
        raise ValueError("the evaluations' references differ for the same source_id")
    refs = [joined["reference_a"].tolist()]
    bleu = BLEU()
    # sacrebleu keeps no public API for per-sentence statistics; its significance module uses these two.
    stats_a = np.asarray(bleu._extract_corpus_statistics(joined["hypothesis_a"].tolist(), refs), dtype=float)
    stats_b = np.asarray(bleu._extract_corpus_statistics(joined["hypothesis_b"].tolist(), refs), dtype=float)

    def score(stats: np.ndarray) -> float:
        return bleu._compute_score_from_stats(stats.tolist()).score

    n = len(joined)
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, n, size=n), minlength=n) for _ in range(resamples)])
    sums_a, sums_b = counts @ stats_a, counts @ stats_b  # per resample: the corpus statistics
    diffs = np.array([score(sb) - score(sa) for sa, sb in zip(sums_a, sums_b, strict=True)])
    return _bootstrap_interval(diffs, score(stats_b.sum(0)) - score(stats_a.sum(0)), "bleu", n)


def eval_deltas(
    store: ExperimentStore,
    a_eval: Evaluation,
    b_eval: Evaluation,
    splits: list[str],
    metrics: list[str],
    b_store: ExperimentStore | None = None,
) -> list[dict]:
    """One row per (split, metric): b - a with its interval, from two evaluations' per-sentence outputs
    (b may come from another experiment's store). A metric is a per-sentence column (e.g. reward_learned)
    or "bleu", the corpus score."""
    rows = []
    for split in splits:
        a = pd.read_parquet(store.resolve(a_eval.splits[split].hypotheses))
        b = pd.read_parquet((b_store or store).resolve(b_eval.splits[split].hypotheses))
        for m in metrics:
            d = paired_bleu_delta(a, b) if m == "bleu" else paired_delta(a, b, m)
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
