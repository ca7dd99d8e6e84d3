"""The code location: every experiment spec found becomes its own asset group."""

from __future__ import annotations

import dagster as dg

from rest_pipeline.core.rewards.factory import reward_names
from rest_pipeline.orchestration.assets import experiment_assets
from rest_pipeline.orchestration.checks import experiment_checks, grow_checks
from rest_pipeline.orchestration.grow_assets import grow_assets, reward_model_asset
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import ExperimentSpec, all_specs


def build_definitions(specs: list[ExperimentSpec] | None = None) -> dg.Definitions:
    specs = all_specs() if specs is None else specs
    assets: list[dg.AssetsDefinition] = []
    checks: list[dg.AssetChecksDefinition] = []
    for spec in specs:
        assets += experiment_assets(spec)
        checks += experiment_checks(spec)
        if spec.improve.grows >= 1:
            if "learned" in reward_names(spec):
                assets.append(reward_model_asset(spec))
            assets += grow_assets(spec, grow=1)
            checks += grow_checks(spec, grow=1)
    return dg.Definitions(assets=assets, asset_checks=checks, resources={"storage": RestStorage()})


defs = build_definitions()
