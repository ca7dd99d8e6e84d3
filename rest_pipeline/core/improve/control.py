"""The control ReST has to beat: the BC policy fine-tuned for the same Improve steps, at the same
learning rates and budgets, with the same keep-the-best rule, on the original pairs only.

An under-trained BC policy gains from any extra fine-tuning; only the gap between the final
ReST policy and this control is owed to the reward-filtered samples.
"""

from __future__ import annotations

from rest_pipeline.core.evaluation.checkpoint import eval_splits, evaluate_policy
from rest_pipeline.core.improve.chain import final_step, step_number
from rest_pipeline.core.improve.finetune import finetune, measure_parent, validation_signature
from rest_pipeline.core.rewards.base import RewardModel
from rest_pipeline.core.store.experiment import BASE, CONTROL, ExperimentStore, policy_name
from rest_pipeline.core.store.queries import reference_pairs
from rest_pipeline.core.store.records import ControlRecord, ControlStep, Evaluation
from rest_pipeline.core.training.pairs import TrainingPairs
from rest_pipeline.core.types import Log
from rest_pipeline.spec import ExperimentSpec


class ControlError(RuntimeError):
    """The ReST chain the control mirrors is not there yet."""


def mirrored_steps(spec: ExperimentSpec, store: ExperimentStore) -> list[tuple[int, int, float]]:
    """(grow, step, lr) of every step that trained on the chain of the final checkpoint, oldest first."""
    try:
        chain = store.lineage(*final_step(spec))
    except FileNotFoundError as exc:
        raise ControlError(f"the ReST chain of {spec.name} is not complete: {exc}") from exc
    return [(r.grow, r.step, r.lr) for r in reversed(chain) if r.trained_checkpoint]


def originals(store: ExperimentStore, grow: int) -> tuple[list[str], list[str]]:
    """The reference pairs of the sources grow `grow` sampled: the data ReST mixes into every slice."""
    df = reference_pairs(store, grow)
    if df.empty:
        raise ControlError(f"{store.tables_root}: grow {grow} holds no original pairs (grow.include_references off?)")
    return list(df.source), list(df.reference)


def run_control(
    spec: ExperimentSpec, store: ExperimentStore, rewards: list[RewardModel], log: Log = print
) -> ControlRecord:
    """Fine-tune BC on the originals, step for step as ReST did; evaluate it like every checkpoint."""
    train_reward = next(r for r in rewards if r.name == spec.reward.model)
    parent = store.policy(BASE)
    steps: list[ControlStep] = []
    for grow, step, lr in mirrored_steps(spec, store):
        pairs = originals(store, grow)
        name = policy_name(grow, step)
        log(f"control {name}: fine-tuning {store.rel(parent)} on {len(pairs[0])} original pairs, lr {lr:.2e}")
        result = finetune(
            spec,
            store,
            measure_parent(spec, store, parent, train_reward),
            TrainingPairs(*pairs),
            store.control_training_dir(grow, step),
            lr=lr,
            seed=spec.seed + step_number(spec.improve, grow, step),  # the seed of the step it mirrors
            reward=train_reward,
            log=log,
        )
        if result.improved:
            parent = result.best_dir
        steps.append(
            ControlStep(
                mirrors=name,
                grow=grow,
                lr=lr,
                pairs=len(pairs[0]),
                status="improved" if result.improved else "not_improved",
                parent_valid_reward=result.parent_valid_reward,
                valid_reward=max(result.best_valid_reward, result.parent_valid_reward),
                train_steps=result.steps,
                checkpoint=store.rel(parent),
            )
        )
        log(f"control {name}: {steps[-1].status}: {result.best_valid_reward:.4f} vs {result.parent_valid_reward:.4f}")
    control = evaluate_policy(
        store,
        CONTROL,
        parent,
        eval_splits(spec, store),
        rewards,
        max_length=spec.tokenizer.max_length,
        backend=spec.grow.backend,
        compute_type=spec.grow.compute_type,
        decode_backend=spec.evaluation.backend,
        log=log,
    )
    record = ControlRecord(
        steps=steps,
        checkpoint=store.rel(parent),
        rest_minus_control=deltas(store.get(Evaluation, policy=policy_name(*final_step(spec))), control),
        control_minus_bc=deltas(control, store.get(Evaluation, policy=BASE)),
        validation_signature=validation_signature(spec, store, train_reward),
    )
    store.put(record)
    return record


def deltas(a: Evaluation, b: Evaluation) -> dict[str, dict[str, float]]:
    """Per split, a - b for BLEU, chrF and every reward both evaluations hold."""
    out: dict[str, dict[str, float]] = {}
    for split, row in a.splits.items():
        other = b.splits.get(split)
        if other is None:
            continue
        d = {"bleu": round(row.bleu - other.bleu, 5), "chrf": round(row.chrf - other.chrf, 5)}
        d.update({f"reward_{k}": round(v - other.rewards[k], 5) for k, v in row.rewards.items() if k in other.rewards})
        out[split] = d
    return out
