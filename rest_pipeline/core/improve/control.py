"""The control ReST has to beat: the BC policy fine-tuned for the same Improve steps, at the same
learning rates and budgets, with the same keep-the-best rule, on the original pairs only.

An under-trained BC policy gains from any extra fine-tuning; only the gap between the final
ReST policy and this control is owed to the reward-filtered samples.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rest_pipeline.core.base_policy import Layout
from rest_pipeline.core.evaluation.policy_eval import evaluate_policy
from rest_pipeline.core.improve.evaluation import eval_splits, final_step, read_summary
from rest_pipeline.core.improve.step import lineage, make_reward_fn, step_number, valid_reward, validation_set
from rest_pipeline.core.paths import atomic_path
from rest_pipeline.core.policy.model import load_policy
from rest_pipeline.core.policy.tokenizer import load_tokenizer
from rest_pipeline.core.rewards.base import RewardModel
from rest_pipeline.core.store.candidates import CandidateStore
from rest_pipeline.core.training.bc import train_bc
from rest_pipeline.core.training.losses import make_loss
from rest_pipeline.spec import ExperimentSpec

Log = Callable[[str], None]


class ControlError(RuntimeError):
    """The ReST chain the control mirrors is not there yet."""


@dataclass(frozen=True)
class ControlStep:
    mirrors: str  # the ReST step whose rate and budget this step copies, e.g. grow_1/improve_3
    grow: int
    lr: float
    pairs: int  # original pairs of that grow's sources
    status: str  # improved | not_improved
    parent_valid_reward: float
    valid_reward: float
    train_steps: int
    checkpoint: str  # what this step hands on


def control_dir(layout: Layout) -> Path:
    return layout.root / "policies" / "control"


def mirrored_steps(spec: ExperimentSpec, layout: Layout) -> list[tuple[int, int, float]]:
    """(grow, step, lr) of every step that trained on the chain of the final checkpoint, oldest first."""
    try:
        chain = lineage(spec, layout, *final_step(spec))
    except FileNotFoundError as exc:
        raise ControlError(f"the ReST chain of {spec.name} is not complete: {exc}") from exc
    return [(r.grow, r.step, r.lr) for r in reversed(chain) if r.trained_checkpoint]


def originals(store: CandidateStore, grow: int) -> tuple[list[str], list[str]]:
    """The reference pairs of the sources grow `grow` sampled: the data ReST mixes into every slice."""
    df = store.query(
        f"SELECT source, hypothesis FROM candidates WHERE grow = {int(grow)} AND origin = 'reference' "
        "ORDER BY candidate_id"
    )
    if df.empty:
        raise ControlError(f"{store.root}: grow {grow} holds no original pairs (grow.include_references off?)")
    return list(df.source), list(df.hypothesis)


def run_control(spec: ExperimentSpec, layout: Layout, rewards: list[RewardModel], log: Log = print) -> dict:
    """Fine-tune BC on the originals, step for step as ReST did; evaluate it like every checkpoint."""
    train_reward = next(r for r in rewards if r.name == spec.reward.model)
    store = CandidateStore(layout.store)
    parent = layout.base_policy
    steps: list[ControlStep] = []
    for grow, step, lr in mirrored_steps(spec, layout):
        pairs = originals(store, grow)
        parent_valid = valid_reward(spec, layout, parent, train_reward)
        train_spec = spec.improve.train.model_copy(update={"lr": lr})
        seed = spec.seed + step_number(spec.improve, grow, step)  # the seed of the step it mirrors
        fingerprint = hashlib.sha256(
            f"control|{parent}|{len(pairs[0])}|{train_spec.model_dump_json()}|{seed}".encode()
        ).hexdigest()[:16]
        name = f"grow_{grow}/improve_{step}"
        log(f"control {name}: fine-tuning {parent} on {len(pairs[0])} original pairs, lr {lr:.2e}")
        torch.manual_seed(seed)
        result = train_bc(
            load_policy(parent),
            load_tokenizer(parent),
            pairs,
            validation_set(spec, layout),
            train_spec,
            control_dir(layout) / f"grow_{grow}_improve_{step}",
            seed=seed,
            max_length=spec.tokenizer.max_length,
            fingerprint=fingerprint,
            log=log,
            reward_fn=make_reward_fn(train_reward),
            loss_fn=make_loss("bc"),
        )
        improved = result.best_metric > parent_valid + spec.improve.min_improvement
        if improved:
            parent = result.best_dir
        steps.append(
            ControlStep(
                mirrors=name,
                grow=grow,
                lr=lr,
                pairs=len(pairs[0]),
                status="improved" if improved else "not_improved",
                parent_valid_reward=round(parent_valid, 5),
                valid_reward=round(max(result.best_metric, parent_valid), 5),
                train_steps=result.steps,
                checkpoint=str(parent),
            )
        )
        log(f"control {name}: {steps[-1].status}: {result.best_metric:.4f} vs parent {parent_valid:.4f}")
    summary = evaluate_policy(
        parent,
        eval_splits(spec, layout),
        rewards,
        control_dir(layout) / "eval",
        max_length=spec.tokenizer.max_length,
        backend=spec.grow.backend,
        log=log,
    )
    rest = read_summary(layout, *final_step(spec))
    bc = read_summary(layout, 0, 0)
    result = {
        "steps": [asdict(s) for s in steps],
        "checkpoint": str(parent),
        "splits": summary["splits"],
        "rest_minus_control": _deltas(rest, summary),
        "control_minus_bc": _deltas(summary, bc),
    }
    with atomic_path(control_dir(layout) / "summary.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return result


def _deltas(a: dict, b: dict) -> dict[str, dict[str, float]]:
    """Per split, a - b for every numeric score both summaries hold."""
    out: dict[str, dict[str, float]] = {}
    for split, row in a["splits"].items():
        other = b["splits"].get(split, {})
        out[split] = {
            k: round(v - other[k], 5)
            for k, v in row.items()
            if isinstance(v, int | float) and isinstance(other.get(k), int | float)
        }
    return out


def read_control(layout: Layout) -> dict | None:
    path = control_dir(layout) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None
