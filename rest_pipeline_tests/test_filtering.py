"""Improve's filter over a real candidate store: thresholds, percentiles, interpolation, mixing
the originals back in, empty slices and the paper's 'first threshold above the mean'."""

import json

import numpy as np
import pytest

from rest_pipeline.core.improve.filtering import FilterError, build_slice, read_grow, select
from rest_pipeline.core.rewards.scoring import score_candidates
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.records import SliceRecord

# Per source: four samples and the reference, each hypothesis spelling its own reward.
REWARDS = {
    "s0": ([0.1, 0.5, 0.8, 0.9], 0.95),
    "s1": ([0.2, 0.3, 0.4, 0.6], 0.7),
    "s2": ([0.0, 0.0, 0.05, 0.1], 0.2),
}


class SpelledReward:
    """A user-defined scorer: the reward is written in the hypothesis ('h0.8' -> 0.8)."""

    name = "spelled"
    version = "v1"
    needs_reference = False
    normalisation = "identity"

    def score(self, sources, hypotheses, references):
        return np.array([float(h.split(":")[1]) for h in hypotheses])


def scored_grow(store: ExperimentStore, references: dict[str, str], samples: dict[str, list[str]]) -> ExperimentStore:
    """Grow 1 of `store`: one shard of these sources, scored by SpelledReward."""
    ids = list(references)
    store.write_candidates(
        experiment="t",
        grow=1,
        shard=0,
        source_ids=ids,
        sources=[f"src {i}" for i in ids],
        references=[references[i] for i in ids],
        samples=[samples[i] for i in ids],
        policy="p",
        decoding="d",
    )
    score_candidates(store, SpelledReward(), 1, 0)
    return store


@pytest.fixture
def store(tmp_path) -> ExperimentStore:
    return scored_grow(
        ExperimentStore(tmp_path / "exp"),
        {i: f"{i} ref:{ref}" for i, (_, ref) in REWARDS.items()},
        {i: [f"{i} h{k}:{r}" for k, r in enumerate(rs)] for i, (rs, _) in REWARDS.items()},
    )


def kept(rows) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for sid, r in zip(rows.source_id, rows.reward, strict=True):
        out.setdefault(sid, []).append(round(r, 3))
    return {k: sorted(v) for k, v in out.items()}


def test_global_threshold_keeps_rewards_at_or_above_tau(store):
    rows = select(read_grow(store, 1, "spelled"), "threshold", 0.5, mix_originals=False).df()
    assert kept(rows) == {"s0": [0.5, 0.8, 0.9, 0.95], "s1": [0.6, 0.7]}
    assert set(rows.kept_by) == {"filter"}


def test_mixing_originals_adds_every_reference_whatever_its_reward(store):
    rows = select(read_grow(store, 1, "spelled"), "threshold", 0.5, mix_originals=True).df()
    assert kept(rows) == {"s0": [0.5, 0.8, 0.9, 0.95], "s1": [0.6, 0.7], "s2": [0.2]}
    assert rows[rows.source_id == "s2"].kept_by.tolist() == ["original"]
    # A reference that clears the bar is counted as kept by the filter, not twice.
    assert len(rows) == 7


def test_per_source_percentile(store):
    rows = select(read_grow(store, 1, "spelled"), "percentile", 50, mix_originals=False).df()
    assert kept(rows) == {"s0": [0.8, 0.9, 0.95], "s1": [0.4, 0.6, 0.7], "s2": [0.05, 0.1, 0.2]}


def test_per_source_interpolated_bar(store):
    # tau_s = 0.5 * max + 0.5 * mean over the samples: s0 0.7375, s1 0.4875, s2 0.06875
    rows = select(read_grow(store, 1, "spelled"), "interpolated", 0.5, mix_originals=False).df()
    assert kept(rows) == {"s0": [0.8, 0.9, 0.95], "s1": [0.6, 0.7], "s2": [0.1, 0.2]}
    everything = select(read_grow(store, 1, "spelled"), "interpolated", 0.0, mix_originals=False).df()
    assert all(min(v) >= 0 for v in kept(everything).values())


def test_per_source_bars_come_from_the_samples_not_the_reference(store):
    # p = 100 keeps each source's best sample; the reference (above every sample here) must not
    # raise the bar past it, or a per-source filter keeps references only.
    rows = select(read_grow(store, 1, "spelled"), "percentile", 100, mix_originals=True).df()
    best = rows[rows.origin == "sample"]
    assert kept(best) == {"s0": [0.9], "s1": [0.6], "s2": [0.1]}
    assert set(rows[rows.origin == "reference"].kept_by) == {"filter"}  # references clear their source's bar
    top = select(read_grow(store, 1, "spelled"), "interpolated", 1.0, mix_originals=False).df()
    assert kept(top[top.origin == "sample"]) == kept(best)


def test_dedupe_keeps_one_row_per_distinct_output(tmp_path):
    store = scored_grow(
        ExperimentStore(tmp_path / "exp"), {"a": "a h:0.9"}, {"a": ["a h:0.9", "a h:0.9", "a g:0.8", "a k:0.1"]}
    )
    plain = select(read_grow(store, 1, "spelled"), "threshold", 0.5, mix_originals=True).df()
    assert sorted(plain.hypothesis) == ["a g:0.8", "a h:0.9", "a h:0.9", "a h:0.9"]
    rows = select(read_grow(store, 1, "spelled"), "threshold", 0.5, mix_originals=True, dedupe=True).df()
    assert sorted(zip(rows.hypothesis, rows.origin, strict=True)) == [("a g:0.8", "sample"), ("a h:0.9", "reference")]
    stats = build_slice(store, 1, 1, "spelled", "threshold", 0.5, mix_originals=True, dedupe=True)
    assert (stats.kept, stats.kept_samples, stats.kept_originals) == (2, 1, 1)


def test_slice_is_persisted_with_its_statistics(store):
    stats = build_slice(store, 1, 2, "spelled", "threshold", 0.5, mix_originals=True)
    assert (stats.kept, stats.kept_samples, stats.kept_originals) == (7, 4, 3)
    assert stats.kept_fraction == pytest.approx(4 / 12, abs=1e-5)
    assert stats.sources == 3 and stats.sources_covered == 2
    assert stats.mean_reward == pytest.approx(np.mean([r for s, ref in REWARDS.values() for r in [*s, ref]]), abs=1e-4)
    assert stats.skip_reason is None
    again, rows = store.get(SliceRecord, grow=1, step=2), store.slice_rows(1, 2)
    assert again == stats and len(rows) == 7
    assert json.loads((store.slice_dir(1, 2) / "slice.json").read_text())["kept"] == 7
    assert stats.path == "store/slices/grow=1/improve=2/part.parquet"  # relative to the experiment folder


def test_empty_slice_is_a_skip_not_a_crash(store):
    stats = build_slice(store, 1, 1, "spelled", "threshold", 0.99, mix_originals=True)
    assert stats.kept == 0 and stats.skip_reason.startswith("empty slice")
    assert len(store.slice_rows(1, 1)) == 0


def test_a_bar_only_references_clear_is_an_empty_slice(store):
    # 0.92: no sample clears it, the reference of s0 (0.95) does; training on it alone is the control.
    stats = build_slice(store, 1, 1, "spelled", "threshold", 0.92, mix_originals=True)
    assert stats.kept == 0 and stats.skip_reason.startswith("empty slice: no sample")


def test_threshold_not_above_the_mean_is_skipped_when_asked(store):
    mean = np.mean([r for s, ref in REWARDS.values() for r in [*s, ref]])  # 0.387
    stats = build_slice(store, 1, 1, "spelled", "threshold", 0.3, require_above_mean=True)
    assert stats.skip_reason and "not above the mean" in stats.skip_reason and f"{mean:.3f}" in stats.skip_reason
    assert build_slice(store, 1, 1, "spelled", "threshold", 0.5, require_above_mean=True).skip_reason is None


def test_missing_scores_name_the_reward_and_grow(store):
    with pytest.raises(FilterError, match="no 'chrf' scores.*grow_1/rewards"):
        read_grow(store, 1, "chrf")
    with pytest.raises(FilterError, match="grow 2 has no candidates"):
        read_grow(store, 2, "spelled")


class ConstantReward:
    name, version, needs_reference, normalisation = "const", "v1", False, "identity"

    def score(self, sources, hypotheses, references):
        return np.full(len(hypotheses), 0.5)


def test_each_slice_counts_the_kept_samples_that_look_damaged(tmp_path):
    """The cheap detectors (repetition, a copy of the source, truncation, empty) against a hand count."""
    store = ExperimentStore(tmp_path / "exp")
    samples = {
        "a": ["the dog runs fast", "the dog runs fast the dog runs fast", "der Hund rennt schnell", ""],
        "b": ["a cat", "a cat sleeps on the warm sofa", "a cat sleeps on the warm sofa a cat", "  "],
    }
    sources = {"a": "der Hund rennt schnell", "b": "eine Katze schläft auf dem warmen Sofa"}
    store.write_candidates(
        experiment="t", grow=1, shard=0, source_ids=list(samples), sources=[sources[k] for k in samples],
        references=["ref a", "ref b"], samples=list(samples.values()), policy="p", decoding="d",
    )  # fmt: skip
    score_candidates(store, ConstantReward(), 1, 0)
    stats = build_slice(store, 1, 1, "const", "threshold", 0.0, mix_originals=True)
    # repeat: a's second sample (b's third repeats only part of itself); copy: a's third; empty: a's fourth and
    # b's fourth; truncated (under half the source's characters, not empty): b's first ("a cat").
    assert stats.detected == {"repeat": 1, "copy_source": 1, "truncated": 1, "empty": 2}
    assert store.get(SliceRecord, grow=1, step=1).detected == stats.detected
