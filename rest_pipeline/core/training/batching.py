"""Token-bucketed training batches: similar lengths together, a fixed token budget per batch (the
policy family turns a group of indices into tensors: core/policy/family.py).

The batch order of every epoch is a pure function of (seed, epoch), so a resumed run can
skip exactly the batches it already trained on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from rest_pipeline.spec.training import Bucketing

# Bucketing (the spec's bc.bucketing):
# exact: sorted by target then source length, ties in a random order per epoch (fairseq's way): ~97 % of
#   a padded batch is real tokens on the default corpus.
# jittered: sorted by target length plus up to 2 tokens of noise, sources unsorted (this project's first
#   way, kept so older results can be re-made): ~78 %, its sources only ~66 % real (bench/bc_bench.py).


def make_batches(
    src: Sequence[Sequence[int]],
    tgt: Sequence[Sequence[int]],
    max_tokens: int,
    seed: int,
    epoch: int,
    bucketing: Bucketing = "exact",
) -> list[list[int]]:
    """Group example indices so that padded (source + target) tokens stay under max_tokens."""
    rng = random.Random(seed * 100_003 + epoch)
    if bucketing == "exact":
        keys = [(len(t), len(s), rng.random()) for s, t in zip(src, tgt, strict=True)]
    elif bucketing == "jittered":
        keys = [(len(t) + rng.random() * 2, len(s)) for s, t in zip(src, tgt, strict=True)]
    else:
        raise ValueError(f"bucketing must be 'exact' or 'jittered', not {bucketing!r}")
    order = sorted(range(len(src)), key=lambda i: keys[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    max_s = max_t = 0
    for i in order:
        ms, mt = max(max_s, len(src[i])), max(max_t, len(tgt[i]))
        if cur and (ms + mt) * (len(cur) + 1) > max_tokens:
            batches.append(cur)
            cur, ms, mt = [], len(src[i]), len(tgt[i])
        cur.append(i)
        max_s, max_t = ms, mt
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches
