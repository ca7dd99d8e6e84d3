"""The report's verdicts on the paper's findings: each must say no when the numbers do not support it."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from rest_pipeline.core.evaluation.best_of_k import expected_best_of_k, grow_sample_curves
from rest_pipeline.core.report import findings
from rest_pipeline.core.store.records import BestOfN, BestOfNCurve


def _rows(valid: list[float], statuses: list[str], bleu: tuple[float, float], steps_per_grow: int = 99) -> list[dict]:
    rows = [{"checkpoint": "BC", "status": "base", "valid_learned": valid[0], "test_bleu": bleu[0]}]
    for n, (v, st) in enumerate(zip(valid[1:], statuses, strict=True)):
        name = f"G={n // steps_per_grow + 1} I={n % steps_per_grow + 1}"
        rows.append({"checkpoint": name, "status": st, "valid_learned": v, "test_bleu": bleu[1]})
    return rows


def _sig(
    against: str, valid: tuple[float, bool], test: tuple[float, bool], metric: str = "reward_learned"
) -> list[dict]:
    return [
        {"final minus": against, "split": split, "metric": metric, "delta": d, "ci95": "[]", "significant": s}
        for split, (d, s) in (("valid", valid), ("test", test))
    ]


def _bon(reaches: bool) -> BestOfN:
    return BestOfN(
        key="k",
        reward="learned",
        sources=10,
        ns=[1, 2],
        curves={
            "bc": BestOfNCurve(checkpoint="policies/base", curve={1: 0.5, 2: 0.6}),
            "rest": BestOfNCurve(checkpoint="policies/grow_1/improve_1/training/best", curve={1: 0.55, 2: 0.62}),
        },
        matching=[],
        rest_small_n_reaches_bc_larger_n=reaches,
    )


def _verdicts(rows, sig, bon) -> dict[str, bool]:
    return {f.finding: f.holds for f in findings(rows, sig, bon, "learned", independent="chrf")}


CONTROL = "ReST's samples add to training longer: the final policy beats the originals-only control on test"
RISES = "valid reward rises with successive Improve steps"
ADDS = "the last grow adds to grow 1"
BEATS = "the final policy beats BC on test reward, test BLEU within 1 point"
BON = "Best-of-N: ReST at a small N reaches BC at a larger N"


def test_all_findings_hold_on_supporting_numbers() -> None:
    rows = _rows([0.57, 0.58, 0.59, 0.59], ["improved", "improved", "not_improved"], (34.0, 33.5))
    sig = _sig("BC", (0.01, True), (0.01, True)) + _sig("grow 1", (0.002, False), (0.006, True))
    sig += _sig("control", (0.004, False), (0.006, True)) + _sig("control", (0.0, False), (-0.001, False), "bleu")
    sig += _sig("control", (0.001, False), (0.002, False), "reward_chrf")
    verdicts = _verdicts(rows, sig, _bon(True))
    assert verdicts == {CONTROL: True, RISES: True, ADDS: True, BEATS: True, BON: True}
    assert list(verdicts)[0] == CONTROL  # ReST against the control comes first


def test_beating_the_control_needs_the_independent_reward_and_bleu_to_hold_too() -> None:
    rows = _rows([0.57, 0.58, 0.59], ["improved", "improved"], (34.0, 34.0))
    base = _sig("BC", (0.01, True), (0.01, True))
    learned = _sig("control", (0.004, False), (0.006, True))
    chrf_ok = _sig("control", (0.0, False), (0.001, False), "reward_chrf")
    assert _verdicts(rows, base + learned + chrf_ok, _bon(True))[CONTROL]
    # the training reward alone sees the gain: the independent reward falls with an interval below zero
    chrf_falls = _sig("control", (0.0, False), (-0.004, True), "reward_chrf")
    assert not _verdicts(rows, base + learned + chrf_falls, _bon(True))[CONTROL]
    # test BLEU more than half a point below the control's
    bleu_falls = _sig("control", (0.0, False), (-0.6, True), "bleu")
    assert not _verdicts(rows, base + learned + chrf_ok + bleu_falls, _bon(True))[CONTROL]
    # a test gain within noise, or no control at all
    noise = _sig("control", (0.004, True), (0.003, False))
    assert not _verdicts(rows, base + noise + chrf_ok, _bon(True))[CONTROL]
    (none,) = [f for f in findings(rows, base, _bon(True), "learned") if f.finding == CONTROL]
    assert not none.holds and "no control ran" in none.evidence


def test_a_fall_on_full_valid_or_a_single_trained_step_is_no_rise() -> None:
    sig = _sig("BC", (0.01, True), (0.01, True))
    fell = _rows([0.57, 0.58, 0.575], ["improved", "improved"], (34.0, 34.0))
    one_step = _rows([0.57, 0.58, 0.58], ["improved", "not_improved"], (34.0, 34.0))
    assert not _verdicts(fell, sig, _bon(True))[RISES]
    assert not _verdicts(one_step, sig, _bon(True))[RISES]


def test_a_rise_is_judged_across_grows_of_one_step_each() -> None:
    sig = _sig("BC", (0.01, True), (0.01, True))
    rose = _rows([0.57, 0.58, 0.59, 0.585], ["improved", "improved", "not_improved"], (34.0, 34.0), steps_per_grow=1)
    (checked,) = [f for f in findings(rose, sig, _bon(True), "learned") if f.finding == RISES]
    assert checked.holds and checked.evidence.startswith("BC 0.5700 -> G=1 I=1 0.5800 -> G=2 I=1 0.5900")
    assert "(2 of 3 steps beat their parent)" in checked.evidence
    skipped = _rows([0.57, 0.58, 0.58], ["improved", "skipped"], (34.0, 34.0), steps_per_grow=1)
    (checked,) = [f for f in findings(skipped, sig, _bon(True), "learned") if f.finding == RISES]
    assert not checked.holds and "(1 of 1 steps beat their parent; fewer than two trained steps)" in checked.evidence


def test_gains_need_an_interval_above_zero_and_no_split_below() -> None:
    rows = _rows([0.57, 0.58, 0.59], ["improved", "improved"], (34.0, 34.0))
    noise = _sig("BC", (0.01, True), (0.01, True)) + _sig("grow 1", (0.003, False), (0.004, False))
    mixed = _sig("BC", (0.01, True), (0.01, True)) + _sig("grow 1", (-0.0001, False), (0.006, True))
    assert not _verdicts(rows, noise, _bon(False))[ADDS]
    assert not _verdicts(rows, mixed, _bon(False))[ADDS]
    assert not _verdicts(rows, mixed, _bon(False))[BON]


def test_beating_bc_fails_on_a_large_bleu_drop_or_a_test_gain_within_noise() -> None:
    sig = _sig("BC", (0.01, True), (0.01, True))
    dropped = _rows([0.57, 0.58, 0.59], ["improved", "improved"], (34.0, 32.9))
    assert not _verdicts(dropped, sig, _bon(True))[BEATS]
    rows = _rows([0.57, 0.58, 0.59], ["improved", "improved"], (34.0, 34.0))
    test_noise = _sig("BC", (0.01, True), (0.004, False))
    assert not _verdicts(rows, test_noise, _bon(True))[BEATS]


def test_expected_best_of_k_equals_the_mean_over_every_subset() -> None:
    x = np.random.default_rng(0).random(9)
    for k in range(1, 10):
        brute = np.mean([max(c) for c in itertools.combinations(x, k)])
        assert expected_best_of_k(x, k) == pytest.approx(brute, abs=1e-12)
    assert expected_best_of_k(x, 1) == pytest.approx(x.mean()) and expected_best_of_k(x, 9) == x.max()
    with pytest.raises(ValueError, match="k=10"):
        expected_best_of_k(x, 10)
    big = np.random.default_rng(1).random(3000)  # 1 / C(3000, 256) underflows a float; the weights must not
    assert big.mean() < expected_best_of_k(big, 256) < big.max() == expected_best_of_k(big, 3000)
    assert expected_best_of_k(big, 256) == pytest.approx(1 - 1 / 257, abs=2e-3)  # uniform: E[max of k] = k/(k+1)


def test_grow_sample_curves_place_a_sharper_grow_on_grow_1s_best_of_k() -> None:
    # Grow 1: each source's 6 samples are 0..5 (k=1: 2.5, k=2: 3.67, k=4: 4.6, k=6: 5). Grow 2 drew
    # 4, 4, 5, 5, 5, 5: one sample (4.67) is between grow 1's best of 4 and best of 6; originals are not samples.
    rows = [(1, s, "sample", float(v)) for s in "ab" for v in range(6)]
    rows += [(2, s, "sample", float(v)) for s in "cd" for v in (4, 4, 5, 5, 5, 5)]
    rows += [(1, "a", "reference", 9.0)]
    table = pd.DataFrame(rows, columns=["grow", "source_id", "origin", "r"])
    g1, g2 = grow_sample_curves(table, "r")
    assert (g1["sources"], g1["N"], g1["at_grow1_k"]) == (2, 6, 1)
    assert list(g1) == ["grow", "sources", "N", "best_of_1", "best_of_2", "best_of_4", "best_of_6", "at_grow1_k"]
    assert g1["best_of_1"] == 2.5 and g1["best_of_6"] == 5.0
    assert g2["best_of_1"] == pytest.approx(4.6667, abs=1e-4)
    assert g1["best_of_4"] == 4.6 and 4 < g2["at_grow1_k"] < 6


def test_reward_agreement_scores_the_training_rewards_pick_by_the_independent_reward() -> None:
    from rest_pipeline.core.evaluation.best_of_k import reward_agreement

    # source a: the two rewards agree (tau 1); source b: they disagree (tau -1), the learned pick is chrF's worst
    rows = [(1, "a", "sample", r, c) for r, c in ((0.1, 0.2), (0.5, 0.4), (0.9, 0.8))]
    rows += [(1, "b", "sample", r, c) for r, c in ((0.1, 0.9), (0.5, 0.5), (0.9, 0.1))]
    rows += [(1, "a", "reference", 0.0, 1.0)]  # originals are not samples
    table = pd.DataFrame(rows, columns=["grow", "source_id", "origin", "learned", "chrf"])
    (row,) = reward_agreement(table, "learned", "chrf")
    assert row["sources"] == 2 and row["kendall_tau_learned_vs_chrf"] == pytest.approx(0.0)
    assert row["chrf_of_learned_top1"] == pytest.approx((0.8 + 0.1) / 2)
    assert row["chrf_one_sample"] == pytest.approx(((0.2 + 0.4 + 0.8) / 3 + 0.5) / 2, abs=1e-4)
    assert row["chrf_own_top1"] == pytest.approx((0.8 + 0.9) / 2)
