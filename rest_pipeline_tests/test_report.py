"""The report's verdicts on the paper's findings: each must say no when the numbers do not support it."""

from __future__ import annotations

from rest_pipeline.core.report import findings
from rest_pipeline.core.store.records import BestOfN, BestOfNCurve


def _rows(valid: list[float], statuses: list[str], bleu: tuple[float, float]) -> list[dict]:
    rows = [{"checkpoint": "BC", "status": "base", "valid_learned": valid[0], "test_bleu": bleu[0]}]
    for i, (v, st) in enumerate(zip(valid[1:], statuses, strict=True), start=1):
        rows.append({"checkpoint": f"G=1 I={i}", "status": st, "valid_learned": v, "test_bleu": bleu[1]})
    return rows


def _sig(against: str, valid: tuple[float, bool], test: tuple[float, bool]) -> list[dict]:
    return [
        {"final minus": against, "split": split, "metric": "reward_learned", "delta": d, "ci95": "[]", "significant": s}
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
    return {f.finding: f.holds for f in findings(rows, sig, bon, "learned")}


RISES = "valid reward rises with the Improve steps of grow 1"
ADDS = "the last grow adds to grow 1"
BEATS = "the final policy beats BC on test reward, test BLEU within 1 point"
BON = "Best-of-N: ReST at a small N reaches BC at a larger N"


def test_all_findings_hold_on_supporting_numbers() -> None:
    rows = _rows([0.57, 0.58, 0.59, 0.59], ["improved", "improved", "not_improved"], (34.0, 33.5))
    sig = _sig("BC", (0.01, True), (0.01, True)) + _sig("grow 1", (0.002, False), (0.006, True))
    assert _verdicts(rows, sig, _bon(True)) == {RISES: True, ADDS: True, BEATS: True, BON: True}


def test_a_fall_on_full_valid_or_a_single_trained_step_is_no_rise() -> None:
    sig = _sig("BC", (0.01, True), (0.01, True))
    fell = _rows([0.57, 0.58, 0.575], ["improved", "improved"], (34.0, 34.0))
    one_step = _rows([0.57, 0.58, 0.58], ["improved", "not_improved"], (34.0, 34.0))
    assert not _verdicts(fell, sig, _bon(True))[RISES]
    assert not _verdicts(one_step, sig, _bon(True))[RISES]


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
