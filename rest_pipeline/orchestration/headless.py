"""Materialize an experiment's whole graph without the UI, in dependency order.

Dagster runs one partition key per run, so the graph is cut into stages: consecutive
unpartitioned assets run together, and each Grow's shard-partitioned assets run once per
shard. Every run lands in the same instance the web UI reads.
"""

import dagster as dg

from rest_pipeline.orchestration.definitions import build_definitions
from rest_pipeline.orchestration.keys import control_key, key
from rest_pipeline.spec import ExperimentSpec


def stages(defs: dg.Definitions) -> list[tuple[list[dg.AssetKey], dg.PartitionsDefinition | None]]:
    """Topologically ordered groups of asset keys that can share a run."""
    graph = defs.resolve_asset_graph()
    by_key = {k: a for a in defs.assets for k in a.keys}
    order: list[dg.AssetKey] = []
    done: set[dg.AssetKey] = set()
    pending = sorted(by_key, key=lambda k: k.to_user_string())
    while pending:
        ready = [k for k in pending if all(p in done or p not in by_key for p in graph.get(k).parent_keys)]
        # Prefer finishing unpartitioned work before opening the next partitioned stage.
        ready.sort(key=lambda k: by_key[k].partitions_def is not None)
        key = ready[0]
        order.append(key)
        done.add(key)
        pending.remove(key)
    out: list[tuple[list[dg.AssetKey], dg.PartitionsDefinition | None]] = []
    for key in order:
        parts = by_key[key].partitions_def
        if out and _same_partitions(out[-1][1], parts):
            out[-1][0].append(key)
        else:
            out.append(([key], parts))
    return out


def _same_partitions(a: dg.PartitionsDefinition | None, b: dg.PartitionsDefinition | None) -> bool:
    if a is None or b is None:
        return a is b
    return list(a.get_partition_keys()) == list(b.get_partition_keys())


def upstream_closure(defs: dg.Definitions, targets: list[dg.AssetKey]) -> set[dg.AssetKey]:
    """The targets and every asset they depend on, directly or not."""
    graph = defs.resolve_asset_graph()
    unknown = [t.to_user_string() for t in targets if not graph.has(t)]
    if unknown:
        raise ValueError(f"--until: no asset {', '.join(unknown)} in this experiment")
    seen: set[dg.AssetKey] = set()
    todo = list(targets)
    while todo:
        key = todo.pop()
        if key not in seen:
            seen.add(key)
            todo.extend(graph.get(key).parent_keys)
    return seen


def materialize_experiment(
    spec: ExperimentSpec,
    instance: dg.DagsterInstance,
    resources: dict | None = None,
    until: list[str] | None = None,
    tags: dict[str, str] | None = None,
) -> list[dg.ExecuteInProcessResult]:
    """Every stage of the experiment in dependency order; with `until` (asset paths such as
    'grow_1/rewards'), only those assets and what they depend on."""
    defs = build_definitions([spec])
    everything = [*defs.assets, *defs.asset_checks]
    resources = resources or defs.resources
    optional = set() if spec.improve.control else {control_key(spec)}
    wanted = upstream_closure(defs, [key(spec, *u.strip("/").split("/")) for u in until]) if until else None
    results = []
    for keys, parts in stages(defs):
        keys = [k for k in keys if k not in optional and (wanted is None or k in wanted)]
        if not keys:
            continue
        for partition_key in parts.get_partition_keys() if parts else [None]:
            result = dg.materialize(
                everything,
                instance=instance,
                resources=resources,
                raise_on_error=False,
                selection=dg.AssetSelection.assets(*keys),
                partition_key=partition_key,
                tags=tags,
            )
            results.append(result)
            if not result.success:
                return results
    return results
