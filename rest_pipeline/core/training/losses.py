"""Sequence losses for Improve behind one small interface, so the paper's ablation losses
(GOLD, BVMPO, OAC) can be added without touching the training loop.

A loss gets the decoder logits, the labels (-100 on padding) and each example's reward, and
returns the loss summed over target tokens; the loop divides by the token count.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class SequenceLoss(Protocol):
    name: str

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, rewards: torch.Tensor, label_smoothing: float
    ) -> torch.Tensor: ...


class NLLLoss:
    """Behavioural cloning: plain (label-smoothed) NLL; the filter already chose the data."""

    name = "bc"

    def __call__(self, logits, labels, rewards, label_smoothing):
        return F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), label_smoothing=label_smoothing, reduction="sum"
        )


LOSSES: dict[str, type] = {"bc": NLLLoss}


def make_loss(name: str) -> SequenceLoss:
    if name not in LOSSES:
        raise ValueError(f"improve.loss: '{name}' is not implemented (available: {sorted(LOSSES)})")
    return LOSSES[name]()
