"""Grow's sampling engine: N candidates per source from a policy checkpoint.

Backends sit behind one small protocol so the engine does not care whether Hugging Face
`generate` or CTranslate2 does the work. Sampling is seeded per (seed, batch) and batches
are formed by length deterministically, so the same inputs give the same candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, Protocol

import torch

from rest_pipeline.core.policy.family import PromptFormat, family_of
from rest_pipeline.core.policy.generate import length_batches
from rest_pipeline.core.policy.model import load_policy, merged_weights_hash, policy_config
from rest_pipeline.core.policy.tokenizer import load_tokenizer
from rest_pipeline.spec import ExperimentSpec, GrowSpec, SamplingSpec

# What a sampling serves: Grow's candidates, the diversity probe of every evaluated checkpoint,
# the Best-of-N curves, and the PPO baseline's rollouts.
SamplingUse = Literal["grow", "diversity", "best_of_n", "ppo"]


def sampling_for(spec: ExperimentSpec, use: SamplingUse, grow: int = 0, shard: int = 0) -> SamplingSpec:
    """The one place a use's sampling comes from: `grow.sampling` as written, with the use's N and the
    seed rule (grow g, shard k: seed * 10007 + 101 g + k; every other use: from the spec's seed)."""
    base = spec.grow.sampling
    if use == "grow":
        return base.model_copy(update={"seed": spec.seed * 10_007 + grow * 101 + shard})
    if use == "diversity":
        return base.model_copy(update={"n": spec.improve.diversity_samples, "seed": spec.seed})
    if use == "best_of_n":
        return base.model_copy(update={"n": max(spec.improve.best_of_n), "seed": spec.seed + 99})
    if use == "ppo":
        return base.model_copy(update={"n": spec.online_rl.samples_per_source, "seed": spec.seed})
    raise ValueError(f"unknown sampling use '{use}' ({', '.join(SamplingUse.__args__)})")


class SamplingBackend(Protocol):
    name: str  # in every candidate's `decoding`: part of the shard's cache key
    lanes: int  # batches sampled concurrently
    engine: dict[str, str]  # for lineage: the engine, its version, and the weights it actually ran

    def sample(self, sources: Sequence[str], settings: SamplingSpec, batch_seed: int) -> list[list[str]]:
        """Return `settings.n` hypotheses for each source, in order."""
        ...

    def close(self) -> None:
        """Stop whatever the backend started (lanes, an engine process)."""
        ...


class HFSampler:
    """Ancestral sampling with transformers' `generate` (CUDA when available); either policy family."""

    name = "hf"
    lanes = 1  # torch parallelises inside each batch

    def __init__(self, checkpoint: Path, max_source_length: int = 128):
        import transformers

        self.model = load_policy(checkpoint).eval()
        self.family = family_of(self.model, load_tokenizer(checkpoint))
        self.max_source_length = max_source_length
        # The weights are the checkpoint's own, named with their hash in every candidate's `policy`.
        self.engine = {"engine": "transformers", "version": transformers.__version__}

    def close(self) -> None:
        pass

    @torch.inference_mode()
    def sample(self, sources: Sequence[str], settings: SamplingSpec, batch_seed: int) -> list[list[str]]:
        torch.manual_seed(batch_seed)
        ids = self.family.generate(
            self.model,
            self.family.encode_sources(sources, self.max_source_length),
            do_sample=True,
            temperature=settings.temperature,
            top_k=settings.top_k or 0,
            top_p=settings.top_p or 1.0,
            num_beams=1,
            num_return_sequences=settings.n,
            max_new_tokens=settings.max_new_tokens,
        )
        texts = self.family.decode(ids)
        n = settings.n
        return [texts[i * n : (i + 1) * n] for i in range(len(sources))]


def sample_candidates(
    backend: SamplingBackend,
    sources: Sequence[str],
    settings: SamplingSpec,
    *,
    batch_tokens: int = 4000,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[str]]:
    """Candidates for every source, batched by length; order follows `sources`."""
    lengths = [len(s.split()) + 2 for s in sources]
    # Budget counts every returned sequence, so divide by N.
    budget = max(batch_tokens // settings.n, 16)
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
        self.engine = self.policy.engine_record(Path(checkpoint))

    def close(self) -> None:
        self.policy.close()

    def sample(self, sources: Sequence[str], settings: SamplingSpec, batch_seed: int) -> list[list[str]]:
        return self.policy.sample(
            sources,
            settings.n,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            max_new_tokens=settings.max_new_tokens,
            seed=batch_seed,
        )


class VLLMSampler:
    """Random sampling with vLLM in its own environment (core/policy/vllm_engine.py) for decoder-only
    policies: the family encodes prompts and decodes completions, the engine only sees token ids. The
    engine starts at the first batch (a grow shard already in the store starts none) on the checkpoint's
    merge (a LoRA chain merged once, cached by the chain's hash) and stops when the sampler closes."""

    lanes = 1  # vLLM schedules the prompts of a batch itself

    def __init__(self, checkpoint: Path, max_source_length: int = 128, compute_type: str = "float32"):
        from rest_pipeline.core.policy.family import CausalLM
        from rest_pipeline.core.policy.vllm_engine import VLLM_PINS, machine_kind

        if compute_type not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"grow.compute_type: vLLM samples in float32, float16 or bfloat16, not '{compute_type}'")
        self.checkpoint, self.compute_type = Path(checkpoint), compute_type
        config = policy_config(self.checkpoint)
        if not config.get("rest_prompt"):
            raise ValueError(
                f"grow.backend 'vllm': {checkpoint} is not a decoder-only policy (no rest_prompt in its config)"
            )
        self.family = CausalLM(load_tokenizer(checkpoint), PromptFormat(**config["rest_prompt"]))
        self.max_source_length = max_source_length
        self.max_model_len = int(min(config.get("max_position_embeddings") or 4096, 4096))
        pin = VLLM_PINS[machine_kind()]
        suffix = "" if compute_type == "float32" else f"-{compute_type}"
        self.name = f"vllm-{pin.split('==')[1]}{suffix}"  # in every candidate's `decoding`
        self._engine = None

    def _started(self):
        from rest_pipeline.core.policy.model import merged_checkpoint
        from rest_pipeline.core.policy.vllm_engine import VLLMEngine

        if self._engine is None:
            self.merged = merged_checkpoint(self.checkpoint)
            log = self.checkpoint.parent / f".{self.checkpoint.name}.vllm.log"
            self._engine = VLLMEngine(self.merged, dtype=self.compute_type, seed=0, max_model_len=self.max_model_len,
                                      log_file=log)  # fmt: skip
        return self._engine

    @property
    def engine(self) -> dict[str, str]:
        engine = self._started()
        return {"engine": "vllm", "version": engine.version, "dtype": self.compute_type,
                "weights": merged_weights_hash(self.merged)}  # fmt: skip

    def sample(self, sources: Sequence[str], settings: SamplingSpec, batch_seed: int) -> list[list[str]]:
        prompts = self.family.encode_sources(sources, self.max_source_length)
        outputs = self._started().generate(
            prompts,
            n=settings.n,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            max_tokens=settings.max_new_tokens,
            stop_token_ids=sorted(self.family.stops),
            seed=batch_seed,
        )
        return [self.family.decode(per_prompt) for per_prompt in outputs]

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


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
    if backend == "vllm":
        return VLLMSampler(checkpoint, max_source_length, compute_type)
    raise ValueError(f"grow.backend: unknown sampling backend '{backend}' (hf, ctranslate2, vllm)")
