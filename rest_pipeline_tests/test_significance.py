"""Paired bootstrap: a real shift is significant, noise is not, misaligned evaluations are refused."""

import numpy as np
import pandas as pd
import pytest

from rest_pipeline.core.evaluation.significance import eval_deltas, paired_bleu_delta, paired_delta
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
        store.put(evals[name])
    a, b = store.get(Evaluation, policy="base"), store.get(Evaluation, policy="grow_1/improve_1")
    assert (a, b) == (evals["base"], evals["grow_1/improve_1"])
    (row,) = eval_deltas(store, a, b, ["valid"], ["reward_x"])
    assert row["delta"] == pytest.approx(0.2) and row["significant"] and row["ci95"] == "[+0.2000, +0.2000]"


def bleu_frame(hypotheses: list[str], references: list[str]) -> pd.DataFrame:
    ids = [f"s{i}" for i in range(len(hypotheses))]
    return pd.DataFrame({"source_id": ids, "hypothesis": hypotheses, "reference": references})


def test_bleu_delta_is_the_corpus_score_difference_with_an_interval():
    from sacrebleu.metrics import BLEU

    rng = np.random.default_rng(0)
    words = "a man in a red shirt rides a bike down the street while two dogs run beside him".split()
    refs = [" ".join(rng.choice(words, size=12)) for _ in range(300)]
    # b keeps most of each reference; a drops more words: b's corpus BLEU is clearly higher
    a_hyp = [" ".join(r.split()[:6]) for r in refs]
    b_hyp = [" ".join(r.split()[:10]) for r in refs]
    d = paired_bleu_delta(bleu_frame(a_hyp, refs), bleu_frame(b_hyp, refs))
    expected = BLEU().corpus_score(b_hyp, [refs]).score - BLEU().corpus_score(a_hyp, [refs]).score
    assert d.delta == pytest.approx(expected, abs=1e-4) and d.significant and d.low > 0
    # Identical systems: zero, and an interval that is exactly zero.
    same = paired_bleu_delta(bleu_frame(a_hyp, refs), bleu_frame(a_hyp, refs))
    assert (same.delta, same.low, same.high) == (0.0, 0.0, 0.0)

    # Two systems drawn alike (each drops words at random at the same rate): no significant difference.
    def drop(r: str) -> str:
        return " ".join(w for w in r.split() if rng.random() > 0.3)

    noise = paired_bleu_delta(bleu_frame([drop(r) for r in refs], refs), bleu_frame([drop(r) for r in refs], refs))
    assert noise.low < 0 < noise.high


def test_bleu_delta_refuses_different_references():
    with pytest.raises(ValueError, match="references differ"):
        paired_bleu_delta(bleu_frame(["a b"], ["a b"]), bleu_frame(["a b"], ["c d"]))
    with pytest.raises(KeyError, match="hypothesis"):
        paired_bleu_delta(frame([0.1]), frame([0.2]))
