"""Judging the checkpoints of the ReST chain: each one evaluated like every other policy, and the
reward-hacking verdict against its parent that stops the loop when it fails."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from rest_pipeline.core.evaluation.checkpoint import eval_splits, evaluate_policy
from rest_pipeline.core.grow.sampling import sampling_for
from rest_pipeline.core.improve.chain import parent_of
from rest_pipeline.core.paths import atomic_dir
from rest_pipeline.core.rewards.base import RewardModel
from rest_pipeline.core.store.experiment import ExperimentStore, policy_name
from rest_pipeline.core.store.records import Evaluation, StepRecord
from rest_pipeline.core.types import Log
from rest_pipeline.spec import ExperimentSpec


def evaluate_step(
    spec: ExperimentSpec, store: ExperimentStore, grow: int, step: int, rewards: list[RewardModel], log: Log = print
) -> Evaluation:
    """Evaluate the checkpoint (grow, step) hands on; (0, 0) is the BC policy.

    A step that did not train (skipped, or did not beat its parent) hands on its parent's
    weights, so its evaluation is the parent's, copied and marked as inherited.
    """
    name = policy_name(grow, step)
    if grow > 0 and store.get(StepRecord, grow=grow, step=step).status != "improved":
        parent_name = policy_name(*parent_of(spec, grow, step))
        parent = store.get(Evaluation, policy=parent_name)
        src, out = store.eval_dir(parent_name), store.eval_dir(name)
        with atomic_dir(out) as tmp:
            for f in src.glob("*.parquet"):
                shutil.copy2(f, tmp / f.name)
        splits = {
            s: v.model_copy(update={"hypotheses": store.rel(out / store.resolve(v.hypotheses).name)})
            for s, v in parent.splits.items()
        }
        record = parent.model_copy(update={"policy": name, "splits": splits, "inherited_from": parent_name})
        store.put(record)
        log(f"eval {name}: no new weights; inherits the evaluation of {parent_name}")
        return record
    return evaluate_checkpoint(spec, store, name, store.policy(name), rewards, log)


def evaluate_checkpoint(
    spec: ExperimentSpec, store: ExperimentStore, name: str, checkpoint: Path, rewards: list[RewardModel], log: Log
) -> Evaluation:
    """A policy's evaluation exactly as every chain checkpoint gets it (the online-RL baseline's too)."""
    return evaluate_policy(
        store,
        name,
        checkpoint,
        eval_splits(spec, store),
        rewards,
        max_length=spec.tokenizer.max_length,
        diversity=sampling_for(spec, "diversity"),
        diversity_sources=spec.improve.diversity_sources,
        backend=spec.grow.backend,
        compute_type=spec.grow.compute_type,
        decode_backend=spec.evaluation.backend,
        log=log,
    )


@dataclass(frozen=True)
class HackingVerdict:
    passed: bool
    train_reward_delta: float
    bleu_delta: float
    independent_delta: float | None
    explanation: str


def hacking_verdict(
    spec: ExperimentSpec, current: Evaluation, parent: Evaluation, train_reward: str, independent: str | None
) -> HackingVerdict:
    """Reward hacking: the training reward rises while BLEU and the independent reward fall beyond margins."""
    split = "test" if "test" in current.splits else next(iter(current.splits))
    cur, par = current.splits[split], parent.splits[split]
    d_train = cur.reward(train_reward) - par.reward(train_reward)
    d_bleu = cur.bleu - par.bleu
    d_ind = cur.reward(independent) - par.reward(independent) if independent else None
    bleu_fell = d_bleu < -spec.improve.hacking_bleu_drop
    ind_fell = d_ind is None or d_ind < -spec.improve.hacking_independent_drop
    hacked = d_train > 0 and bleu_fell and ind_fell
    text = (
        f"{split}: {train_reward} {d_train:+.4f}, BLEU {d_bleu:+.2f}"
        + (f", {independent} {d_ind:+.4f}" if d_ind is not None else "")
        + (" -> reward hacking" if hacked else " -> ok")
    )
    return HackingVerdict(
        not hacked, round(d_train, 5), round(d_bleu, 2), None if d_ind is None else round(d_ind, 5), text
    )
