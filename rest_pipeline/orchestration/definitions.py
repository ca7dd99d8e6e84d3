"""The code location: every experiment spec found becomes its own asset group."""

from __future__ import annotations

import dagster as dg

from rest_pipeline.core.improve.chain import own_grows
from rest_pipeline.core.rewards.factory import reward_names
from rest_pipeline.core.spec_check import checked_specs
from rest_pipeline.orchestration.automation import automation_sensor, round_schedule
from rest_pipeline.orchestration.base_assets import experiment_assets
from rest_pipeline.orchestration.branch_assets import branch_point_asset
from rest_pipeline.orchestration.checks import experiment_checks, grow_checks, improve_checks
from rest_pipeline.orchestration.grow_assets import grow_assets, reward_model_asset
from rest_pipeline.orchestration.human_assets import human_eval_asset, new_ratings_sensor
from rest_pipeline.orchestration.improve_assets import all_improve_assets
from rest_pipeline.orchestration.online_rl_assets import online_rl_asset, online_rl_checks
from rest_pipeline.orchestration.placement import executor
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import ExperimentSpec


def build_definitions(specs: list[ExperimentSpec] | None = None) -> dg.Definitions:
    specs = checked_specs() if specs is None else specs
    assets: list[dg.AssetsDefinition] = []
    checks: list[dg.AssetChecksDefinition] = []
    sensors: list[dg.SensorDefinition] = []
    schedules: list[dg.ScheduleDefinition] = []
    for spec in specs:
        if spec.branch is None:
            assets += experiment_assets(spec)
            checks += experiment_checks(spec)
        else:  # a branch reuses its parent's assets up to its branch point
            assets.append(branch_point_asset(spec))
        if spec.improve.grows >= 1:
            if "learned" in reward_names(spec) and spec.branch is None:
                assets.append(reward_model_asset(spec))
            for g in own_grows(spec):
                assets += grow_assets(spec, grow=g)
                checks += grow_checks(spec, grow=g)
            assets += all_improve_assets(spec)
            checks += improve_checks(spec)
            assets.append(human_eval_asset(spec))
            sensors += [automation_sensor(spec), new_ratings_sensor(spec)]
            if spec.online_rl.enabled:  # the baseline needs the BC policy and the reward model only
                assets.append(online_rl_asset(spec))
                checks += online_rl_checks(spec)
            schedule = round_schedule(spec)
            if schedule is not None:
                schedules.append(schedule)
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        sensors=sensors,
        schedules=schedules,
        resources={"storage": RestStorage()},
        executor=executor(),
    )


defs = build_definitions()
