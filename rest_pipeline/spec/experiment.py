"""The whole spec: its sections, automation, compute, the online-RL baseline and branches."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from rest_pipeline.spec.base import _Strict
from rest_pipeline.spec.data import DataSpec, TokenizerSpec
from rest_pipeline.spec.evaluation import EvaluationSpec
from rest_pipeline.spec.grow import GrowSpec
from rest_pipeline.spec.improve import ImproveSpec
from rest_pipeline.spec.policy import PolicySpec
from rest_pipeline.spec.reward import RewardSpec
from rest_pipeline.spec.training import BCSpec


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
    def _engines_fit_the_policy(self) -> ExperimentSpec:
        """vLLM runs decoder-only policies here; CTranslate2 and transformers run either family."""
        if self.policy.kind != "causal_lm" and self.grow.backend == "vllm":
            raise ValueError(
                "grow.backend: 'vllm' samples decoder-only policies (policy.kind: causal_lm); an encoder-decoder "
                "samples with 'ctranslate2' or 'hf'"
            )
        if self.grow.backend == "vllm" and self.grow.compute_type not in ("float32", "float16", "bfloat16"):
            raise ValueError(
                f"grow.compute_type: vLLM samples in float32, float16 or bfloat16, not '{self.grow.compute_type}'"
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
