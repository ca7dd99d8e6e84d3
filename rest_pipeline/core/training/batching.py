"""Token-bucketed training batches: similar lengths together, a fixed token budget per batch.

The batch order of every epoch is a pure function of (seed, epoch), so a resumed run can
skip exactly the batches it already trained on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    decoder_input_ids: torch.Tensor
    labels: torch.Tensor  # -100 where padded
    target_tokens: int


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


def collate(
    idx: Sequence[int],
    src: Sequence[Sequence[int]],
    tgt: Sequence[Sequence[int]],
    pad_id: int,
    decoder_start_id: int,
) -> Batch:
    n = len(idx)
    ls = max(len(src[i]) for i in idx)
    lt = max(len(tgt[i]) for i in idx)
    input_ids = torch.full((n, ls), pad_id, dtype=torch.long)
    labels = torch.full((n, lt), -100, dtype=torch.long)
    dec = torch.full((n, lt), pad_id, dtype=torch.long)
    for row, i in enumerate(idx):
        s, t = src[i], tgt[i]
        input_ids[row, : len(s)] = torch.tensor(s)
        labels[row, : len(t)] = torch.tensor(t)
        dec[row, 0] = decoder_start_id
        dec[row, 1 : len(t)] = torch.tensor(t[:-1])
    return Batch(input_ids, (input_ids != pad_id).long(), dec, labels, int((labels != -100).sum()))
