"""The code location: every experiment spec found becomes its own asset group."""

from __future__ import annotations

import dagster as dg

from rest_pipeline.orchestration.assets import experiment_assets
from rest_pipeline.orchestration.checks import experiment_checks
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import ExperimentSpec, all_specs


def build_definitions(specs: list[ExperimentSpec] | None = None) -> dg.Definitions:
    specs = all_specs() if specs is None else specs
    assets: list[dg.AssetsDefinition] = []
    checks: list[dg.AssetChecksDefinition] = []
    for spec in specs:
        assets += experiment_assets(spec)
        checks += experiment_checks(spec)
    return dg.Definitions(assets=assets, asset_checks=checks, resources={"storage": RestStorage()})


defs = build_definitions()
