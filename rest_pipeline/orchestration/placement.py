"""Where steps run and what each asks for, in one place: the executor (REST_EXECUTOR) and, per heavy
asset, its `gpu` pool slot (one machine) or its Ray resource request (a Ray cluster).

On one machine the `gpu` pool serialises training, sampling and evaluation steps across runs. On Ray
the cluster's scheduler does that job: a heavy step asks for `compute.gpus_per_step` GPUs when the
spec's device is CUDA and `compute.cpus_per_step` CPUs otherwise (dagster-ray's
`dagster-ray/config` op tag), and the shards of a Grow run side by side on as many workers as fit.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import dagster as dg

from rest_pipeline.orchestration.keys import GPU_POOL
from rest_pipeline.spec import ExperimentSpec

EXECUTORS = ("multiprocess", "in_process", "ray")
RAY_TAG = "dagster-ray/config"
# What a step submitted as a Ray job must see of this process's environment (when set here).
FORWARDED_ENV = (
    "REST_HOME",
    "REST_DATA_DIR",
    "REST_EXPERIMENTS_DIR",
    "REST_EXECUTOR",
    "REST_DEVICES",
    "REST_TABLES_URL",
    "DAGSTER_HOME",
    "RAY_ADDRESS",
    "PYTHONPATH",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
)
FORWARDED_PREFIXES = ("AWS_", "DAGSTER_PG_")  # object-storage credentials; the PostgreSQL instance's connection


def executor_kind() -> str:
    kind = os.environ.get("REST_EXECUTOR", "multiprocess")
    if kind not in EXECUTORS:
        raise ValueError(f"REST_EXECUTOR must be one of {', '.join(EXECUTORS)}, got '{kind}'")
    return kind


def uses_cuda(spec: ExperimentSpec) -> bool:
    """Whether the spec's heavy steps want a GPU (`auto`: this machine has one)."""
    if spec.compute.device != "auto":
        return spec.compute.device == "cuda"
    import torch

    return torch.cuda.is_available()


def ray_request(spec: ExperimentSpec) -> dict[str, Any]:
    """The Ray resources of one heavy step of this spec, and as many torch threads as CPUs granted (two
    steps side by side on one node must not each spread over every core)."""
    request: dict[str, Any] = {"num_cpus": spec.compute.cpus_per_step}
    if uses_cuda(spec):
        request["num_gpus"] = spec.compute.gpus_per_step
    threads = str(max(1, int(spec.compute.cpus_per_step)))
    request["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}}
    return request


def placement(spec: ExperimentSpec, *, gpu_pool: bool = True) -> dict[str, Any]:
    """Keyword arguments of `@dg.asset` for a heavy step: its pool slot, or its Ray request.
    `gpu_pool=False`: a heavy step that shares the machine with GPU steps on one box (scoring)."""
    if executor_kind() == "ray":
        return {"op_tags": {RAY_TAG: json.dumps(ray_request(spec))}}
    return {"pool": GPU_POOL} if gpu_pool else {}


def max_concurrent() -> int:
    """Steps one run executes at once (REST_MAX_CONCURRENT); GPU steps are also capped by the `gpu` pool."""
    value = os.environ.get("REST_MAX_CONCURRENT", "2")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"REST_MAX_CONCURRENT must be a positive integer, got '{value}'")
    return int(value)


def forwarded_env() -> list[str]:
    """KEY=VALUE pairs a Ray job needs to run a step as this process would: the variables above, and a
    PATH that finds this environment's `dagster` first (the step's entry point)."""
    names = [*FORWARDED_ENV, *sorted(k for k in os.environ if k.startswith(FORWARDED_PREFIXES))]
    pairs = [f"{k}={os.environ[k]}" for k in names if k in os.environ]
    bindir = str(Path(sys.executable).parent)
    pairs.append(f"PATH={bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return pairs


def executor() -> dg.ExecutorDefinition:
    """multiprocess (default: steps in their own processes, REST_MAX_CONCURRENT at once), in_process (one
    process per run: no per-step start-up cost, best on small CPU machines) or ray (every step a Ray
    job on the cluster at RAY_ADDRESS, through dagster-ray's executor)."""
    kind = executor_kind()
    if kind == "in_process":
        return dg.in_process_executor
    if kind == "ray":
        from dagster_ray import ray_executor

        address = os.environ.get("RAY_ADDRESS")
        if not address:
            raise ValueError(
                "REST_EXECUTOR=ray needs RAY_ADDRESS (the cluster's dashboard, e.g. http://127.0.0.1:8265)"
            )
        return ray_executor.configured({"ray": {"address": address, "env_vars": forwarded_env()}})
    return dg.multiprocess_executor.configured({"max_concurrent": max_concurrent()})
