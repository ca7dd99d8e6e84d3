"""Dropout for CPU training whose random mask comes from numpy's PCG64 instead of torch's `bernoulli_`.

Why: on a CPU, torch's `bernoulli_` draws one mt19937 number per element in a serial loop (its vectorised
MKL generator serves Intel CPUs only). A Marian of the default size calls dropout 17 times a forward
pass, and on an AVX2 EPYC that was ~7 % of a BC update (profiled: research/log.md, seventh session).
numpy's PCG64 fills the same mask in 16-bit lanes several times faster (bench/dropout_bench.py).

The output has the distribution of `F.dropout`: each element kept with probability 1 - p (to 1/65536)
and scaled by 1 / (1 - p); the backward is the product with the same mask. Each mask is seeded by one
draw from torch's default generator, so a run stays a pure function of its seed and resumes from its
saved RNG state like any other torch randomness.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

_STOCK_DROPOUT = F.dropout
_LANES = 1 << 16  # one 16-bit draw per element


def pcg_dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """`F.dropout(x, p, training)` with the mask drawn by numpy; falls back to torch's own where that is
    not a CPU tensor, p is 0 or 1, or the caller asked for in-place."""
    if not training or p == 0.0 or p == 1.0 or inplace or x.device.type != "cpu" or x.numel() == 0:
        return _STOCK_DROPOUT(x, p, training, inplace)
    seed = int(torch.randint(0, 2**62, (1,)))
    bits = np.frombuffer(np.random.Generator(np.random.PCG64(seed)).bytes(2 * x.numel()), dtype=np.uint16)
    keep = torch.from_numpy(bits >= round(p * _LANES)).view(x.shape)
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


@contextlib.contextmanager
def numpy_masked_dropout() -> Iterator[None]:
    """Within the block, `torch.nn.functional.dropout` (what HF's layers call by attribute at each forward)
    is `pcg_dropout`. Training runs its forward passes on one thread, so nothing else sees the swap."""
    F.dropout = pcg_dropout
    try:
        yield
    finally:
        F.dropout = _STOCK_DROPOUT
