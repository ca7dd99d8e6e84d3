"""Grow's sampling engine: N candidates per source from a policy checkpoint.

Backends sit behind one small protocol so the engine does not care whether Hugging Face
`generate` or CTranslate2 does the work. Sampling is seeded per (seed, batch) and batches
are formed by length deterministically, so the same inputs give the same candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from rest_pipeline.core.policy.family import family_of
from rest_pipeline.core.policy.generate import length_batches
from rest_pipeline.core.policy.model import load_policy
from rest_pipeline.core.policy.tokenizer import load_tokenizer
from rest_pipeline.spec import GrowSpec


@dataclass(frozen=True)
class SamplingSettings:
    samples_per_source: int
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int = 128
    seed: int = 0

    def describe(self) -> str:
        return (
            f"n={self.samples_per_source},t={self.temperature},top_k={self.top_k},top_p={self.top_p},"
            f"max_new={self.max_new_tokens},seed={self.seed}"
        )


class SamplingBackend(Protocol):
    name: str
    lanes: int  # batches sampled concurrently

    def sample(self, sources: Sequence[str], settings: SamplingSettings, batch_seed: int) -> list[list[str]]:
        """Return `settings.samples_per_source` hypotheses for each source, in order."""
        ...


class HFSampler:
    """Ancestral sampling with transformers' `generate` (CUDA when available); either policy family."""

    name = "hf"
    lanes = 1  # torch parallelises inside each batch

    def __init__(self, checkpoint: Path, max_source_length: int = 128):
        self.model = load_policy(checkpoint).eval()
        self.family = family_of(self.model, load_tokenizer(checkpoint))
        self.max_source_length = max_source_length

    @torch.inference_mode()
    def sample(self, sources: Sequence[str], settings: SamplingSettings, batch_seed: int) -> list[list[str]]:
        torch.manual_seed(batch_seed)
        ids = self.family.generate(
            self.model,
            self.family.encode_sources(sources, self.max_source_length),
            do_sample=True,
            temperature=settings.temperature,
            top_k=settings.top_k or 0,
            top_p=settings.top_p or 1.0,
            num_beams=1,
            num_return_sequences=settings.samples_per_source,
            max_new_tokens=settings.max_new_tokens,
        )
        texts = self.family.decode(ids)
        n = settings.samples_per_source
        return [texts[i * n : (i + 1) * n] for i in range(len(sources))]


def sample_candidates(
    backend: SamplingBackend,
    sources: Sequence[str],
    settings: SamplingSettings,
    *,
    batch_tokens: int = 4000,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[str]]:
    """Candidates for every source, batched by length; order follows `sources`."""
    lengths = [len(s.split()) + 2 for s in sources]
    # Budget counts every returned sequence, so divide by N.
    budget = max(batch_tokens // settings.samples_per_source, 16)
    out: list[list[str]] = [[] for _ in sources]
    batches = length_batches(lengths, budget, max_batch=256)

    def run(b: int) -> list[list[str]]:
        return backend.sample([sources[i] for i in batches[b]], settings, batch_seed=settings.seed * 1_000_003 + b)

    done = 0
    # Each batch's samples depend on its own seed only, so running batches concurrently changes nothing.
    with ThreadPoolExecutor(max(1, getattr(backend, "lanes", 1))) as pool:
        for batch, hyps in zip(batches, pool.map(run, range(len(batches))), strict=True):
            for i, h in zip(batch, hyps, strict=True):
                out[i] = h
            done += len(batch)
            if progress:
                progress(done, len(sources))
    return out


class CT2Sampler:
    """Random sampling with CTranslate2 (converted once, at the spec's compute type, and cached beside
    the checkpoint); batches run concurrently on the policy's lanes."""

    def __init__(self, checkpoint: Path, max_source_length: int = 128, compute_type: str = "float32"):
        from rest_pipeline.core.policy.ct2 import CT2_LAYOUT, CT2Policy

        self.policy = CT2Policy.from_checkpoint(Path(checkpoint), compute_type, max_source_length=max_source_length)
        self.lanes = self.policy.lanes
        self.device = self.policy.device
        # In every candidate's `decoding`: shards sampled by another conversion or precision are re-sampled.
        suffix = "" if self.policy.compute_type == "float32" else f"-{self.policy.compute_type}"
        self.name = f"ctranslate2-{CT2_LAYOUT}{suffix}"

    def sample(self, sources: Sequence[str], settings: SamplingSettings, batch_seed: int) -> list[list[str]]:
        return self.policy.sample(
            sources,
            settings.samples_per_source,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            max_new_tokens=settings.max_new_tokens,
            seed=batch_seed,
        )


def sampler_id(grow: GrowSpec) -> str:
    """The sampler's part of cache keys: a precision other than float32 samples other candidates."""
    return grow.backend if grow.compute_type == "float32" else f"{grow.backend}-{grow.compute_type}"


def make_sampler(
    backend: str, checkpoint: Path, max_source_length: int = 128, compute_type: str = "float32"
) -> SamplingBackend:
    if backend == "hf":
        return HFSampler(checkpoint, max_source_length)
    if backend == "ctranslate2":
        return CT2Sampler(checkpoint, max_source_length, compute_type)
    raise ValueError(f"grow.backend: unknown sampling backend '{backend}' (hf, ctranslate2)")
