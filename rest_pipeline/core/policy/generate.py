"""Decoding: translate many sentences with a policy, batched by length to waste no padding."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rest_pipeline.core.policy.family import family_of
from rest_pipeline.spec import DecodingSpec


def length_batches(lengths: Sequence[int], max_tokens: int, max_batch: int = 512) -> list[list[int]]:
    """Indices grouped so that (longest length x batch size) stays under max_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order:
        new_longest = max(longest, lengths[i])
        if cur and (new_longest * (len(cur) + 1) > max_tokens or len(cur) >= max_batch):
            batches.append(cur)
            cur, new_longest = [], lengths[i]
        cur.append(i)
        longest = new_longest
    if cur:
        batches.append(cur)
    return batches


@torch.inference_mode()
def translate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sources: Sequence[str],
    decoding: DecodingSpec,
    *,
    batch_tokens: int = 6000,
    max_source_length: int = 128,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Deterministic decoding (greedy or beam) of `sources`, returned in input order; either family."""
    if not sources:
        return []
    model.eval()
    family = family_of(model, tokenizer)
    encoded = family.encode_sources(sources, max_source_length)
    # Beam search multiplies the work per sentence: budget tokens per beam, not per sentence.
    budget = max(batch_tokens // decoding.num_beams, 64)
    out: list[str] = [""] * len(sources)
    done = 0
    for batch in length_batches([len(e) for e in encoded], budget):
        ids = family.generate(
            model,
            [encoded[i] for i in batch],
            num_beams=decoding.num_beams,
            length_penalty=decoding.length_penalty,
            max_new_tokens=decoding.max_new_tokens,
            do_sample=False,
            early_stopping=True if decoding.num_beams > 1 else False,
        )
        for i, t in zip(batch, family.decode(ids), strict=True):
            out[i] = t
        done += len(batch)
        if progress:
            progress(done, len(sources))
    return out


def translate_checkpoint(
    checkpoint: Path,
    sources: Sequence[str],
    decoding: DecodingSpec,
    *,
    backend: str = "hf",
    batch_tokens: int = 6000,
    max_source_length: int = 128,
) -> list[str]:
    """Deterministic decoding of a saved policy with the spec's inference backend (same outputs either way)."""
    if backend == "ctranslate2":
        from rest_pipeline.core.policy.ct2 import CT2Policy

        policy = CT2Policy.from_checkpoint(checkpoint, max_source_length=max_source_length)
        return policy.translate(sources, decoding, batch_tokens=batch_tokens)
    from rest_pipeline.core.policy.model import load_policy
    from rest_pipeline.core.policy.tokenizer import load_tokenizer

    model, tokenizer = load_policy(checkpoint), load_tokenizer(checkpoint)
    return translate(
        model, tokenizer, sources, decoding, batch_tokens=batch_tokens, max_source_length=max_source_length
    )


def translate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sources: Sequence[str],
    decoding: DecodingSpec,
    *,
    backend: str = "hf",
    batch_tokens: int = 6000,
    max_source_length: int = 128,
) -> list[str]:
    """Like `translate_checkpoint` for weights in training; CTranslate2 converts them (~0.5 s) first."""
    if backend == "ctranslate2":
        from rest_pipeline.core.policy.ct2 import CT2Policy

        with CT2Policy.from_model(model, tokenizer, max_source_length=max_source_length) as policy:
            return policy.translate(sources, decoding, batch_tokens=batch_tokens)
    return translate(
        model, tokenizer, sources, decoding, batch_tokens=batch_tokens, max_source_length=max_source_length
    )
