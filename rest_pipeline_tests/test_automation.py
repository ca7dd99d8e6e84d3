"""Round automation decisions: the next scheduled Grow starts only after the previous grow finished
and passed its reward-hacking check; otherwise the schedule says why it skips."""

import dagster as dg

from rest_pipeline.core.improve.assess import hacking_verdict
from rest_pipeline.core.store.experiment import policy_name
from rest_pipeline.core.store.records import Evaluation, SplitScores
from rest_pipeline.orchestration.automation import grow_condition, next_grow, round_schedule, step_condition
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import DecodingSpec, find_spec, load_spec


def summary(reward: float, bleu: float, chrf: float, policy: str = "base") -> Evaluation:
    scores = SplitScores(
        sentences=10,
        bleu=bleu,
        chrf=50.0,
        rewards={"learned": reward, "chrf": chrf},
        distinct_1=0.5,
        distinct_2=0.7,
        mean_length=9.0,
        hypotheses="x.parquet",
    )
    return Evaluation(
        key="k", policy=policy, checkpoint="c", decoding=DecodingSpec(name="greedy"), splits={"test": scores}
    )


def write(store, grow, step, data: Evaluation) -> None:
    store.put(data.model_copy(update={"policy": policy_name(grow, step)}))


def test_reward_hacking_verdict_needs_all_three_signals():
    spec = load_spec(find_spec("smoke"))
    base = summary(0.50, 30.0, 0.50)
    assert not hacking_verdict(spec, summary(0.60, 27.0, 0.45), base, "learned", "chrf").passed
    assert hacking_verdict(spec, summary(0.60, 29.5, 0.45), base, "learned", "chrf").passed  # BLEU within 1
    assert hacking_verdict(spec, summary(0.60, 27.0, 0.50), base, "learned", "chrf").passed  # chrF held
    assert hacking_verdict(spec, summary(0.45, 27.0, 0.45), base, "learned", "chrf").passed  # reward fell too


def test_schedule_starts_next_grow_only_after_a_clean_previous_grow(tmp_path):
    spec = load_spec(find_spec("smoke"))
    spec = spec.model_copy(update={"automation": spec.automation.model_copy(update={"rounds": "schedule"})})
    storage = RestStorage(home=str(tmp_path))
    layout = storage.store(spec)
    grow, why = next_grow(spec, storage)
    assert grow is None and "grow 1 has not finished" in why
    write(layout, 1, 1, summary(0.50, 30.0, 0.50))
    write(layout, 1, 2, summary(0.60, 25.0, 0.40))  # reward up, BLEU and chrF down: hacked
    grow, why = next_grow(spec, storage)
    assert grow is None and "failed the reward-hacking check" in why
    write(layout, 1, 2, summary(0.55, 30.5, 0.52))
    assert next_grow(spec, storage) == (2, "grow 1 finished and passed its checks")
    # In schedule mode later grows wait for the tick; Improve steps stay eager; manual turns all off.
    assert grow_condition(spec, 2) is None and step_condition(spec) is not None
    schedule = round_schedule(spec)
    assert isinstance(schedule, dg.ScheduleDefinition) and schedule.cron_schedule == spec.automation.cron
    manual = spec.model_copy(update={"automation": spec.automation.model_copy(update={"rounds": "manual"})})
    assert step_condition(manual) is None and round_schedule(manual) is None
