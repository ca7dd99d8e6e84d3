"""Experiment specs: one typed YAML file holds everything a run depends on.

A spec is validated with pydantic before anything runs, and errors name both the
file and the dotted field path so a user can fix a typo without reading code.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SPEC_DIR = Path(__file__).parent / "specs"


class SpecError(ValueError):
    """A spec file could not be read or failed validation."""


class _SpecLoader(yaml.SafeLoader):
    """YAML as people write specs: a repeated key is an error (not "last wins"), and 1e-3 is a number."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _Strict(BaseModel):
    # Unknown keys are errors: a misspelt field must not be silently ignored.
    # No coercion either: `max_steps: true` or `samples_per_source: "3"` is a mistake, not a number; nor
    # is an infinite or NaN setting.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class LinePolicy(_Strict):
    """What to do with each kind of bad line: fail the run, or skip the pair and count it."""

    empty: Literal["reject", "skip"] = "reject"
    overlong: Literal["reject", "skip"] = "reject"
    undecodable: Literal["reject", "skip"] = "reject"
    max_chars: int = Field(1000, gt=0)


class DataSpec(_Strict):
    dataset: str
    source_lang: str
    target_lang: str
    train: str
    valid: str
    test: str
    # Keep only the first N training pairs (smoke runs); None keeps all.
    max_train_pairs: int | None = Field(None, gt=0)
    max_eval_pairs: int | None = Field(None, gt=0)
    lines: LinePolicy = LinePolicy()


class TokenizerSpec(_Strict):
    kind: Literal["sentencepiece", "pretrained"] = "sentencepiece"
    vocab_size: int = Field(8000, ge=16)
    model_type: Literal["unigram", "bpe"] = "unigram"
    character_coverage: float = Field(1.0, gt=0.0, le=1.0)
    max_length: int = Field(128, ge=8)
    # Sentences sampled for SentencePiece training (None = all of train).
    input_sentence_size: int | None = Field(None, gt=0)


class LoraSpec(_Strict):
    """Low-rank adapters (peft) for Improve steps: each step saves only its adapter; loading merges it
    into its parent, so sampling, evaluation and exports see a plain checkpoint."""

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # Module names to adapt (peft's target_modules); "all-linear" adapts every linear layer.
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class PolicySpec(_Strict):
    """marian_scratch / pretrained: an encoder-decoder (a small Marian from scratch, or any HF seq2seq
    folder). causal_lm: a decoder-only LM prompted to translate (from scratch with the fields below, a
    tiny Llama-shaped model, or any HF causal-LM folder given as pretrained_path)."""

    kind: Literal["marian_scratch", "pretrained", "causal_lm"] = "marian_scratch"
    pretrained_path: str | None = None
    # causal_lm: the prompt before the completion; {source} is replaced by the source sentence. With
    # chat_template and a tokenizer that has one, the prompt is sent as the user's turn instead.
    prompt: str = "Translate German to English:\n{source}\nEnglish:"
    chat_template: bool = True
    # causal_lm: where a completion ends, at the tokenizer's EOS or at the first newline.
    stop: Literal["eos", "newline"] = "eos"
    lora: LoraSpec | None = None
    d_model: int = Field(256, ge=8)
    encoder_layers: int = Field(3, ge=1)
    decoder_layers: int = Field(3, ge=1)
    attention_heads: int = Field(4, ge=1)
    ffn_dim: int = Field(1024, ge=8)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    attention_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    activation_dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self) -> PolicySpec:
        if self.kind == "pretrained" and not self.pretrained_path:
            raise ValueError("policy.pretrained_path is required when policy.kind is 'pretrained'")
        if self.kind == "causal_lm" and "{source}" not in self.prompt:
            raise ValueError("policy.prompt must contain '{source}' (where the source sentence goes)")
        if self.d_model % self.attention_heads:
            raise ValueError("policy.d_model must be divisible by policy.attention_heads")
        return self


class BCSpec(_Strict):
    """Supervised (behavioural cloning) training of the base policy.

    Training stops on counts only (epochs, max_steps, patience over validations), so the same spec and
    seed give the same model on a quiet or a loaded machine. `time_budget_minutes` is an opt-in safety
    net: when it fires the record says so (`clock_cut`) and the report flags what it undermines.
    """

    max_tokens: int = Field(4096, ge=64)  # source+target tokens per batch (padded)
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


class DecodingSpec(_Strict):
    name: str
    num_beams: int = Field(1, ge=1)
    length_penalty: float = 1.0
    max_new_tokens: int = Field(128, ge=1)


class EvaluationSpec(_Strict):
    splits: list[Literal["valid", "test"]] = ["valid", "test"]
    decoding: list[DecodingSpec] = [
        DecodingSpec(name="greedy", num_beams=1),
        DecodingSpec(name="beam", num_beams=5),
    ]
    batch_tokens: int = Field(6000, ge=64)
    examples: int = Field(8, ge=0)
    # Greedy/beam decoding of validation and evaluation; CTranslate2 (float32) gives HF's outputs, ~3-4x faster.
    backend: Literal["hf", "ctranslate2"] = "hf"

    @model_validator(mode="after")
    def _unique(self) -> EvaluationSpec:
        names = [d.name for d in self.decoding]
        if len(set(names)) != len(names):
            raise ValueError(f"evaluation.decoding names must be unique, got {names}")
        return self


# CTranslate2 precisions (float16 types need CUDA; elsewhere they fall back to float32 or int8).
ComputeType = Literal["float32", "int8", "int8_float32", "int16", "float16", "bfloat16", "int8_float16"]


class SamplingSpec(_Strict):
    """How a policy draws candidates: one object from the YAML (`grow.sampling`) to the engine call.
    Grow uses it as written; the diversity probe, Best-of-N and PPO take variants of it
    (core/grow/sampling.py `sampling_for`, which also sets `seed` by the one seed rule)."""

    n: int = Field(8, ge=1)  # samples per source
    temperature: float = Field(0.8, gt=0)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    max_new_tokens: int = Field(128, ge=1)
    seed: int = Field(0, exclude=True)  # set by sampling_for per use (grow, shard); never in a spec or its dump

    def signature(self) -> str:
        """Stored with every sampled candidate: a shard drawn with other settings is re-sampled."""
        return (
            f"n={self.n},t={self.temperature},top_k={self.top_k},top_p={self.top_p},"
            f"max_new={self.max_new_tokens},seed={self.seed}"
        )


_MOVED_SAMPLING_FIELDS = {"samples_per_source": "n", "temperature": "temperature", "top_k": "top_k",
                          "top_p": "top_p", "max_new_tokens": "max_new_tokens"}  # fmt: skip


class GrowSpec(_Strict):
    """Grow: sample N candidates per training source from the current policy."""

    sampling: SamplingSpec = SamplingSpec()
    max_sources: int | None = Field(None, ge=1)  # first N training sources (None = all)
    # With max_sources below the corpus size: grow g samples the g-th block of max_sources sources
    # (wrapping round the corpus) instead of the same first block, so each Grow brings sources the
    # policy has not yet been fine-tuned on and G grows cover G blocks of D at one block's cost.
    rotate_sources: bool = False
    shards: int = Field(4, ge=1)  # partitions of a grow: run, fail and resume independently
    backend: Literal["hf", "ctranslate2"] = "hf"
    # CTranslate2 only: weights' precision while sampling (int8 on CPU, float16 on CUDA; float32 = exact).
    compute_type: ComputeType = "float32"
    batch_tokens: int = Field(4000, ge=64)
    include_references: bool = True  # D_g = samples + original pairs, as in the paper

    @model_validator(mode="before")
    @classmethod
    def _sampling_moved(cls, data: object) -> object:
        """Specs written before sampling became one object get a message that says how to rewrite them."""
        if isinstance(data, dict):
            old = [k for k in _MOVED_SAMPLING_FIELDS if k in data]
            if old:
                new = ", ".join(f"{_MOVED_SAMPLING_FIELDS[k]}: {data[k]}" for k in old)
                raise ValueError(
                    f"grow.{', grow.'.join(old)}: sampling is one object now; write `sampling: {{{new}}}` under grow"
                )
            if "seed" in (data.get("sampling") or {}):
                raise ValueError(
                    "grow.sampling.seed: set by the spec's seed per grow and shard; write `seed:` at the top"
                )
        return data


class RewardSpec(_Strict):
    """Which reward model trains the policy, and which others are scored alongside it."""

    model: str = "learned"  # built-in name (chrf, bleu, comet, learned) or 'package.module:factory'
    extra: list[str] = []  # independent rewards scored too (e.g. chrf as a reward-hacking check)
    comet_path: str | None = None  # a local COMET checkpoint directory for model 'comet'
    learned_max_rows: int | None = Field(None, ge=50)  # subsample the judgements (smoke runs)
    learned_epochs: int = Field(60, ge=1)
    # How the learned reward embeds sentences, in training and scoring: COMET's torch code, or the same
    # encoder on CTranslate2 (int8 on CPU, float16 on CUDA): ~2x the sentences per second.
    engine: Literal["torch", "ctranslate2"] = "torch"
    compute_type: ComputeType = "int8"

    @model_validator(mode="after")
    def _comet_path(self) -> RewardSpec:
        """Whether each reward name resolves is checked by core/spec_check.py (it needs the plugins)."""
        if "comet" in (self.model, *self.extra) and not self.comet_path:
            raise ValueError("reward.comet_path must name a local COMET checkpoint folder for reward 'comet'")
        return self


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


class AutomationSpec(_Strict):
    """How rounds run without clicking, once Grow 1 has been materialized (from the UI or `rest main`).

    eager: each Improve step, evaluation and the next Grow start as soon as their inputs are
    materialized and every blocking check upstream passed; schedule: the same for Improve steps,
    but the next Grow waits for the cron tick (one round per tick); manual: nothing starts alone.
    """

    rounds: Literal["eager", "schedule", "manual"] = "eager"
    cron: str = "0 2 * * *"  # used when rounds = schedule
    sensor_running: bool = True  # the automation sensor starts RUNNING (it only acts downstream of Grow 1)


class OnlineRLSpec(_Strict):
    """The online-RL baseline (PPO from the BC policy with the training reward model), opt-in: the
    `online_rl` asset exists only where `enabled`. core/online_rl/ppo.py says how it is built and why."""

    enabled: bool = False
    total_candidates: int = Field(100_000, ge=1)  # sampled over the whole run (ReST's budget to compare with)
    eval_every_candidates: int = Field(25_000, ge=1)  # a checkpoint, evaluated like an Improve one, at each mark
    sources_per_iteration: int = Field(64, ge=1)
    samples_per_source: int = Field(4, ge=2)  # the group whose mean reward is each sample's baseline
    kl_coef: float = Field(0.05, ge=0)  # beta of the per-token KL penalty to the BC policy
    clip: float = Field(0.2, gt=0, lt=1)
    epochs: int = Field(2, ge=1)  # PPO epochs over each batch
    minibatch_sequences: int = Field(64, ge=1)
    lr: float = Field(2e-5, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    normalize_advantages: bool = True
    save_every_iterations: int = Field(20, ge=1)  # resume points


class ComputeSpec(_Strict):
    """What each heavy step (BC and Improve training, sampling, scoring, evaluation) asks of the machine
    or cluster that runs it. `device: auto` uses CUDA where the step's process sees a GPU; on a Ray
    cluster whose driver has no GPU, say `cuda` so that Ray places those steps on GPU workers."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpus_per_step: float = Field(1.0, gt=0)  # Ray: num_cpus of a CPU step (a Grow shard, a training step)
    gpus_per_step: float = Field(1.0, gt=0, le=8)  # Ray: num_gpus of a step when the device is CUDA


class BranchSpec(_Strict):
    """Branch from another experiment after one of its grows: reuse its corpus, tokenizer, BC policy,
    reward model and the candidates and scores of its grows up to `at`, and own everything after.
    `at: grow_0` shares the BC policy and the reward model only: the branch samples its own grows
    (what a change of N, of the sources per grow or of the sampling settings needs)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    parent: str = Field(alias="from", pattern=r"^[a-z][a-z0-9_]*$")
    at: str = Field(pattern=r"^grow_(0|[1-9][0-9]*)$")

    @property
    def grow(self) -> int:
        """The last grow reused from the parent; the branch's own Improve steps start in this grow."""
        return int(self.at.removeprefix("grow_"))


# What a branch takes from its parent as it is: setting these in a branch spec is an error.
BRANCH_INHERITED = ("data", "tokenizer", "policy", "bc", "reward", "evaluation", "seed")
_REPLACED_WHOLE = {"filter"}  # merged as a whole, not field by field (a different kind has other fields)


class ExperimentSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=100)
    description: str = Field("", max_length=2000)  # one paragraph; `rest list` prints it on one line
    branch: BranchSpec | None = None
    seed: int = 1234
    data: DataSpec
    tokenizer: TokenizerSpec = TokenizerSpec()
    policy: PolicySpec = PolicySpec()
    bc: BCSpec = BCSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    grow: GrowSpec = GrowSpec()
    reward: RewardSpec = RewardSpec()
    improve: ImproveSpec = ImproveSpec()
    automation: AutomationSpec = AutomationSpec()
    compute: ComputeSpec = ComputeSpec()
    online_rl: OnlineRLSpec = OnlineRLSpec()

    @model_validator(mode="after")
    def _causal_lm_backends(self) -> ExperimentSpec:
        if self.policy.kind == "causal_lm":
            for field, value in (("grow.backend", self.grow.backend), ("evaluation.backend", self.evaluation.backend)):
                if value != "hf":
                    raise ValueError(
                        f"{field}: '{value}' decodes encoder-decoders only; a causal_lm policy samples and "
                        "decodes with 'hf' (transformers' generate)"
                    )
        return self

    @model_validator(mode="after")
    def _ppo_samples_what_it_scores(self) -> ExperimentSpec:
        """PPO's log-probabilities are of the tempered distribution: a truncated one is refused, not dropped."""
        s = self.grow.sampling
        if self.online_rl.enabled and (s.top_k is not None or s.top_p is not None):
            raise ValueError("grow.sampling.top_k/top_p: the online-RL baseline samples without truncation; unset them")
        return self

    @model_validator(mode="after")
    def _shards_have_sources(self) -> ExperimentSpec:
        sources = [n for n in (self.grow.max_sources, self.data.max_train_pairs) if n]
        if sources and self.grow.shards > min(sources):
            raise ValueError(f"grow.shards ({self.grow.shards}) exceeds the sources a grow samples ({min(sources)})")
        return self

    def section_hash(self, *sections: str) -> str:
        """A short content hash of the named sections: a code/data version for Dagster."""
        payload = {s: self.model_dump(mode="json")[s] for s in sections}
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid experiment spec"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  field '{field}': {e['msg']}")
    return "\n".join(lines)


def load_spec(path: str | Path) -> ExperimentSpec:
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SpecLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError as e:
        raise SpecError(f"{path}: spec file not found") from e
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    if "branch" in raw:
        raw = _with_parent(path, raw)
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(_format_errors(path, e)) from None
    if spec.name != path.stem:
        raise SpecError(f"{path}: field 'name' is '{spec.name}' but the file is named '{path.stem}.yaml'")
    return spec


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        deep = isinstance(v, dict) and isinstance(out.get(k), dict) and k not in _REPLACED_WHOLE
        out[k] = _merge(out[k], v) if deep else v
    return out


def _with_parent(path: Path, raw: dict) -> dict:
    """A branch spec completed with its parent's settings (the branch's own fields win)."""
    branch = raw["branch"]
    parent_name = branch.get("from") if isinstance(branch, dict) else None
    if not isinstance(parent_name, str):
        raise SpecError(f"{path}: field 'branch.from' must name the parent experiment")
    inherited = [k for k in BRANCH_INHERITED if k in raw]
    if inherited:
        raise SpecError(
            f"{path}: field '{inherited[0]}': a branch reuses its parent's {', '.join(inherited)} "
            f"(from '{parent_name}'); it may set improve, grow, automation and description"
        )
    if parent_name == raw["name"]:
        raise SpecError(f"{path}: field 'branch.from': an experiment cannot branch from itself")
    try:
        parent_path = find_spec(parent_name)
    except SpecError as e:
        raise SpecError(f"{path}: field 'branch.from': {e}") from None
    # Looked at before the parent is resolved: two specs that branch from each other never recurse.
    try:
        parent_raw = yaml.load(parent_path.read_text(encoding="utf-8"), Loader=_SpecLoader)  # noqa: S506
    except (OSError, yaml.YAMLError) as e:
        raise SpecError(f"{path}: field 'branch.from': the parent spec {parent_path} cannot be read: {e}") from None
    grand = parent_raw.get("branch") if isinstance(parent_raw, dict) else None
    if grand is not None:
        chain = f"{raw['name']} → {parent_name} → {grand.get('from') if isinstance(grand, dict) else grand}"
        raise SpecError(
            f"{path}: field 'branch.from': '{parent_name}' is itself a branch ({chain}); branch from its parent"
        )
    parent = load_spec(parent_path)
    merged = _merge(parent.model_dump(mode="json", by_alias=True, exclude={"name", "description"}), raw)
    at = str(branch.get("at", ""))
    if at.startswith("grow_") and at[5:].isdigit():
        g = int(at[5:])
        if g > parent.improve.grows:
            raise SpecError(f"{path}: field 'branch.at': '{parent_name}' has only {parent.improve.grows} grows")
        if g > merged["improve"]["grows"]:
            raise SpecError(f"{path}: field 'improve.grows' must be at least {g} (the branch's steps start in {at})")
        steps = len(merged["improve"]["filter"]["values"])
        if g >= 2 and steps != parent.improve.steps:
            # Every grow has the same number of steps (core/improve/chain.py), so the parent's grows 1..g-1
            # are read with the branch's count: another count would name steps the parent never trained.
            raise SpecError(
                f"{path}: field 'improve.filter.values': a branch at {at} reuses the Improve steps of "
                f"'{parent_name}' grows 1-{g - 1}, which have {parent.improve.steps} step(s) each; it has {steps}"
            )
    return merged


def spec_dirs() -> list[Path]:
    """Where experiment specs live: the packaged ones plus REST_EXPERIMENTS_DIR, if set."""
    import os

    dirs = [SPEC_DIR]
    extra = os.environ.get("REST_EXPERIMENTS_DIR")
    if extra:
        dirs.append(Path(extra))
    return dirs


def find_spec(name_or_path: str) -> Path:
    """A spec file by path or name; REST_EXPERIMENTS_DIR wins over the packaged specs (everywhere)."""
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"} and p.exists():
        return p
    for d in reversed(spec_dirs()):
        cand = d / f"{name_or_path}.yaml"
        if cand.exists():
            return cand
    known = sorted({q.stem for d in spec_dirs() for q in d.glob("*.yaml")})
    raise SpecError(f"unknown experiment '{name_or_path}'; known: {', '.join(known)}")


def all_specs(
    errors: list[SpecError] | None = None, check: Callable[[ExperimentSpec, Path], object] | None = None
) -> list[ExperimentSpec]:
    """Every experiment, resolved as `find_spec` resolves names, each passed to `check` (which raises
    SpecError) when given. A file that does not validate is left out (and reported in `errors`, when
    given) instead of hiding every other experiment."""
    names = sorted({q.stem for d in spec_dirs() for q in d.glob("*.yaml")})
    specs = []
    for name in names:
        try:
            path = find_spec(name)
            spec = load_spec(path)
            if check is not None:
                check(spec, path)
            specs.append(spec)
        except SpecError as e:
            if errors is None:
                warnings.warn(str(e), stacklevel=2)
            else:
                errors.append(e)
    return specs
