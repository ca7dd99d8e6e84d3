"""Compute, counted the same way for ReST's checkpoints and PPO's, so the two can be compared at
equal cost: candidates sampled, reward-model calls (distinct (source, output) pairs, which is what the
score cache and PPO's per-batch de-duplication leave), target tokens trained on (every epoch), and
wall seconds of sampling, scoring and training (ReST's with the validations its steps run to keep the
best checkpoint, where the step history recorded them). The BC policy and the reward model are shared
by both methods and left out. ReST's cost of checkpoint (g, i) is every grow up to g and every Improve
step up to (g, i), whether or not the step improved: it was paid for.
"""

from __future__ import annotations

from rest_pipeline.core.store.experiment import ExperimentStore, policy_name
from rest_pipeline.core.store.queries import samples_and_new_pairs
from rest_pipeline.core.store.side_records import ComputeUsed


def rest_compute(store: ExperimentStore) -> dict[str, ComputeUsed]:
    """Cumulative compute at each ReST checkpoint, by policy name, in the order they were made."""
    per_grow = samples_and_new_pairs(store)
    grows = {int(r.grow): (int(r.samples), int(r.new_pairs)) for r in per_grow.itertuples()}
    grow_seconds = {g: sum(c.seconds for c in store.shard_costs(g)) for g in grows}
    out: dict[str, ComputeUsed] = {}
    steps = sorted(store.steps(), key=lambda r: (r.grow, r.step))
    tokens, seconds = 0, 0.0
    for rec in steps:
        # the most any row counted: the last row may be the averaged-weights row, which trained nothing
        tokens += max((int(r.get("target_tokens", 0)) for r in rec.history), default=0)
        seconds += rec.train_seconds + sum(float(r.get("validation_seconds", 0.0)) for r in rec.history)
        sampled = [g for g in grows if g <= rec.grow]
        out[policy_name(rec.grow, rec.step)] = ComputeUsed(
            candidates=sum(grows[g][0] for g in sampled),
            reward_calls=sum(grows[g][1] for g in sampled),
            target_tokens=tokens,
            seconds=round(seconds + sum(grow_seconds[g] for g in sampled), 1),
        )
    return out
