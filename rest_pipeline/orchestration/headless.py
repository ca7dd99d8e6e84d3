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
    plain_keys = [k for a in plain for k in a.keys]
    res = dg.materialize(
        everything,
        instance=instance,
        resources=resources,
        raise_on_error=False,
        selection=dg.AssetSelection.assets(*plain_keys),
    )
    results.append(res)
    if not res.success or not parted:
        return results
    part_keys = [k for a in parted for k in a.keys]
    for key in parted[0].partitions_def.get_partition_keys():
        res = dg.materialize(
            everything,
            instance=instance,
            resources=resources,
            raise_on_error=False,
            selection=dg.AssetSelection.assets(*part_keys),
            partition_key=key,
        )
        results.append(res)
        if not res.success:
            break
    return results
