"""`bc`: supervised training of the base policy (Improve steps take the same knobs, improve.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rest_pipeline.spec.base import _Strict

# How pairs are grouped into batches (core/training/batching.py).
Bucketing = Literal["exact", "jittered"]


class BCSpec(_Strict):
    """Supervised (behavioural cloning) training of the base policy.

    Training stops on counts only (epochs, max_steps, patience over validations), so the same spec and
    seed give the same model on a quiet or a loaded machine. `time_budget_minutes` is an opt-in safety
    net: when it fires the record says so (`clock_cut`) and the report flags what it undermines.
    """

    max_tokens: int = Field(4096, ge=64)  # source+target tokens per batch (padded)
    # How pairs are grouped into batches (core/training/batching.py). exact sorts by target then source
    # length: ~97 % real tokens on the default corpus against ~78 %, 1.31x BC tokens/s, but batches of one
    # length, which a 300-pair synthetic task learned unreliably with; jittered (target length plus noise,
    # sources unsorted) stays the default until a whole ReST run on exact buckets is judged (research/log.md).
    bucketing: Bucketing = "jittered"
    epochs: int = Field(12, ge=1)
    max_steps: int | None = Field(None, ge=1)
    time_budget_minutes: float | None = Field(None, gt=0)
    # Forward passes in bf16 autocast (weights, optimizer and gradients stay fp32). auto: bf16 where the
    # hardware computes it natively (CUDA, a CPU with AVX512-BF16/AMX), else fp32; the record says which.
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(400, ge=0)
    decay: Literal["inverse_sqrt", "linear", "cosine"] = "inverse_sqrt"
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
    betas: tuple[float, float] = Field((0.9, 0.98), strict=False)  # YAML gives a list
    clip_norm: float = Field(1.0, gt=0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    validate_every_steps: int | None = Field(None, ge=1)  # None = once per epoch
    validate_pairs: int | None = Field(None, ge=1)  # valid pairs decoded for BLEU (None = all)
    keep_best_by: Literal["bleu", "loss", "reward"] = "bleu"  # reward: mean validation reward (Improve)
    patience: int | None = Field(None, ge=1)  # validations without improvement before stopping
    average_last: int = Field(1, ge=1)  # average the last k validation checkpoints' weights
    save_every_steps: int = Field(200, ge=1)  # resume checkpoint cadence
