"""Grow as plain functions: sample a shard of training sources, then score it."""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd

from rest_pipeline.core.grow.sampling import make_sampler, sample_candidates, sampling_for
from rest_pipeline.core.rewards.base import RewardModel
from rest_pipeline.core.rewards.scoring import ScoreReport, score_candidates
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.side_records import ShardCost
from rest_pipeline.core.types import Log
from rest_pipeline.spec import ExperimentSpec


def grow_sources(spec: ExperimentSpec, store: ExperimentStore, grow: int) -> pd.DataFrame:
    """The training sources grow `grow` samples: the first max_sources, or its block when rotating."""
    train = store.split("train")
    n = spec.grow.max_sources
    if not n or n >= len(train):
        return train
    start = (grow - 1) * n % len(train) if spec.grow.rotate_sources else 0
    rows = (start + np.arange(n)) % len(train)
    return train.iloc[rows]


def shard_of(df: pd.DataFrame, shards: int, shard: int) -> pd.DataFrame:
    """Contiguous, deterministic slices: shard k of n always holds the same sources."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} out of range for grow.shards={shards}")
    bounds = np.linspace(0, len(df), shards + 1).astype(int)
    return df.iloc[bounds[shard] : bounds[shard + 1]]


def grow_shard(
    spec: ExperimentSpec,
    store: ExperimentStore,
    grow: int,
    shard: int,
    policy_dir: Path,
    policy_id: str,
    log: Log = print,
) -> pd.DataFrame:
    """Sample and store one shard. A shard already sampled by the same policy with the same settings
    from the same sources is kept (resume without re-sampling); any other is replaced."""
    df = shard_of(grow_sources(spec, store, grow), spec.grow.shards, shard)
    settings = sampling_for(spec, "grow", grow, shard)
    sampler = make_sampler(spec.grow.backend, policy_dir, spec.tokenizer.max_length, spec.grow.compute_type)
    decoding = f"{sampler.name}:{settings.signature()}"
    if store.has_candidates(grow, shard):
        old = store.read_candidates(grow, shard)
        made_by = old[old.origin == "sample"][["policy", "decoding"]].drop_duplicates()
        stored, wanted = set(old.source_id), set(df.source_id)
        if made_by.values.tolist() == [[policy_id, decoding]] and stored == wanted:
            log(f"grow {grow} shard {shard}: already in the store, not re-sampled")
            return old
        log(
            f"grow {grow} shard {shard}: stored shard came from {made_by.values.tolist()} and holds "
            f"{len(stored & wanted)} of this shard's {len(df)} sources; re-sampling"
        )
    logged = [-1]

    def progress(done: int, total: int) -> None:  # every tenth of the shard, once
        if done * 10 // total > logged[0]:
            logged[0] = done * 10 // total
            log(f"grow {grow} shard {shard}: sampled {done}/{total} sources")

    t0 = time.perf_counter()
    with closing(sampler):
        samples = sample_candidates(
            sampler, list(df.source), settings, batch_tokens=spec.grow.batch_tokens, progress=progress
        )
    seconds, n = time.perf_counter() - t0, sum(len(s) for s in samples)
    # The scoring cost priced the candidates about to be replaced; dropped first, so a kill in between
    # cannot leave it beside the new ones.
    store.drop_shard_cost(grow, shard, "score")
    written = store.write_candidates(
        experiment=spec.name,
        grow=grow,
        shard=shard,
        source_ids=list(df.source_id),
        sources=list(df.source),
        references=list(df.target),
        samples=samples,
        policy=policy_id,
        decoding=decoding,
        include_references=spec.grow.include_references,
    )
    store.put(ShardCost(grow=grow, shard=shard, stage="sample", seconds=seconds, items=n, engine=sampler.engine))
    return written


def score_shard(
    store: ExperimentStore, models: list[RewardModel], grow: int, shard: int, log: Log = print
) -> list[ScoreReport]:
    """Score a shard with every reward model. Its recorded cost is what scoring these candidates took:
    a re-run answered from the score cache adds nothing to it (nor erases it), one that scores new
    inputs (another model) adds its time."""
    t0 = time.perf_counter()
    reports = [score_candidates(store, m, grow, shard, log=log) for m in models]
    seconds, scored = time.perf_counter() - t0, sum(r.newly_scored for r in reports)
    before = store.find(ShardCost, grow=grow, shard=shard, stage="score")
    if before is not None and scored == 0:
        return reports
    if before is not None:
        seconds, scored = seconds + before.seconds, scored + before.items
    store.put(ShardCost(grow=grow, shard=shard, stage="score", seconds=seconds, items=scored))
    return reports
