"""A rating round: which test sentences people rate, and which systems' outputs they see side by side.

Items are drawn from the test split with a seeded generator, so the same request gives the same
round (and the same round id) on any machine. `stratify="disagree"` draws them where the reward
model and sentence BLEU prefer different systems, the items the paper's last finding is about.
Each item shows its systems in an order drawn per item; the page names them A, B, ... only.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
from sacrebleu.metrics import BLEU

from rest_pipeline.core.evaluation.checkpoint import hypotheses
from rest_pipeline.core.paths import atomic_path
from rest_pipeline.core.store.experiment import BASE, ExperimentStore
from rest_pipeline.core.store.records import Evaluation
from rest_pipeline.core.store.side_records import RatingRound

STRATIFY = ("random", "disagree")


class RoundError(ValueError):
    """A round that cannot be made: an unknown or unevaluated checkpoint, too few items, a bad option."""


def _system_outputs(store: ExperimentStore, system: str, split: str) -> tuple[pd.DataFrame, str]:
    """A system's greedy outputs on the split (with their rewards) and its checkpoint folder."""
    try:
        name = store.canonical(system)
        evaluation = store.get(Evaluation, policy=name)
    except (FileNotFoundError, ValueError) as e:
        raise RoundError(
            f"checkpoint '{system}' of {store.experiment} has no evaluation to rate ({e}); "
            f"checkpoints: {', '.join([BASE, *(f'grow_{r.grow}/improve_{r.step}' for r in store.steps())])}"
        ) from None
    if split not in evaluation.splits:
        raise RoundError(f"checkpoint '{system}' was not evaluated on '{split}'")
    return hypotheses(store, evaluation, split), evaluation.checkpoint


def make_round(
    store: ExperimentStore,
    checkpoints: list[str],
    *,
    items: int = 100,
    seed: int = 0,
    stratify: str = "random",
    reward: str,
    split: str = "test",
) -> RatingRound:
    """The round for these checkpoints against BC (made once, then found again by its id)."""
    if stratify not in STRATIFY:
        raise RoundError(f"--stratify must be one of {', '.join(STRATIFY)}, got '{stratify}'")
    if items < 1:
        raise RoundError(f"--items must be at least 1, got {items}")
    systems = [BASE, *dict.fromkeys(store.canonical(c) for c in checkpoints if store.canonical(c) != BASE)]
    if len(systems) < 2:
        raise RoundError("name at least one checkpoint besides the BC policy (e.g. --checkpoint final)")
    evaluated = {s: _system_outputs(store, s, split) for s in systems}
    outputs = {s: out for s, (out, _) in evaluated.items()}
    column = f"reward_{reward}"
    base = outputs[BASE][["source_id", "source", "reference"]].reset_index(drop=True)
    for i, s in enumerate(systems):
        out = outputs[s].set_index("source_id").loc[base.source_id]
        if column not in out.columns:
            raise RoundError(f"checkpoint '{s}' has no '{reward}' scores on {split}")
        base[f"hyp_{i}"] = out.hypothesis.to_numpy()
        base[f"reward_{i}"] = out[column].to_numpy(dtype=float)
    key = json.dumps([store.experiment, systems, items, seed, stratify, split, reward])
    round_id = hashlib.sha256(key.encode()).hexdigest()[:12]
    try:
        return store.get(RatingRound, round_id=round_id)
    except FileNotFoundError:
        pass
    rng = np.random.default_rng(seed)
    pool = np.arange(len(base))
    if stratify == "disagree":
        pool = pool[_disagreements(base, len(systems))]
    if len(pool) < items:
        raise RoundError(f"only {len(pool)} test sentences fit --stratify {stratify}; ask for --items {len(pool)}")
    chosen = base.iloc[np.sort(rng.choice(pool, size=items, replace=False))].reset_index(drop=True)
    chosen.insert(0, "item", np.arange(items))
    chosen["order"] = [json.dumps(rng.permutation(len(systems)).tolist()) for _ in range(items)]
    items_file = store.rating_round_dir(round_id) / "items.parquet"
    with atomic_path(items_file) as tmp:
        chosen.to_parquet(tmp, index=False)
    record = RatingRound(
        round_id=round_id,
        split=split,
        systems=systems,
        checkpoints=[evaluated[s][1] for s in systems],
        items=items,
        seed=seed,
        stratify=stratify,
        reward=reward,
        items_file=store.rel(items_file),
    )
    store.put(record)
    return record


def _disagreements(base: pd.DataFrame, n_systems: int) -> np.ndarray:
    """Rows where the reward model's best system is not sentence BLEU's best."""
    bleu = BLEU(effective_order=True)
    by_bleu = np.array(
        [
            [bleu.sentence_score(getattr(row, f"hyp_{i}"), [row.reference]).score for i in range(n_systems)]
            for row in base.itertuples()
        ]
    )
    by_reward = base[[f"reward_{i}" for i in range(n_systems)]].to_numpy()
    distinct = (np.ptp(by_bleu, axis=1) > 0) & (np.ptp(by_reward, axis=1) > 0)
    return distinct & (by_bleu.argmax(axis=1) != by_reward.argmax(axis=1))


def round_items(store: ExperimentStore, record: RatingRound) -> pd.DataFrame:
    return pd.read_parquet(store.resolve(record.items_file))
