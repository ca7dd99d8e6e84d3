"""`improve`: the rising bar, the loss, a step's training, the schedule of grows and steps."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from rest_pipeline.spec.base import _Strict
from rest_pipeline.spec.training import BCSpec


class ThresholdFilter(_Strict):
    """A global bar per Improve step on rewards in [0, 1]: candidates with reward >= tau stay."""

    kind: Literal["threshold"]
    values: list[float] = Field([0.0, 0.7, 0.8, 0.9, 0.95], min_length=1)
    # Paper: tau_1 is chosen above the mean reward of D_g. Steps whose threshold is not above the
    # grow's mean reward are skipped (recorded as such) instead of training on nearly everything.
    first_above_mean: bool = True
    bounds: ClassVar[tuple[float, float]] = (0.0, 1.0)


class PercentileFilter(_Strict):
    """Per source, keep samples at or above the p-th percentile of that source's samples (p = 100: its best)."""

    kind: Literal["percentile"]
    values: list[float] = Field([50.0, 75.0, 90.0, 95.0], min_length=1)
    bounds: ClassVar[tuple[float, float]] = (0.0, 100.0)


class InterpolatedFilter(_Strict):
    """Per source, tau_s = gamma * max_s + (1 - gamma) * mean_s over that source's samples."""

    kind: Literal["interpolated"]
    values: list[float] = Field([0.0, 0.25, 0.5, 0.75], min_length=1)
    bounds: ClassVar[tuple[float, float]] = (0.0, 1.0)


FilterSpec = Annotated[ThresholdFilter | PercentileFilter | InterpolatedFilter, Field(discriminator="kind")]

# Improve losses that exist; a name is added here only with its implementation (training/losses.py).
LossName = Literal["bc", "gold", "bvmpo", "oac"]


class GoldSpec(_Strict):
    """GOLD's options (Pang & He 2021): the lower bound u of the per-token importance weight."""

    weight_floor: float = Field(0.2, gt=0, le=1)  # the authors' --iw-min in their translation runs


class BVMPOSpec(_Strict):
    """BVMPO's options (V-MPO, Song et al. 2020, with a behaviour-value baseline; ReST paper's ablation)."""

    eps_eta: float = Field(0.1, gt=0)  # V-MPO's KL bound of the temperature dual
    eta: float = Field(1.0, gt=0)  # initial (or fixed) temperature
    learn_eta: bool = True
    top_fraction: float = Field(0.5, gt=0, le=1)  # V-MPO keeps the top half of advantages
    kl_start: float = Field(1.0, gt=0)  # lambda of KL(pi_b || pi), annealed geometrically ...
    kl_end: float = Field(1e-5, gt=0)  # ... to this by the end of training (the ReST paper: 1 -> 1e-5)


class OACSpec(_Strict):
    """Offline actor-critic's options (Mathieu et al. 2021)."""

    rho_max: float = Field(1.0, gt=0)  # clip of the per-token importance ratio pi / pi_b
    value_coef: float = Field(0.5, ge=0)  # weight of the critic's squared error


class ImproveTrainSpec(BCSpec):
    """Fine-tuning in one Improve step: BC's knobs, with Improve's defaults (lower lr, a short step
    counted in updates, so a step trains the same model on any machine)."""

    max_tokens: int = Field(2500, ge=64)
    epochs: int = Field(2, ge=1)
    max_steps: int | None = Field(300, ge=1)
    lr: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(50, ge=0)
    decay: Literal["inverse_sqrt", "linear", "cosine"] = "linear"
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    validate_every_steps: int | None = Field(150, ge=1)
    validate_pairs: int | None = Field(400, ge=1)
    keep_best_by: Literal["reward"] = "reward"  # the paper keeps the checkpoint with the best validation reward
    save_every_steps: int = Field(100, ge=1)


_MOVED_FILTER_FIELDS = {"thresholds": "threshold", "percentiles": "percentile", "gammas": "interpolated"}


class ImproveSpec(_Strict):
    """Improve: filter each grow's candidates with a rising bar and fine-tune the previous policy.

    The schedule has `grows` Grow generations, each followed by one Improve step per value of
    the filter (`filter.values`).
    """

    grows: int = Field(2, ge=1)
    filter: FilterSpec = ThresholdFilter(kind="threshold")
    # The original (reference) pairs of the grown sources join every slice, whatever their reward.
    mix_originals: bool = True
    # Keep one row per distinct (source, output) in a slice: a translation sampled k times is not k
    # times the evidence (off by default, as in the paper).
    dedupe: bool = False
    loss: LossName = "bc"
    # Options of the offline-RL losses (used only when `loss` names them).
    gold: GoldSpec = GoldSpec()
    bvmpo: BVMPOSpec = BVMPOSpec()
    oac: OACSpec = OACSpec()
    # Fine-tuning of each step; it keeps the checkpoint with the best validation reward.
    train: ImproveTrainSpec = ImproveTrainSpec()
    # Learning rate of Improve step i of grow g: train.lr * grow_lr_decay**(g-1) * lr_decay**(i-1).
    # The bar restarts with every grow (fresh samples from a better policy), so does the step decay;
    # decaying across grows too (k-th step overall) left Grow 2 too small a rate to move in its budget.
    lr_decay: float = Field(0.8, gt=0, le=1)
    grow_lr_decay: float = Field(1.0, gt=0, le=1)
    # A step counts as improving only if its best validation reward beats its parent's by more than this.
    min_improvement: float = Field(0.0, ge=0)
    # Non-improving steps in a grow after which its remaining steps are skipped (1 = stop at the first).
    patience: int = Field(1, ge=1)
    # Reward-hacking guard per checkpoint, against its parent: training reward up while test BLEU falls
    # by more than `hacking_bleu_drop` points and the independent reward falls by more than
    # `hacking_independent_drop`.
    hacking_bleu_drop: float = Field(1.0, ge=0)
    hacking_independent_drop: float = Field(0.01, ge=0)
    # Best-of-N at inference, on the first `best_of_n_sources` validation sources.
    best_of_n: list[int] = [1, 2, 4, 8, 16, 32]
    best_of_n_sources: int = Field(300, ge=1)
    # Diversity probe per checkpoint: this many samples on `diversity_sources` validation sources.
    diversity_samples: int = Field(8, ge=1)
    diversity_sources: int = Field(200, ge=1)
    # Control run: BC fine-tuned for the same steps (rates, budgets, keep-the-best rule) on the original
    # pairs only, so the report separates ReST's gain from the gain of merely training longer.
    control: bool = False

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, data: object) -> object:
        """Specs written before the filter became one field get a message that says how to rewrite them."""
        if isinstance(data, dict):
            old = [k for k in (*_MOVED_FILTER_FIELDS, "first_threshold_above_mean") if k in data]
            if old or isinstance(data.get("filter"), str):
                kind = data.get("filter") if isinstance(data.get("filter"), str) else "threshold"
                raise ValueError(
                    f"improve.filter is one field now: write `filter: {{kind: {kind}, values: [...]}}` "
                    f"(threshold also takes first_above_mean) instead of improve.{', improve.'.join(old or ['filter'])}"
                )
        return data

    @model_validator(mode="after")
    def _check(self) -> ImproveSpec:
        values, (lo, hi) = self.filter.values, self.filter.bounds
        if any(not lo <= v <= hi for v in values):
            raise ValueError(f"improve.filter.values must lie in [{lo}, {hi}] for {self.filter.kind}, got {values}")
        if any(b < a for a, b in zip(values, values[1:], strict=False)):
            raise ValueError(f"improve.filter.values must not decrease (the bar rises step by step), got {values}")
        if sorted(set(self.best_of_n)) != self.best_of_n or self.best_of_n[0] < 1:
            raise ValueError(f"improve.best_of_n must be increasing positive integers, got {self.best_of_n}")
        return self

    @property
    def schedule(self) -> list[float]:
        """The filter parameter of each Improve step of a grow."""
        return self.filter.values

    @property
    def steps(self) -> int:
        return len(self.filter.values)
