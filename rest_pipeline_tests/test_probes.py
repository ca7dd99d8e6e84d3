"""Reward models under test: each damage family changes what it says and nothing else; a reward that is
deliberately blind to repetition is caught by the verdict, and the check on the BC policy's rewards warns,
or blocks the graph when the spec says so, in a real Dagster instance."""

import random
from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml

from rest_pipeline.core.rewards.probes import FAMILIES, make_probes, verdicts
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.records import SliceRecord
from rest_pipeline.core.store.side_records import RewardProbe
from rest_pipeline.orchestration.headless import materialize_experiment
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import load_spec
from rest_pipeline.spec.reward import PROBE_FAMILIES

ROOT = Path(__file__).resolve().parent.parent
RNG = random.Random(0)
OTHERS = ["A woman paints a colourful picture .", "Children play football outside ."]


def damage(family: str, hyp: str, src: str = "Ein Hund läuft .") -> str | None:
    return FAMILIES[family][0](src, hyp, random.Random(1), OTHERS)


def test_each_family_changes_what_it_says_and_nothing_else():
    assert tuple(FAMILIES) == PROBE_FAMILIES  # the spec offers exactly the families there are
    h = "The brown dog is running across the large meadow ."
    assert damage("repeat", h) == f"{h} {h}"
    assert damage("truncate", h) == "The brown dog is running"
    assert damage("copy_source", h) == "Ein Hund läuft ."
    assert damage("drop_word", h) == "The brown dog is across the large meadow ."  # 'running', the longest
    assert damage("change_number", "Three dogs and 12 cats .").startswith("Three dogs and ")
    assert damage("change_number", "Three dogs and 12 cats .") != "Three dogs and 12 cats ."
    assert damage("change_number", "two dogs sleep") == "five dogs sleep" and damage("change_number", h) is None
    swapped = damage("swap_entity", h).split()
    changed = [w for w, o in zip(swapped, h.split(), strict=True) if w != o]
    assert len(changed) == 1 and changed[0] in " ".join(OTHERS).split()
    assert damage("negate", h) == "The brown dog is not running across the large meadow ."
    assert damage("negate", "He does not sleep") == "He does sleep"
    assert damage("negate", "He didn't go") == "He did go" and damage("negate", "Dogs run fast") is None
    shuffled = damage("shuffle", h)
    assert shuffled != h and Counter(shuffled.split()) == Counter(h.split()) and damage("shuffle", "a a") is None
    assert damage("empty", h) == "" and damage("empty", "  ") is None
    extra = damage("hallucinate", "A dog runs.")
    assert extra.startswith("A dog runs, ") and extra.endswith(".") and len(extra) > len("A dog runs.") + 10


class RecallReward:
    """A reward blind to repetition: the share of reference words the hypothesis contains."""

    name, version, needs_reference, normalisation = "recall", "v1", True, "share of reference words"

    def score(self, sources, hypotheses, references):
        return np.array([len(set(h.split()) & set(r.split())) / max(len(set(r.split())), 1)
                         for h, r in zip(hypotheses, references, strict=True)])  # fmt: skip


def recall_reward() -> RecallReward:
    return RecallReward()


def test_a_reward_blind_to_repetition_is_caught_where_chrf_is_not():
    hyps = ["A man rides a red bicycle down the street .", "Two girls are playing in the park .",
            "An old woman sells bread at the market .", "The children are singing in the choir ."] * 5  # fmt: skip
    srcs = [f"quelle {i}" for i in range(len(hyps))]
    probes, skipped = make_probes(srcs, hyps, hyps, seed=3)
    assert skipped["change_number"] == 15 and skipped["repeat"] == 0  # only "Two girls ..." has a number
    found = {v.family: v for v in verdicts([RecallReward()], srcs, hyps, hyps, seed=3)}
    assert found["repeat"].prefer_or_tie["recall"] == 1.0 and found["repeat"].mean_drop["recall"] == 0.0
    assert found["repeat"].prefer_or_tie["chrf"] < 0.5 and found["repeat"].drop_interval["chrf"][0] > 0
    assert found["empty"].prefer_or_tie["recall"] == 0.0 and found["empty"].mean_drop["recall"] == pytest.approx(1.0)
    assert found["change_number"].applied == 5 and found["change_number"].prefer_or_tie["recall"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("block", [False, True])
def test_the_check_on_bc_rewards_warns_or_blocks_a_reward_blind_to_a_family(tmp_path, data_dir, block):
    raw = yaml.safe_load((ROOT / "rest_pipeline" / "specs" / "smoke.yaml").read_text())
    # The blind reward trains, named by import path: the spec, the store and the checks call it 'recall_reward'.
    raw["reward"] = {"model": "rest_pipeline_tests.test_probes:recall_reward", "extra": ["chrf"],
                     "probe": {"families": ["repeat"], "sentences": 20, "block": block}}  # fmt: skip
    path = tmp_path / "probed.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_spec(path)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        results = materialize_experiment(
            spec, instance, {"storage": RestStorage(home=str(tmp_path / "home"), data_dir=str(data_dir))},
            until=["grow_1/improve_1/policy"],  # the first step that needs BC's rewards
        )  # fmt: skip
        checks = {c.check_name: c for r in results for c in r.get_asset_check_evaluations()}
        verdict = checks["rewards_not_fooled"]
        assert not verdict.passed and "recall_reward: repeat" in verdict.metadata["failing"].text
        assert verdict.severity == (dg.AssetCheckSeverity.ERROR if block else dg.AssetCheckSeverity.WARN)
        step = instance.get_latest_materialization_event(dg.AssetKey(["probed", "grow_1", "improve_1", "policy"]))
        assert (step is None) == block  # a blocking check stops what follows; a warning does not
    store = ExperimentStore(tmp_path / "home" / "experiments" / "probed")
    record = store.get(RewardProbe, reward="recall_reward")
    assert record.failing == ["repeat"] and record.sentences == 20
    assert {r.family for r in record.rows} == set(FAMILIES)
    if not block:  # the step trained on a slice of the reward named by import path (its scores' column)
        kept = store.get(SliceRecord, grow=1, step=1)
        assert kept.reward == "recall_reward" and kept.kept > 0
