"""The code location: every experiment spec found becomes its own asset group."""

from __future__ import annotations

import os

import dagster as dg

from rest_pipeline.core.improve.chain import own_grows
from rest_pipeline.core.rewards.factory import reward_names
from rest_pipeline.orchestration.assets import experiment_assets
from rest_pipeline.orchestration.automation import automation_sensor, round_schedule
from rest_pipeline.orchestration.branch_assets import branch_point_asset
from rest_pipeline.orchestration.checks import experiment_checks, grow_checks, improve_checks
from rest_pipeline.orchestration.grow_assets import grow_assets, reward_model_asset
from rest_pipeline.orchestration.improve_assets import all_improve_assets
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import ExperimentSpec, all_specs


def build_definitions(specs: list[ExperimentSpec] | None = None) -> dg.Definitions:
    specs = all_specs() if specs is None else specs
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
            sensors.append(automation_sensor(spec))
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


def executor() -> dg.ExecutorDefinition:
    """REST_EXECUTOR=multiprocess (default: steps in their own processes, REST_MAX_CONCURRENT at once)
    or in_process (one process per run: no per-step start-up cost, best on small CPU machines)."""
    kind = os.environ.get("REST_EXECUTOR", "multiprocess")
    if kind == "in_process":
        return dg.in_process_executor
    if kind != "multiprocess":
        raise ValueError(f"REST_EXECUTOR must be 'multiprocess' or 'in_process', got '{kind}'")
    return dg.multiprocess_executor.configured({"max_concurrent": max_concurrent()})


def max_concurrent() -> int:
    """Steps one run executes at once (REST_MAX_CONCURRENT); GPU steps are also capped by the `gpu` pool."""
    value = os.environ.get("REST_MAX_CONCURRENT", "2")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"REST_MAX_CONCURRENT must be a positive integer, got '{value}'")
    return int(value)


defs = build_definitions()
