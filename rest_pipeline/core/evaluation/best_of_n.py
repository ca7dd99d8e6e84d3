"""Best-of-N at inference: the mean over sources of the best reward among N samples, for the BC
policy and the final ReST policy (the paper: ReST with N < 10 matches BC with N = 200)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd

from rest_pipeline.core.evaluation.checkpoint import reward_scores
from rest_pipeline.core.grow.sampling import make_sampler, sample_candidates, sampler_id, sampling_for
from rest_pipeline.core.paths import atomic_path
from rest_pipeline.core.policy.model import weights_hash
from rest_pipeline.core.rewards.base import RewardModel
from rest_pipeline.core.store.experiment import BASE, FINAL, ExperimentStore
from rest_pipeline.core.store.records import BestOfN, BestOfNCurve, NMatch, ScoreSignature
from rest_pipeline.core.types import Log
from rest_pipeline.spec import ExperimentSpec, SamplingSpec


def best_of_n(
    checkpoint: Path,
    sources: Sequence[str],
    references: Sequence[str],
    reward: RewardModel,
    ns: Sequence[int],
    settings: SamplingSpec,
    out_file: Path,
    *,
    backend: str = "hf",
    compute_type: str = "float32",
    max_length: int = 128,
    log: Log = print,
) -> dict[int, float]:
    """Mean over sources of the best reward among the first N samples, for each N.

    One set of `settings.n` (at least max(ns)) samples per source serves every N, so the curve is
    monotone by construction and costs a single sampling pass.
    """
    n_max = max(ns)
    if settings.n < n_max:
        raise ValueError(f"best-of-n: {settings.n} samples per source cannot give best-of-{n_max}")
    with closing(make_sampler(backend, checkpoint, max_length, compute_type)) as sampler:
        samples = sample_candidates(sampler, list(sources), settings)
    flat_src = [s for s, hyps in zip(sources, samples, strict=True) for _ in hyps]
    flat_ref = [r for r, hyps in zip(references, samples, strict=True) for _ in hyps]
    flat_hyp = [h for hyps in samples for h in hyps]
    log(f"best-of-n: scoring {len(flat_hyp)} samples of {checkpoint}")
    scores = reward_scores(reward, flat_src, flat_hyp, flat_ref).reshape(len(sources), n_max)
    curve = {int(n): round(float(scores[:, :n].max(axis=1).mean()), 5) for n in ns}
    with atomic_path(out_file) as tmp:
        pd.DataFrame(
            {
                "source": flat_src,
                "hypothesis": flat_hyp,
                "sample": np.tile(np.arange(n_max), len(sources)),
                "reward": scores.ravel(),
            }
        ).to_parquet(tmp, index=False)
    return curve


def matching_n(bc: dict[int, float], rest: dict[int, float]) -> list[NMatch]:
    """For each N of the ReST policy, the largest N at which BC does no better."""
    rows = []
    for n in sorted(rest):
        reached = [m for m in bc if bc[m] <= rest[n]]
        rows.append(NMatch(rest_n=n, rest_reward=rest[n], bc_n_reached=max(reached) if reached else None))
    return rows


def best_of_n_curves(spec: ExperimentSpec, store: ExperimentStore, reward: RewardModel, log: Log = print) -> BestOfN:
    """Best-of-N on valid for the BC policy and the final ReST policy (reused when both are unchanged)."""
    valid = store.split("valid").head(spec.improve.best_of_n_sources)
    settings = sampling_for(spec, "best_of_n")
    policies = {"bc": store.policy(BASE), "rest": store.policy(FINAL)}
    key = "|".join(
        [weights_hash(p) for p in policies.values()]
        + [reward.version, settings.signature(), str(spec.improve.best_of_n), str(len(valid)), sampler_id(spec.grow)]
    )
    saved = store.reusable(BestOfN, key)
    if saved is not None:
        log(f"best-of-n: unchanged policies; reusing {store.best_of_n_dir}")
        return saved
    curves: dict[str, BestOfNCurve] = {}
    for label, ckpt in policies.items():
        curve = best_of_n(
            ckpt,
            list(valid.source),
            list(valid.target),
            reward,
            spec.improve.best_of_n,
            settings,
            store.best_of_n_dir / f"{label}.samples.parquet",
            backend=spec.grow.backend,
            compute_type=spec.grow.compute_type,
            max_length=spec.tokenizer.max_length,
            log=log,
        )
        curves[label] = BestOfNCurve(checkpoint=store.rel(ckpt), curve=curve)
        log(f"best-of-n {label}: {curve}")
    matching = matching_n(curves["bc"].curve, curves["rest"].curve)
    record = BestOfN(
        key=key,
        reward=reward.name,
        sources=len(valid),
        ns=spec.improve.best_of_n,
        curves=curves,
        matching=matching,
        rest_small_n_reaches_bc_larger_n=any(
            m.bc_n_reached is not None and m.bc_n_reached > m.rest_n for m in matching
        ),
        signature=ScoreSignature(
            decoding=f"{sampler_id(spec.grow)}:{settings.signature()}", rewards={reward.name: reward.version}
        ),
    )
    store.put(record)
    return record
