"""Materialize an experiment's whole graph without the UI, in dependency order.

Dagster runs one partition key per run, so the graph is cut into stages: consecutive
unpartitioned assets run together, and each Grow's shard-partitioned assets run once per
shard. Every run lands in the same instance the web UI reads.

By default each run executes in this process (no per-step start-up cost: best on a small CPU box).
With REST_EXECUTOR set to `multiprocess` or `ray`, each stage is a job launched on that executor
(`ray`: dagster-ray submits every step as a Ray job), and the shard runs of a partitioned stage
start together, so a cluster runs the shards side by side. Those jobs are rebuilt in each step's
process from the spec itself (`stage_job`).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from concurrent.futures import ProcessPoolExecutor

import dagster as dg
from dagster._core.execution import compute_logs

from rest_pipeline.orchestration.definitions import build_definitions
from rest_pipeline.orchestration.keys import control_key, human_eval_key, key
from rest_pipeline.orchestration.placement import executor_kind
from rest_pipeline.spec import ExperimentSpec

STAGE_JOB = "rest_stage"


class _OwnSessionSubprocess:
    """`subprocess` as Dagster's compute-log mirroring sees it: its `tail` and the orphan watcher start in
    their own session, so a Ctrl-C at the terminal reaches `rest main` (which stops the run and says so in
    one line) and not these helpers (the watcher, a Python script, would print a KeyboardInterrupt
    traceback each time). Dagster still ends both when the step ends; the watcher still ends the tail if
    this process dies."""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args, **kwargs):  # noqa: N802 (subprocess's name)
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(*args, **kwargs)


compute_logs.subprocess = _OwnSessionSubprocess()


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
    skipped = set() if spec.improve.control else {control_key(spec)}
    wanted = upstream_closure(defs, [key(spec, *u.strip("/").split("/")) for u in until]) if until else None
    if wanted is None or human_eval_key(spec) not in wanted:
        skipped.add(human_eval_key(spec))  # from people's ratings: only when asked for (after `rest rate`)
    launched = "REST_EXECUTOR" in os.environ and executor_kind() != "in_process"
    results = []
    for keys, parts in stages(defs):
        keys = [k for k in keys if k not in skipped and (wanted is None or k in wanted)]
        if not keys:
            continue
        if launched:
            outcome = _launched_stage(spec, keys, parts, instance, tags)
            results += outcome
            if not all(r.success for r in outcome):
                return results
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


def stage_job(spec_json: str, selection: tuple[str, ...]) -> dg.JobDefinition:
    """The job of one stage, rebuilt from the spec wherever one of its steps runs (a Ray worker)."""
    spec = ExperimentSpec.model_validate_json(spec_json)
    defs = build_definitions([spec])
    job = dg.define_asset_job(
        STAGE_JOB, selection=dg.AssetSelection.assets(*(dg.AssetKey.from_user_string(s) for s in selection))
    )
    return dg.Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=[job],
        resources=defs.resources,
        executor=defs.executor,
    ).resolve_job_def(STAGE_JOB)


class _StageResult:
    """What `materialize_experiment`'s callers read of a run (as of an in-process result)."""

    def __init__(self, run_id: str, success: bool):
        self.run_id, self.success = run_id, success


def _execute_stage_run(
    spec_json: str, selection: tuple[str, ...], partition_key: str | None, tags: dict[str, str],
    instance: dg.DagsterInstance | None = None,
) -> tuple[str, bool]:  # fmt: skip
    """One run of a stage on the executor of REST_EXECUTOR (in a process of its own when concurrent:
    Dagster's run setup reconfigures logging, which two threads of one process deadlock on)."""
    recon = dg.build_reconstructable_job(
        "rest_pipeline.orchestration.headless", "stage_job", reconstructable_args=(spec_json, selection)
    )
    run_tags = {**tags, **({"dagster/partition": partition_key} if partition_key else {})}
    with dg.execute_job(recon, instance=instance or dg.DagsterInstance.get(), tags=run_tags, raise_on_error=False) as r:
        return r.run_id, r.success


def _launched_stage(
    spec: ExperimentSpec,
    keys: list[dg.AssetKey],
    parts: dg.PartitionsDefinition | None,
    instance: dg.DagsterInstance,
    tags: dict[str, str] | None,
) -> list[_StageResult]:
    """One run per partition, all started at once, each on the executor of REST_EXECUTOR."""
    args = (spec.model_dump_json(by_alias=True), tuple(k.to_user_string() for k in keys))
    partition_keys = list(parts.get_partition_keys()) if parts else [None]
    if len(partition_keys) == 1:  # in this process: Ctrl-C reaches the run
        return [_StageResult(*_execute_stage_run(*args, partition_keys[0], tags or {}, instance))]
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(partition_keys), mp_context=spawn) as pool:
        futures = [pool.submit(_execute_stage_run, *args, pk, tags or {}) for pk in partition_keys]
        return [_StageResult(*f.result()) for f in futures]
