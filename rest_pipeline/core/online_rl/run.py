"""The online-RL baseline as the pipeline runs it: PPO from the experiment's BC policy with its
training reward model, each checkpoint at a compute mark evaluated exactly like an Improve checkpoint
and recorded with its lineage (parent, reward-model version, compute so far)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from rest_pipeline.core.evaluation.checkpoint import reward_scores
from rest_pipeline.core.grow.sampling import sampling_for
from rest_pipeline.core.improve.assess import evaluate_checkpoint
from rest_pipeline.core.online_rl.ppo import run_ppo
from rest_pipeline.core.policy.model import weights_hash
from rest_pipeline.core.rewards.base import RewardModel
from rest_pipeline.core.store.experiment import BASE, ExperimentStore
from rest_pipeline.core.store.side_records import PHASES, ComputeUsed, OnlineRL, OnlineRLMark
from rest_pipeline.core.types import Log
from rest_pipeline.spec import ExperimentSpec

ADVANTAGE = (
    "per-source group baseline: A_t = R(x, y) - mean R of the source's samples in the batch - beta * the "
    "per-token KL to the BC policy still to come (returns with gamma = 1); normalised over the batch"
)


def ppo_fingerprint(spec: ExperimentSpec, bc: Path, train_sources: int, train_reward: RewardModel) -> str:
    """Everything outside the PPO settings that a saved run must share to be continued (run_ppo adds
    the settings that shape the trajectory, and leaves out the budget)."""
    sampling = spec.grow.sampling
    parts = [weights_hash(bc), train_reward.version, str(spec.seed), str(sampling.temperature),
             str(sampling.max_new_tokens), str(train_sources)]  # fmt: skip
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def run_online_rl(
    spec: ExperimentSpec, store: ExperimentStore, rewards: list[RewardModel], log: Log = print
) -> OnlineRL:
    settings = spec.online_rl
    train_reward = next(m for m in rewards if m.name == spec.reward.model)
    bc = store.base_policy_dir
    train = store.split("train")
    fingerprint = ppo_fingerprint(spec, bc, len(train), train_reward)
    result = run_ppo(
        settings,
        bc,
        list(train.source),
        list(train.target),
        lambda s, h, r: reward_scores(train_reward, s, h, r),
        store.online_rl_dir / "ppo",
        sampling=sampling_for(spec, "ppo"),
        max_length=spec.tokenizer.max_length,
        fingerprint=fingerprint,
        log=log,
    )
    marks = []
    for m in result.marks:
        evaluate_checkpoint(spec, store, m.name, m.path, rewards, log)
        marks.append(
            OnlineRLMark(
                name=m.name,
                checkpoint=store.rel(m.path),
                parent=BASE,
                reward_version=train_reward.version,
                compute=ComputeUsed(
                    **{k: (round(v, 1) if k == "seconds" else v) for k, v in asdict(m.compute).items()}
                ),
                iteration=m.iteration,
                mean_sample_reward=m.mean_reward,
                kl_to_bc=m.kl,
            )
        )
    timed = result.phase_seconds
    phases = {k: round(sum(t[k] for t in timed), 1) for k in PHASES}
    record = OnlineRL(
        algorithm="ppo",
        settings=settings.model_dump(),
        advantage=ADVANTAGE,
        iterations=result.iterations,
        marks=marks,
        history=result.history,
        phase_seconds={"iterations": len(timed), **phases} if timed else {},
    )
    store.put(record)
    return record
