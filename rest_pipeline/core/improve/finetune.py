"""The one trainer of the Improve phase: fine-tune a parent checkpoint on pairs, keep the checkpoint
with the best validation reward, and say whether it beat the parent.

Improve steps (reward-filtered slices), the originals-only control and every Improve loss call
this with different data and loss; so they differ only in what they train on, never in how they
are trained, validated or judged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from rest_pipeline.core.evaluation.checkpoint import reward_scores
from rest_pipeline.core.policy.family import family_of, hidden_size
from rest_pipeline.core.policy.generate import translate_checkpoint
from rest_pipeline.core.policy.model import load_policy, weights_hash, with_lora
from rest_pipeline.core.policy.tokenizer import load_tokenizer
from rest_pipeline.core.rewards.base import RewardModel
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.records import ScoreSignature
from rest_pipeline.core.training.batching import make_batches
from rest_pipeline.core.training.losses import SequenceLoss, make_loss, token_logprobs
from rest_pipeline.core.training.pairs import Pairs, TrainingPairs
from rest_pipeline.core.training.trainer import train_policy
from rest_pipeline.core.types import Log
from rest_pipeline.spec import DecodingSpec, ExperimentSpec


@dataclass(frozen=True)
class FinetuneResult:
    best_dir: Path  # the best checkpoint training produced (whether or not it beat the parent)
    best_valid_reward: float
    parent_valid_reward: float
    improved: bool  # beat the parent by more than improve.min_improvement
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)


def validation_set(spec: ExperimentSpec, store: ExperimentStore) -> tuple[list[str], list[str]]:
    valid = store.split("valid")
    n = spec.improve.train.validate_pairs or len(valid)
    return list(valid.source[:n]), list(valid.target[:n])


def make_reward_fn(model: RewardModel) -> Callable[[list[str], list[str], list[str]], float]:
    return lambda src, hyp, ref: float(reward_scores(model, src, hyp, ref).mean())


def validation_signature(spec: ExperimentSpec, store: ExperimentStore, reward: RewardModel) -> ScoreSignature:
    """What an Improve step's validation reward is: greedy decoding of which valid sentences, which reward."""
    n = len(validation_set(spec, store)[0])
    decoding = f"greedy,max_new={spec.tokenizer.max_length},valid[:{n}],{spec.evaluation.backend}"
    return ScoreSignature(decoding=decoding, rewards={reward.name: reward.version})


def valid_reward(
    spec: ExperimentSpec, store: ExperimentStore, checkpoint: Path, reward: RewardModel, weights: str | None = None
) -> float:
    """Greedy validation reward of a checkpoint, with the same subset and decoding as training uses; cached.
    `weights`: the checkpoint's weights hash when the caller has it (hashing GBs of an LLM once is enough)."""
    sources, refs = validation_set(spec, store)
    weights = weights or weights_hash(checkpoint)
    key = f"{weights}:{reward.name}:{reward.version}:{len(sources)}:{spec.tokenizer.max_length}"
    cached = store.cached_valid_reward(key)
    if cached is not None:
        return cached
    greedy = DecodingSpec(name="greedy", num_beams=1, max_new_tokens=spec.tokenizer.max_length)
    hyps = translate_checkpoint(
        checkpoint, sources, greedy, backend=spec.evaluation.backend, max_source_length=spec.tokenizer.max_length
    )
    value = round(make_reward_fn(reward)(sources, hyps, refs), 5)
    store.remember_valid_reward(key, value)
    return value


@dataclass(frozen=True)
class Parent:
    """The policy a step fine-tunes, measured once per step: its folder, weights hash, validation reward."""

    path: Path
    weights_hash: str
    valid_reward: float


def measure_parent(spec: ExperimentSpec, store: ExperimentStore, path: Path, reward: RewardModel) -> Parent:
    weights = weights_hash(path)
    return Parent(path, weights, valid_reward(spec, store, path, reward, weights))


@torch.inference_mode()
def behaviour_logprobs(
    checkpoint: Path, pairs: tuple[Sequence[str], Sequence[str]], max_length: int, max_tokens: int = 4000
) -> list[list[float]]:
    """log pi_b(y_t | y_<t, x) of every target token under the behaviour (grow) policy, per pair."""
    model = load_policy(checkpoint).eval()
    family = family_of(model, load_tokenizer(checkpoint))
    src, tgt = family.encode_sources(pairs[0], max_length), family.encode_targets(pairs[1], max_length)
    out: list[list[float]] = [[] for _ in src]
    for idx in make_batches(src, tgt, max_tokens, seed=0, epoch=0):
        b = family.collate([src[i] for i in idx], [tgt[i] for i in idx])
        logits = family.forward(model, b).logits
        logp, mask = token_logprobs(logits, b.labels.to(logits.device))
        for row, i in enumerate(idx):
            out[i] = logp[row][mask[row]].tolist()
    return out


def loss_for(spec: ExperimentSpec, name: str, d_model: int) -> SequenceLoss:
    """The Improve loss `name` with its options from the spec (improve.gold, improve.bvmpo, improve.oac)."""
    options = getattr(spec.improve, name).model_dump() if name != "bc" else None
    return make_loss(name, d_model=d_model, options=options)


def finetune(
    spec: ExperimentSpec,
    store: ExperimentStore,
    parent: Parent,
    pairs: Pairs,
    work_dir: Path,
    *,
    lr: float,
    seed: int,
    reward: RewardModel,
    loss: str = "bc",
    behaviour: Path | None = None,
    log: Log = print,
) -> FinetuneResult:
    """Fine-tune `parent` on `pairs` with Improve's training settings at rate `lr`; resumable in `work_dir`.

    `pairs` carry what an offline-RL loss needs per pair (rewards, baselines); `behaviour` is the policy
    that sampled them (the grow policy), whose token log-probabilities a loss such as OAC weighs against."""
    parent_valid = parent.valid_reward
    train_spec = spec.improve.train.model_copy(update={"lr": lr})
    options = getattr(spec.improve, loss).model_dump_json() if loss != "bc" else ""
    key = f"{parent.weights_hash}|{pairs.content_hash()}|{train_spec.model_dump_json()}|{loss}{options}|{seed}"
    if spec.policy.lora is not None:
        key += f"|lora:{spec.policy.lora.model_dump_json()}"
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
    torch.manual_seed(seed)
    model = load_policy(parent.path)
    loss_fn = loss_for(spec, loss, hidden_size(model))
    if spec.policy.lora is not None:
        model = with_lora(model, spec.policy.lora, parent.path)  # the step saves only its adapter
    if loss_fn.needs_behaviour_logprobs:
        if behaviour is None:
            raise ValueError(f"improve.loss {loss}: needs the behaviour (grow) policy")
        held = pairs.in_memory()  # every pair is scored under the behaviour policy first
        log(f"finetune: scoring the {len(held)} training pairs under the behaviour policy for {loss}")
        logprobs = behaviour_logprobs(behaviour, held.texts, spec.tokenizer.max_length)
        pairs = TrainingPairs(*held.texts, replace(held.signals, behaviour_logprobs=logprobs))
    result = train_policy(
        model,
        load_tokenizer(parent.path),
        pairs,
        validation_set(spec, store),
        train_spec,
        work_dir,
        seed=seed,
        max_length=spec.tokenizer.max_length,
        fingerprint=fingerprint,
        log=log,
        reward_fn=make_reward_fn(reward),
        loss_fn=loss_fn,
        decode_backend=spec.evaluation.backend,
    )
    return FinetuneResult(
        best_dir=result.best_dir,
        best_valid_reward=round(result.best_metric, 5),
        parent_valid_reward=parent_valid,
        improved=result.best_metric > parent_valid + spec.improve.min_improvement,
        steps=result.steps,
        seconds=result.train_seconds,
        history=result.history,
    )
