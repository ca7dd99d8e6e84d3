"""`grow`: how candidates are sampled (one sampling object, passed unchanged to the engine)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rest_pipeline.spec.base import _Strict

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
    # hf: transformers' generate; ctranslate2: either family, several lanes on CPU; vllm: decoder-only
    # policies, in its own environment (.venv-vllm, built on first use; core/policy/vllm_engine.py).
    backend: Literal["hf", "ctranslate2", "vllm"] = "hf"
    # CTranslate2 and vLLM: weights' precision while sampling (CTranslate2: int8 on CPU, float16 on CUDA;
    # vLLM: float32, float16 or bfloat16; float32 = exact).
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
