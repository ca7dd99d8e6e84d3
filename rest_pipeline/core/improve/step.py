"""One Improve step of ReST as a plain function, and the chain of checkpoints it builds.

Step (g, i) fine-tunes its parent — step (g, i-1), or for i = 1 the policy that sampled
grow g — on the slice of grow g that cleared the step's bar, keeps the checkpoint with the
best validation reward, and records its lineage in `step.json`. A step that does not beat
its parent's validation reward hands the parent on, and the rest of that grow is skipped, as
in the paper's algorithm; so does an empty slice (without stopping the grow).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from rest_pipeline.core.base_policy import Layout
from rest_pipeline.core.corpus.fetch import sha256_of
from rest_pipeline.core.corpus.splits import load_split
from rest_pipeline.core.evaluation.policy_eval import reward_scores, weights_hash
from rest_pipeline.core.improve.filtering import read_slice
from rest_pipeline.core.paths import atomic_path
from rest_pipeline.core.policy.generate import translate
from rest_pipeline.core.policy.model import load_policy
from rest_pipeline.core.policy.tokenizer import load_tokenizer
from rest_pipeline.core.rewards.base import RewardModel
from rest_pipeline.core.store.candidates import CandidateStore
from rest_pipeline.core.training.bc import train_bc
from rest_pipeline.core.training.losses import make_loss
from rest_pipeline.spec import DecodingSpec, ExperimentSpec, ImproveSpec

Log = Callable[[str], None]


@dataclass
class StepRecord:
    """The lineage of one Improve checkpoint: everything that went into it."""

    experiment: str
    grow: int
    step: int
    status: str  # improved | not_improved | skipped
    skip_reason: str | None
    checkpoint: str  # the policy this step hands on (its own best, or its parent's if it did not improve)
    checkpoint_hash: str
    trained_checkpoint: str | None  # what training produced, even when it did not beat the parent
    parent: str  # 'base' or 'grow_G/improve_I'
    parent_checkpoint: str
    parent_hash: str
    grow_policy: str  # checkpoint that sampled grow g
    grow_decoding: str  # sampling settings of grow g
    slice_rule: str
    slice_parameter: float
    slice_kept: int
    slice_kept_fraction: float
    slice_path: str
    slice_hash: str
    reward_model: str
    reward_version: str
    corpus_hash: str
    loss: str
    lr: float
    hyperparameters: dict
    parent_valid_reward: float | None = None
    valid_reward: float | None = None  # validation reward of `checkpoint`
    best_trained_valid_reward: float | None = None
    train_seconds: float = 0.0
    train_steps: int = 0
    history: list[dict] = field(default_factory=list)


def step_file(layout: Layout, grow: int, step: int) -> Path:
    return layout.improve_dir(grow, step) / "step.json"


def read_step(layout: Layout, grow: int, step: int) -> StepRecord:
    path = step_file(layout, grow, step)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Improve step {step} of grow {grow} not materialized")
    return StepRecord(**json.loads(path.read_text()))


def step_name(grow: int, step: int) -> str:
    return "base" if grow == 0 else f"grow_{grow}/improve_{step}"


def parent_of(spec: ExperimentSpec, grow: int, step: int) -> tuple[int, int]:
    """(grow, step) of the parent checkpoint; (0, 0) is the BC policy."""
    if step > 1:
        return grow, step - 1
    return (grow - 1, spec.improve.steps) if grow > 1 else (0, 0)


def checkpoint_of(layout: Layout, grow: int, step: int) -> Path:
    """The checkpoint a (grow, step) hands on; (0, 0) is the BC policy."""
    if grow == 0:
        return layout.base_policy
    return Path(read_step(layout, grow, step).checkpoint)


def grow_policy(spec: ExperimentSpec, layout: Layout, grow: int) -> Path:
    """Grow 1 samples from the BC policy; grow g > 1 from the last checkpoint of grow g-1."""
    return checkpoint_of(layout, *parent_of(spec, grow, 1))


def validation_set(spec: ExperimentSpec, layout: Layout) -> tuple[list[str], list[str]]:
    valid = load_split(layout.corpus, "valid")
    n = spec.improve.train.validate_pairs or len(valid)
    return list(valid.source[:n]), list(valid.target[:n])


def make_reward_fn(model: RewardModel) -> Callable[[list[str], list[str], list[str]], float]:
    return lambda src, hyp, ref: float(reward_scores(model, src, hyp, ref).mean())


def valid_reward(spec: ExperimentSpec, layout: Layout, checkpoint: Path, reward: RewardModel) -> float:
    """Greedy validation reward of a checkpoint, with the same subset and decoding as training uses; cached."""
    sources, refs = validation_set(spec, layout)
    key = f"{weights_hash(checkpoint)}:{reward.name}:{reward.version}:{len(sources)}:{spec.tokenizer.max_length}"
    cache_file = layout.root / "policies" / "valid_rewards.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    if key in cache:
        return cache[key]
    model = load_policy(checkpoint)
    tok = load_tokenizer(checkpoint)
    greedy = DecodingSpec(name="greedy", num_beams=1, max_new_tokens=spec.tokenizer.max_length)
    hyps = translate(model, tok, sources, greedy, max_source_length=spec.tokenizer.max_length)
    value = round(make_reward_fn(reward)(sources, hyps, refs), 5)
    cache[key] = value
    with atomic_path(cache_file) as tmp:
        tmp.write_text(json.dumps(cache, indent=1))
    return value


def _frame_hash(df: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(df, index=False).values.tobytes()).hexdigest()[:16]


def step_number(imp: ImproveSpec, grow: int, step: int) -> int:
    """Improve steps so far, across grows (1, 2, ...): seeds each step and versions its asset."""
    return (grow - 1) * imp.steps + step


def step_lr(imp: ImproveSpec, grow: int, step: int) -> float:
    """Lower with each step of a grow (the paper), restarting at each grow scaled by grow_lr_decay."""
    return imp.train.lr * imp.grow_lr_decay ** (grow - 1) * imp.lr_decay ** (step - 1)


def run_improve_step(
    spec: ExperimentSpec, layout: Layout, grow: int, step: int, reward: RewardModel, log: Log = print
) -> StepRecord:
    """Fine-tune the parent on this step's slice (or record why not); returns the lineage record."""
    store = CandidateStore(layout.store)
    stats, rows = read_slice(store, grow, step)
    pg, ps = parent_of(spec, grow, step)
    parent_ckpt = checkpoint_of(layout, pg, ps)
    imp = spec.improve
    k = step_number(imp, grow, step)
    lr = step_lr(imp, grow, step)
    decoding = store.query(
        f"SELECT any_value(decoding) AS d FROM candidates WHERE grow = {int(grow)} AND origin = 'sample'"
    ).d.iloc[0]
    parent_valid = valid_reward(spec, layout, parent_ckpt, reward)
    record = StepRecord(
        experiment=spec.name,
        grow=grow,
        step=step,
        status="skipped",
        skip_reason=None,
        checkpoint=str(parent_ckpt),
        checkpoint_hash=weights_hash(parent_ckpt),
        trained_checkpoint=None,
        parent=step_name(pg, ps),
        parent_checkpoint=str(parent_ckpt),
        parent_hash=weights_hash(parent_ckpt),
        grow_policy=str(grow_policy(spec, layout, grow)),
        grow_decoding=str(decoding),
        slice_rule=stats.rule,
        slice_parameter=stats.parameter,
        slice_kept=stats.kept,
        slice_kept_fraction=stats.kept_fraction,
        slice_path=stats.path,
        slice_hash=_frame_hash(rows[["source", "hypothesis"]]),
        reward_model=reward.name,
        reward_version=reward.version,
        corpus_hash=sha256_of(layout.corpus / "train.parquet")[:16],
        loss=imp.loss,
        lr=lr,
        hyperparameters=imp.train.model_dump(mode="json"),
        parent_valid_reward=parent_valid,
        valid_reward=parent_valid,
    )
    earlier = [read_step(layout, grow, j) for j in range(1, step)]
    misses = [r for r in earlier if r.status == "not_improved"]
    if len(misses) >= imp.patience:
        record.skip_reason = (
            f"grow {grow} stopped improving at step {misses[imp.patience - 1].step} "
            f"({imp.patience} step(s) did not beat their parent's validation reward); "
            "the best checkpoint goes on to the next grow"
        )
    elif stats.skip_reason:
        record.skip_reason = stats.skip_reason
    if record.skip_reason:
        log(f"improve {step_name(grow, step)}: skipped: {record.skip_reason}")
        return _save(layout, record)

    log(
        f"improve {step_name(grow, step)}: fine-tuning {parent_ckpt} on {stats.kept} pairs "
        f"({stats.rule} {stats.parameter}, kept {stats.kept_fraction:.1%} of samples), lr {lr:.2e}; "
        f"parent validation reward {parent_valid:.4f}"
    )
    torch.manual_seed(spec.seed + k)
    model = load_policy(parent_ckpt)
    tokenizer = load_tokenizer(parent_ckpt)
    train_spec = imp.train.model_copy(update={"lr": lr})
    fingerprint = hashlib.sha256(
        f"{record.parent_hash}|{record.slice_hash}|{train_spec.model_dump_json()}|{imp.loss}|{spec.seed}".encode()
    ).hexdigest()[:16]
    result = train_bc(
        model,
        tokenizer,
        (list(rows.source), list(rows.hypothesis)),
        validation_set(spec, layout),
        train_spec,
        layout.improve_dir(grow, step) / "training",
        seed=spec.seed + k,
        max_length=spec.tokenizer.max_length,
        fingerprint=fingerprint,
        log=log,
        reward_fn=make_reward_fn(reward),
        loss_fn=make_loss(imp.loss),
        rewards=list(rows.reward),
    )
    record.trained_checkpoint = str(result.best_dir)
    record.best_trained_valid_reward = round(result.best_metric, 5)
    record.train_seconds = result.train_seconds
    record.train_steps = result.steps
    record.history = result.history
    if result.best_metric > parent_valid + imp.min_improvement:
        record.status = "improved"
        record.checkpoint = str(result.best_dir)
        record.checkpoint_hash = weights_hash(result.best_dir)
        record.valid_reward = round(result.best_metric, 5)
    else:
        record.status = "not_improved"
        record.skip_reason = None
    log(
        f"improve {step_name(grow, step)}: {record.status}: best validation reward "
        f"{result.best_metric:.4f} vs parent {parent_valid:.4f}; hands on {record.checkpoint}"
    )
    return _save(layout, record)


def _save(layout: Layout, record: StepRecord) -> StepRecord:
    data = asdict(record)
    with atomic_path(step_file(layout, record.grow, record.step)) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    CandidateStore(layout.store).write_lineage(
        record.grow, record.step, {k: v for k, v in data.items() if k != "history"}
    )
    return record


def lineage(spec: ExperimentSpec, layout: Layout, grow: int, step: int) -> list[StepRecord]:
    """The chain of step records from (grow, step) back to the BC policy, newest first."""
    chain = []
    while grow > 0:
        chain.append(read_step(layout, grow, step))
        grow, step = parent_of(spec, grow, step)
    return chain
