"""One Improve step of ReST as a plain function.

Step (g, i) fine-tunes its parent — step (g, i-1), or for i = 1 the policy that sampled
grow g — on the slice of grow g that cleared the step's bar, keeps the checkpoint with the
best validation reward, and records its lineage (a `StepRecord`). A step that does not beat
its parent's validation reward hands the parent on, and the rest of that grow is skipped, as
in the paper's algorithm; so does an empty slice (without stopping the grow).
"""

from __future__ import annotations

from pathlib import Path

from rest_pipeline.core.corpus.fetch import sha256_of
from rest_pipeline.core.improve.chain import parent_of, sampler_of, step_lr, step_number
from rest_pipeline.core.improve.finetune import finetune, measure_parent, validation_signature
from rest_pipeline.core.policy.model import adapter_lineage, weights_hash
from rest_pipeline.core.rewards.base import RewardModel
from rest_pipeline.core.store.experiment import ExperimentStore, policy_name
from rest_pipeline.core.store.queries import grow_sampler
from rest_pipeline.core.store.records import SliceRecord, StepRecord
from rest_pipeline.core.training.pairs import SlicePairs
from rest_pipeline.core.types import Log
from rest_pipeline.spec import ExperimentSpec


def run_improve_step(
    spec: ExperimentSpec, store: ExperimentStore, grow: int, step: int, reward: RewardModel, log: Log = print
) -> StepRecord:
    """Fine-tune the parent on this step's slice (or record why not); returns the lineage record."""
    if store.parent is not None:
        store.verify_parent()
    stats = store.get(SliceRecord, grow=grow, step=step)
    pairs = SlicePairs(store.resolve(stats.path))  # streamed a row group at a time, never whole in memory
    parent = policy_name(*parent_of(spec, grow, step))
    parent_ckpt = store.policy(parent)
    imp = spec.improve
    lr = step_lr(imp, grow, step)
    decoding = grow_sampler(store, grow)
    measured = measure_parent(spec, store, parent_ckpt, reward)  # its weights are hashed once per step
    parent_valid = measured.valid_reward
    fields = dict(
        experiment=spec.name,
        grow=grow,
        step=step,
        status="skipped",
        skip_reason=None,
        checkpoint=store.rel(parent_ckpt),
        checkpoint_hash=measured.weights_hash,
        trained_checkpoint=None,
        parent=parent,
        parent_checkpoint=store.rel(parent_ckpt),
        parent_hash=measured.weights_hash,
        grow_policy=store.rel(store.policy(policy_name(*sampler_of(spec, grow)))),
        grow_decoding=str(decoding),
        slice_rule=stats.rule,
        slice_parameter=stats.parameter,
        slice_kept=stats.kept,
        slice_kept_fraction=stats.kept_fraction,
        slice_path=stats.path,
        slice_hash=pairs.content_hash(with_signals=False),
        reward_model=reward.name,
        reward_version=reward.version,
        corpus_hash=sha256_of(store.split_file("train"))[:16],
        loss=imp.loss,
        lr=lr,
        hyperparameters=imp.train.model_dump(mode="json"),
        parent_valid_reward=parent_valid,
        valid_reward=parent_valid,
        validation_signature=validation_signature(spec, store, reward),
    )
    misses = [
        r for r in (store.get(StepRecord, grow=grow, step=j) for j in range(1, step)) if r.status == "not_improved"
    ]
    if len(misses) >= imp.patience:
        fields["skip_reason"] = (
            f"grow {grow} stopped improving at step {misses[imp.patience - 1].step} "
            f"({imp.patience} step(s) did not beat their parent's validation reward); "
            "the best checkpoint goes on to the next grow"
        )
    elif stats.skip_reason:
        fields["skip_reason"] = stats.skip_reason
    name = policy_name(grow, step)
    if fields["skip_reason"]:
        log(f"improve {name}: skipped: {fields['skip_reason']}")
        return _save(store, fields)

    log(
        f"improve {name}: fine-tuning {parent} on {stats.kept} pairs "
        f"({stats.rule} {stats.parameter}, kept {stats.kept_fraction:.1%} of samples), lr {lr:.2e}; "
        f"parent validation reward {parent_valid:.4f}"
    )
    result = finetune(
        spec,
        store,
        measured,
        pairs,
        store.training_dir(grow, step),
        lr=lr,
        seed=spec.seed + step_number(imp, grow, step),
        reward=reward,
        loss=imp.loss,
        behaviour=store.policy(policy_name(*sampler_of(spec, grow))),
        log=log,
    )
    lora = adapter_lineage(result.best_dir)
    if lora is not None:
        lora["applies_to"] = store.rel(Path(lora["applies_to"]))
    fields.update(
        lora=lora,
        trained_checkpoint=store.rel(result.best_dir),
        best_trained_valid_reward=result.best_valid_reward,
        train_seconds=result.seconds,
        train_steps=result.steps,
        history=result.history,
        status="improved" if result.improved else "not_improved",
    )
    if result.improved:
        fields.update(
            checkpoint=store.rel(result.best_dir),
            checkpoint_hash=weights_hash(result.best_dir),
            valid_reward=result.best_valid_reward,
        )
    log(
        f"improve {name}: {fields['status']}: best validation reward "
        f"{result.best_valid_reward:.4f} vs parent {parent_valid:.4f}; hands on {fields['checkpoint']}"
    )
    return _save(store, fields)


def _save(store: ExperimentStore, fields: dict) -> StepRecord:
    record = StepRecord(**fields)
    store.put(record)
    return record
