"""Paired bootstrap: a real shift is significant, noise is not, misaligned evaluations are refused."""

import numpy as np
import pandas as pd
import pytest

from rest_pipeline.core.evaluation.significance import eval_deltas, paired_delta
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.records import Evaluation, SplitScores
from rest_pipeline.spec import DecodingSpec


def frame(values) -> pd.DataFrame:
    return pd.DataFrame({"source_id": [f"s{i}" for i in range(len(values))], "reward_x": values})


def test_shift_is_significant_and_noise_is_not(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 500)
    shifted = paired_delta(frame(base), frame(base + 0.02 + rng.normal(0, 0.05, 500)), "reward_x")
    assert shifted.significant and shifted.low > 0 and shifted.delta == pytest.approx(0.02, abs=0.01)
    noise = paired_delta(frame(base), frame(base + rng.normal(0, 0.05, 500)), "reward_x")
    assert not noise.significant and noise.low < noise.delta < noise.high
    # Pairing is by source id, not by row order.
    reordered = frame(base + 0.02).sample(frac=1.0, random_state=3)
    assert paired_delta(frame(base), reordered, "reward_x").delta == pytest.approx(0.02)


def test_misaligned_evaluations_are_refused(tmp_path):
    with pytest.raises(ValueError, match="different sentences"):
        paired_delta(frame([0.1, 0.2, 0.3]), frame([0.1, 0.2]), "reward_x")
    with pytest.raises(KeyError, match="reward_y"):
        paired_delta(frame([0.1]), frame([0.2]), "reward_y")


def test_eval_deltas_reads_two_stored_evaluations(tmp_path):
    store = ExperimentStore(tmp_path / "exp")
    evals = {}
    for name, values in {"base": [0.1, 0.2, 0.3, 0.4], "grow_1/improve_1": [0.3, 0.4, 0.5, 0.6]}.items():
        path = store.eval_dir(name) / "valid.greedy.parquet"
        path.parent.mkdir(parents=True)
        frame(values).to_parquet(path)
        scores = SplitScores(
            sentences=4,
            bleu=0.0,
            chrf=0.0,
            rewards={"x": float(np.mean(values))},
            distinct_1=1.0,
            distinct_2=1.0,
            mean_length=1.0,
            hypotheses=store.rel(path),
        )
        evals[name] = Evaluation(
            key="k", policy=name, checkpoint="c", decoding=DecodingSpec(name="greedy"), splits={"valid": scores}
        )
        store.write_evaluation(evals[name])
    a, b = store.evaluation("base"), store.evaluation("grow_1/improve_1")
    assert (a, b) == (evals["base"], evals["grow_1/improve_1"])
    (row,) = eval_deltas(store, a, b, ["valid"], ["reward_x"])
    assert row["delta"] == pytest.approx(0.2) and row["significant"] and row["ci95"] == "[+0.2000, +0.2000]"
