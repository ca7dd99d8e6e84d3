"""Paired bootstrap: a real shift is significant, noise is not, misaligned evaluations are refused."""

import numpy as np
import pandas as pd
import pytest

from rest_pipeline.core.evaluation.significance import eval_deltas, paired_delta


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


def test_eval_deltas_reads_two_evaluation_folders(tmp_path):
    for name, values in {"a": [0.1, 0.2, 0.3, 0.4], "b": [0.3, 0.4, 0.5, 0.6]}.items():
        (tmp_path / name).mkdir()
        frame(values).to_parquet(tmp_path / name / "valid.greedy.parquet")
    (row,) = eval_deltas(tmp_path / "a", tmp_path / "b", ["valid"], ["reward_x"])
    assert row["delta"] == pytest.approx(0.2) and row["significant"] and row["ci95"] == "[+0.2000, +0.2000]"
