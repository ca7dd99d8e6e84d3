"""Experiments side by side, shaped like the paper's loss ablation: per experiment, its final
checkpoint's reward under the training reward model, the independent reward, BLEU and the diversity
of its samples, with 95 % paired-bootstrap intervals against a baseline experiment (e.g. BC)."""

from __future__ import annotations

from rest_pipeline.core.evaluation.significance import eval_deltas
from rest_pipeline.core.report import score_columns
from rest_pipeline.core.rewards.factory import independent_reward
from rest_pipeline.core.store.experiment import FINAL, ExperimentStore
from rest_pipeline.core.store.records import Evaluation
from rest_pipeline.core.tables import md_table
from rest_pipeline.spec import ExperimentSpec


def compare(runs: list[tuple[ExperimentSpec, ExperimentStore]]) -> list[dict]:
    """One row per experiment; deltas are each final checkpoint minus the first experiment's."""
    base_spec, base_store = runs[0]
    train, independent = base_spec.reward.model, independent_reward(base_spec)
    metrics = [f"reward_{train}"] + ([f"reward_{independent}"] if independent else []) + ["bleu"]
    base_eval = base_store.get(Evaluation, policy=FINAL)
    rows = []
    for spec, store in runs:
        if spec.reward.model != train or spec.evaluation.splits != base_spec.evaluation.splits:
            raise ValueError(f"{spec.name}: compared experiments must share the training reward and the splits")
        final = store.get(Evaluation, policy=FINAL)
        steps = [s for s in store.steps() if not store._from_parent(s.grow, inclusive=False)]
        row: dict = {
            "experiment": spec.name,
            "loss": spec.improve.loss,
            "final": store.canonical(FINAL),
            "steps_improved": sum(s.status == "improved" for s in steps),
        }
        row.update(score_columns(final, train, independent))
        if spec.name != base_spec.name:
            for d in eval_deltas(base_store, base_eval, final, base_spec.evaluation.splits, metrics, b_store=store):
                name = f"{d['split']}_{d['metric'].removeprefix('reward_')}_minus_{base_spec.name}"
                row[name] = f"{d['delta']:+.4f} {d['ci95']}{' *' if d['significant'] else ''}"
        rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    base = rows[0]["experiment"]
    columns = list(dict.fromkeys(c for r in rows for c in r))  # the baseline row has no delta columns
    return (
        md_table(rows, columns)
        + f"\nDeltas: final checkpoint minus {base}'s on the greedy outputs, with a 95 % paired-bootstrap "
        "interval (2,000 resamples of the sentences; BLEU is the corpus score recomputed on each resample); "
        "* marks an interval that excludes 0.\n"
    )
