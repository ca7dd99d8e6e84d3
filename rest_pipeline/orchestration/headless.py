"""Materialize an experiment's whole graph without the UI: unpartitioned assets first, then
each shard partition of the Grow assets (Dagster runs one partition key per run)."""

import dagster as dg

from rest_pipeline.orchestration.definitions import build_definitions
from rest_pipeline.spec import ExperimentSpec


def materialize_experiment(
    spec: ExperimentSpec, instance: dg.DagsterInstance, resources: dict | None = None
) -> list[dg.ExecuteInProcessResult]:
    defs = build_definitions([spec])
    everything = [*defs.assets, *defs.asset_checks]
    resources = resources or defs.resources
    plain = [a for a in defs.assets if a.partitions_def is None]
    parted = [a for a in defs.assets if a.partitions_def is not None]
    results = []

    def run(assets: list[dg.AssetsDefinition], partition_key: str | None = None) -> dg.ExecuteInProcessResult:
        keys = [k for a in assets for k in a.keys]
        return dg.materialize(
            everything,
            instance=instance,
            resources=resources,
            raise_on_error=False,
            selection=dg.AssetSelection.assets(*keys),
            partition_key=partition_key,
        )

    results.append(run(plain))
    if not results[-1].success or not parted:
        return results
    for key in parted[0].partitions_def.get_partition_keys():
        results.append(run(parted, key))
        if not results[-1].success:
            break
    return results
