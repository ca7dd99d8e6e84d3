"""Evaluation along the ReST chain: per checkpoint, the reward-hacking verdict against its
parent, and Best-of-N curves of the BC and the final policy."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rest_pipeline.core.base_policy import Layout
from rest_pipeline.core.corpus.splits import load_split
from rest_pipeline.core.evaluation.policy_eval import best_of_n, evaluate_policy, weights_hash
from rest_pipeline.core.grow.run import settings_for
from rest_pipeline.core.grow.sampling import SamplingSettings
from rest_pipeline.core.improve.step import checkpoint_of, parent_of, read_step
from rest_pipeline.core.paths import atomic_dir, atomic_path
from rest_pipeline.core.rewards.base import RewardModel
from rest_pipeline.spec import ExperimentSpec

Log = Callable[[str], None]


def eval_splits(spec: ExperimentSpec, layout: Layout) -> dict[str, pd.DataFrame]:
    return {s: load_split(layout.corpus, s) for s in spec.evaluation.splits}


def read_summary(layout: Layout, grow: int, step: int) -> dict:
    path = layout.eval_dir(grow, step) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: evaluation of {grow}/{step} not materialized")
    return json.loads(path.read_text())


def evaluate_step(
    spec: ExperimentSpec, layout: Layout, grow: int, step: int, rewards: list[RewardModel], log: Log = print
) -> dict:
    """Evaluate the checkpoint (grow, step) hands on; (0, 0) is the BC policy.

    A step that did not train (skipped, or did not beat its parent) hands on its parent's
    weights, so its evaluation is the parent's, copied and marked as inherited.
    """
    out = layout.eval_dir(grow, step)
    if grow > 0 and read_step(layout, grow, step).status != "improved":
        parent = layout.eval_dir(*parent_of(spec, grow, step))
        summary = json.loads((parent / "summary.json").read_text())
        summary["inherited_from"] = str(parent)
        with atomic_dir(out) as tmp:
            for f in parent.glob("*.parquet"):
                shutil.copy2(f, tmp / f.name)
            (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
        log(f"eval {grow}/{step}: no new weights; inherits {parent}")
        return summary
    diversity = SamplingSettings(
        samples_per_source=spec.improve.diversity_samples,
        temperature=spec.grow.temperature,
        top_k=spec.grow.top_k,
        top_p=spec.grow.top_p,
        max_new_tokens=spec.grow.max_new_tokens,
        seed=spec.seed,
    )
    return evaluate_policy(
        checkpoint_of(layout, grow, step),
        eval_splits(spec, layout),
        rewards,
        out,
        max_length=spec.tokenizer.max_length,
        diversity=diversity,
        diversity_sources=spec.improve.diversity_sources,
        backend=spec.grow.backend,
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
    spec: ExperimentSpec, summary: dict, parent: dict, train_reward: str, independent: str | None
) -> HackingVerdict:
    """Reward hacking: the training reward rises while BLEU and the independent reward fall beyond margins."""
    split = "test" if "test" in summary["splits"] else next(iter(summary["splits"]))
    cur, par = summary["splits"][split], parent["splits"][split]
    d_train = cur[f"reward_{train_reward}"] - par[f"reward_{train_reward}"]
    d_bleu = cur["bleu"] - par["bleu"]
    d_ind = cur[f"reward_{independent}"] - par[f"reward_{independent}"] if independent else None
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


def final_step(spec: ExperimentSpec) -> tuple[int, int]:
    return spec.improve.grows, spec.improve.steps


def best_of_n_curves(spec: ExperimentSpec, layout: Layout, reward: RewardModel, log: Log = print) -> dict:
    """Best-of-N on valid for the BC policy and the final ReST policy (reused when both are unchanged)."""
    valid = load_split(layout.corpus, "valid").head(spec.improve.best_of_n_sources)
    base = settings_for(spec, grow=0, shard=0)
    settings = SamplingSettings(**{**base.__dict__, "seed": spec.seed + 99})
    policies = {"bc": layout.base_policy, "rest": checkpoint_of(layout, *final_step(spec))}
    key = "|".join(
        [weights_hash(p) for p in policies.values()]
        + [reward.version, settings.describe(), str(spec.improve.best_of_n), str(len(valid)), spec.grow.backend]
    )
    out_file = layout.best_of_n / "curves.json"
    if out_file.is_file() and json.loads(out_file.read_text()).get("key") == key:
        log(f"best-of-n: unchanged policies; reusing {out_file}")
        return json.loads(out_file.read_text())
    result: dict = {"key": key, "reward": reward.name, "sources": len(valid), "ns": spec.improve.best_of_n}
    for label, ckpt in policies.items():
        curve = best_of_n(
            ckpt,
            list(valid.source),
            list(valid.target),
            reward,
            spec.improve.best_of_n,
            settings,
            layout.best_of_n / f"{label}.samples.parquet",
            backend=spec.grow.backend,
            max_length=spec.tokenizer.max_length,
            log=log,
        )
        result[label] = {"checkpoint": str(ckpt), "curve": {str(n): v for n, v in curve.items()}}
        log(f"best-of-n {label}: {curve}")
    result["matching"] = matching_n(result)
    result["rest_small_n_reaches_bc_larger_n"] = any(
        m["bc_n_reached"] is not None and m["bc_n_reached"] > m["rest_n"] for m in result["matching"]
    )
    with atomic_path(out_file) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return result


def matching_n(result: dict) -> list[dict]:
    """For each N of the ReST policy, the largest N at which BC does no better (the paper: N<10 vs N=200)."""
    bc, rest = result["bc"]["curve"], result["rest"]["curve"]
    rows = []
    for n in sorted(rest, key=int):
        reached = [int(m) for m in bc if bc[m] <= rest[n]]
        rows.append({"rest_n": int(n), "rest_reward": rest[n], "bc_n_reached": max(reached) if reached else None})
    return rows


def summary_path(layout: Layout, grow: int, step: int) -> Path:
    return layout.eval_dir(grow, step) / "summary.json"
