"""Token-bucketed training batches: similar lengths together, a fixed token budget per batch (the
policy family turns a group of indices into tensors: core/policy/family.py).

The batch order of every epoch is a pure function of (seed, epoch), so a resumed run can
skip exactly the batches it already trained on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def make_batches(
    src: Sequence[Sequence[int]],
    tgt: Sequence[Sequence[int]],
    max_tokens: int,
    seed: int,
    epoch: int,
) -> list[list[int]]:
    """Group example indices so that padded (source + target) tokens stay under max_tokens."""
    rng = random.Random(seed * 100_003 + epoch)
    # Sort by length with a little noise so batches differ from epoch to epoch.
    keys = [(len(t) + rng.random() * 2, len(s)) for s, t in zip(src, tgt, strict=True)]
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
