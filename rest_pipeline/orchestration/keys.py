"""The names of the asset graph, in one leaf module: asset keys, partitions, pools, groups and code
versions. Every asset, check, automation and lineage file imports this; it imports none of them,
so the orchestration layer has no import cycle."""

from __future__ import annotations

import hashlib
import json

import dagster as dg

from rest_pipeline.core.rewards.factory import reward_names
from rest_pipeline.core.store.experiment import shard_name
from rest_pipeline.core.store.records import SCHEMA_VERSION
from rest_pipeline.spec import ExperimentSpec

GPU_POOL = "gpu"  # training, sampling and evaluation steps: one at a time per device


def group(spec: ExperimentSpec) -> str:
    """Each experiment is one asset group."""
    return spec.name


def key(spec: ExperimentSpec, *path: str) -> dg.AssetKey:
    return dg.AssetKey([spec.name, *path])


def owner(spec: ExperimentSpec, grow: int = 0, inclusive: bool = False) -> str:
    """The experiment whose asset a grow's artifact is: a branch reuses its parent's up to its branch
    grow (inclusive: that grow's candidates and scores; exclusive: the Improve steps before it)."""
    b = spec.branch
    if b is not None and (grow == 0 or grow < b.grow or (inclusive and grow == b.grow)):
        return b.parent  # grow 0 (corpus, tokenizer, BC, reward model) is always the parent's
    return spec.name


def corpus_key(spec: ExperimentSpec) -> dg.AssetKey:
    return dg.AssetKey([owner(spec), "corpus"])


def tokenizer_key(spec: ExperimentSpec) -> dg.AssetKey:
    return dg.AssetKey([owner(spec), "tokenizer"])


def base_eval_key(spec: ExperimentSpec) -> dg.AssetKey:
    """BLEU/chrF of the BC policy under every decoding setting."""
    return dg.AssetKey([owner(spec), "base_policy_eval"])


def reward_model_key(spec: ExperimentSpec) -> dg.AssetKey:
    return dg.AssetKey([owner(spec), "reward_model"])


def candidates_key(spec: ExperimentSpec, grow: int) -> dg.AssetKey:
    return dg.AssetKey([owner(spec, grow, inclusive=True), f"grow_{grow}", "candidates"])


def rewards_key(spec: ExperimentSpec, grow: int) -> dg.AssetKey:
    return dg.AssetKey([owner(spec, grow, inclusive=True), f"grow_{grow}", "rewards"])


def policy_key(spec: ExperimentSpec, grow: int, step: int) -> dg.AssetKey:
    """Asset of the checkpoint (grow, step) hands on; (0, 0) is the BC policy."""
    if grow == 0:
        return dg.AssetKey([owner(spec), "base_policy"])
    return dg.AssetKey([owner(spec, grow), f"grow_{grow}", f"improve_{step}", "policy"])


def eval_key(spec: ExperimentSpec, grow: int, step: int) -> dg.AssetKey:
    """Evaluation of the checkpoint (grow, step) hands on, the way ReST is judged."""
    if grow == 0:
        return dg.AssetKey([owner(spec), "base_policy_rewards"])
    return dg.AssetKey([owner(spec, grow), f"grow_{grow}", f"improve_{step}", "eval"])


def slice_key(spec: ExperimentSpec, grow: int, step: int) -> dg.AssetKey:
    return dg.AssetKey([owner(spec, grow), f"grow_{grow}", f"improve_{step}", "slice"])


def branch_point_key(spec: ExperimentSpec) -> dg.AssetKey:
    return key(spec, "branch_point")


def best_of_n_key(spec: ExperimentSpec) -> dg.AssetKey:
    return key(spec, "best_of_n")


def control_key(spec: ExperimentSpec) -> dg.AssetKey:
    return key(spec, "control")


def report_key(spec: ExperimentSpec) -> dg.AssetKey:
    return key(spec, "report")


def online_rl_key(spec: ExperimentSpec) -> dg.AssetKey:
    return key(spec, "online_rl")


def human_eval_key(spec: ExperimentSpec) -> dg.AssetKey:
    return key(spec, "human_eval")


def reward_deps(spec: ExperimentSpec) -> list[dg.AssetKey]:
    """The trained reward model, for assets that score with it."""
    return [reward_model_key(spec)] if "learned" in reward_names(spec) else []


def shard_keys(spec: ExperimentSpec) -> list[str]:
    return [shard_name(i) for i in range(spec.grow.shards)]


def shard_partitions(spec: ExperimentSpec) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(shard_keys(spec))


def code_version(spec: ExperimentSpec, *inputs: str, extra: object = None) -> str:
    """A version from exactly what an asset reads: the named spec fields (dotted, e.g. 'improve.train'),
    any `extra` value (e.g. the filter value of one step) and the record schema version. Changing
    a field stales exactly the assets that read it; nothing is bumped by hand."""
    dumped = spec.model_dump(mode="json")
    payload: dict[str, object] = {"schema": SCHEMA_VERSION, "extra": extra}
    for dotted in inputs:
        value: object = dumped
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                raise KeyError(f"code_version: spec has no field '{dotted}'")
            value = value[part]
        payload[dotted] = value
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
