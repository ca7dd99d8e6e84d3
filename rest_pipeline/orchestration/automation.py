"""Automation of ReST rounds: declarative conditions on everything downstream of Grow 1, one
automation sensor per experiment, and an optional cron schedule that starts one Grow per tick.

Nothing upstream of Grow 1's rewards carries a condition, so turning automation on never
starts BC training or a reward model by itself; and every condition requires the blocking
checks of the inputs to have passed, so a failed check (reward hacking, lineage) stops the
loop where it failed.
"""

import dagster as dg

from rest_pipeline.core.improve.assess import hacking_verdict
from rest_pipeline.core.improve.chain import parent_of, sampler_of
from rest_pipeline.core.rewards.factory import independent_reward
from rest_pipeline.core.store.experiment import policy_name
from rest_pipeline.core.store.records import Evaluation
from rest_pipeline.orchestration import keys
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import ExperimentSpec


def step_condition(spec: ExperimentSpec) -> dg.AutomationCondition | None:
    """Condition for Improve slices, checkpoints, evaluations, Best-of-N and the report."""
    if spec.automation.rounds == "manual":
        return None
    return dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()


def grow_condition(spec: ExperimentSpec, grow: int) -> dg.AutomationCondition | None:
    """Grow 1 is started by a person; later grows follow eagerly only in 'eager' mode."""
    if grow == 1 or spec.automation.rounds != "eager":
        return None
    return step_condition(spec)


def automation_sensor(spec: ExperimentSpec) -> dg.AutomationConditionSensorDefinition:
    status = dg.DefaultSensorStatus.RUNNING if spec.automation.sensor_running else dg.DefaultSensorStatus.STOPPED
    return dg.AutomationConditionSensorDefinition(
        f"{spec.name}_rounds",
        target=dg.AssetSelection.groups(keys.group(spec)),
        default_status=status,
        minimum_interval_seconds=30,
        description=f"Runs the ReST rounds of '{spec.name}' after Grow 1: Improve steps, evaluations, "
        f"{'the next Grow, ' if spec.automation.rounds == 'eager' else ''}Best-of-N and the report.",
    )


def next_grow(spec: ExperimentSpec, storage: RestStorage) -> tuple[int | None, str]:
    """The grow a scheduled round should start, or why none should start."""
    store = storage.store(spec)
    for grow in range(2, spec.improve.grows + 1):
        if all(store.has_candidates(grow, s) for s in range(spec.grow.shards)):
            continue
        last = sampler_of(spec, grow)
        try:
            summary = store.get(Evaluation, policy=policy_name(*last))
            parent = store.get(Evaluation, policy=policy_name(*parent_of(spec, *last)))
        except FileNotFoundError:
            return None, f"grow {grow - 1} has not finished its Improve steps yet"
        verdict = hacking_verdict(spec, summary, parent, spec.reward.model, independent_reward(spec))
        if not verdict.passed:
            return None, f"stopped: grow {grow - 1} failed the reward-hacking check ({verdict.explanation})"
        return grow, f"grow {grow - 1} finished and passed its checks"
    return None, f"all {spec.improve.grows} grows are materialized"


def round_schedule(spec: ExperimentSpec) -> dg.ScheduleDefinition | None:
    if spec.automation.rounds != "schedule" or spec.improve.grows < 2:
        return None
    later = [
        k for g in range(2, spec.improve.grows + 1) for k in (keys.candidates_key(spec, g), keys.rewards_key(spec, g))
    ]

    @dg.schedule(
        name=f"{spec.name}_nightly_round",
        cron_schedule=spec.automation.cron,
        target=dg.AssetSelection.assets(*later),
        default_status=dg.DefaultScheduleStatus.RUNNING
        if spec.automation.sensor_running
        else dg.DefaultScheduleStatus.STOPPED,
        description=f"Starts the next Grow of '{spec.name}' once per tick ({spec.automation.cron}).",
    )
    def nightly_round(context: dg.ScheduleEvaluationContext):
        grow, why = next_grow(spec, RestStorage())
        if grow is None:
            return dg.SkipReason(why)
        selection = [keys.candidates_key(spec, grow), keys.rewards_key(spec, grow)]
        return [
            dg.RunRequest(
                run_key=f"{spec.name}-grow{grow}-{key}-{context.scheduled_execution_time:%Y%m%d%H%M}",
                partition_key=key,
                asset_selection=selection,
            )
            for key in keys.shard_keys(spec)
        ]

    return nightly_round
