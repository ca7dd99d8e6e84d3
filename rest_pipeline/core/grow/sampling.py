"""Grow's sampling engine: N candidates per source from a policy checkpoint.

Backends sit behind one small protocol so the engine does not care whether Hugging Face
`generate` or CTranslate2 does the work. Sampling is seeded per (seed, batch) and batches
are formed by length deterministically, so the same inputs give the same candidates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from rest_pipeline.core.policy.generate import length_batches, pad
from rest_pipeline.core.policy.model import load_policy
from rest_pipeline.core.policy.tokenizer import FastEncoder, load_tokenizer


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

    def sample(self, sources: Sequence[str], settings: SamplingSettings, batch_seed: int) -> list[list[str]]:
        """Return `settings.samples_per_source` hypotheses for each source, in order."""
        ...


class HFSampler:
    """Ancestral sampling with transformers' `generate` (CUDA when available)."""

    name = "hf"

    def __init__(self, checkpoint: Path, max_source_length: int = 128):
        self.model = load_policy(checkpoint).eval()
        self.tokenizer = load_tokenizer(checkpoint)
        self.encoder = FastEncoder(self.tokenizer)
        self.max_source_length = max_source_length

    @torch.inference_mode()
    def sample(self, sources: Sequence[str], settings: SamplingSettings, batch_seed: int) -> list[list[str]]:
        device = next(self.model.parameters()).device
        ids, mask = pad(self.encoder.encode(sources, self.max_source_length), self.tokenizer.pad_token_id)
        torch.manual_seed(batch_seed)
        out = self.model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            do_sample=True,
            temperature=settings.temperature,
            top_k=settings.top_k or 0,
            top_p=settings.top_p or 1.0,
            num_beams=1,
            num_return_sequences=settings.samples_per_source,
            max_new_tokens=settings.max_new_tokens,
        )
        texts = [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
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
    done = 0
    for b, batch in enumerate(length_batches(lengths, budget, max_batch=256)):
        hyps = backend.sample([sources[i] for i in batch], settings, batch_seed=settings.seed * 1_000_003 + b)
        for i, h in zip(batch, hyps, strict=True):
            out[i] = h
        done += len(batch)
        if progress:
            progress(done, len(sources))
    return out


CT2_LAYOUT = "exact-start-v1"  # part of the conversion cache key: bump when the conversion changes


@contextlib.contextmanager
def _exact_marian_loader() -> Iterator[None]:
    """Convert Marian checkpoints without CTranslate2's opus-mt shortcut.

    Its stock loader drops <pad> from the vocabulary and starts decoding from a zero embedding,
    which matches opus-mt (whose pad row stays zero) but not our checkpoints: their embeddings are
    tied to the output layer, so the <pad> row (the decoder start token) is trained and non-zero.
    With the shortcut the first sampled token is wrong ("men stand ..." for "Two men stand ...").
    """
    from ctranslate2.converters import transformers as ct2t

    class ExactMarianLoader(ct2t.MarianMTLoader):
        def get_model_spec(self, model):
            model.config.normalize_before = False
            model.config.normalize_embedding = False
            return ct2t.BartLoader.get_model_spec(self, model)  # keep the <pad> row

        def set_config(self, config, model, tokenizer):
            super().set_config(config, model, tokenizer)
            config.decoder_start_token = tokenizer.convert_ids_to_tokens(model.config.decoder_start_token_id)

        def set_decoder(self, spec, decoder):
            ct2t.BartLoader.set_decoder(self, spec, decoder)
            spec.start_from_zero_embedding = False

        def get_vocabulary(self, model, tokenizer):
            return ct2t.BartLoader.get_vocabulary(self, model, tokenizer)

    stock = ct2t._MODEL_LOADERS["MarianConfig"]
    ct2t._MODEL_LOADERS["MarianConfig"] = ExactMarianLoader()
    try:
        yield
    finally:
        ct2t._MODEL_LOADERS["MarianConfig"] = stock


class CT2Sampler:
    """Random sampling with CTranslate2 (converted once from the HF checkpoint and cached beside it)."""

    # In every candidate's `decoding`: shards sampled by an older conversion are re-sampled, not reused.
    name = f"ctranslate2-{CT2_LAYOUT}"

    def __init__(self, checkpoint: Path, max_source_length: int = 128, compute_type: str = "default"):
        import ctranslate2

        from rest_pipeline.core.paths import atomic_dir

        checkpoint = Path(checkpoint)
        converted = checkpoint.parent / f".{checkpoint.name}.ct2"
        stamp = f"{CT2_LAYOUT}:{(checkpoint / 'model.safetensors').stat().st_mtime_ns}"
        marker = converted / "source_mtime"
        if not marker.is_file() or marker.read_text() != stamp:
            with atomic_dir(converted) as tmp, _exact_marian_loader():
                ctranslate2.converters.TransformersConverter(str(checkpoint)).convert(str(tmp), force=True)
                (tmp / "source_mtime").write_text(str(stamp))
        self.converted = converted
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.compute_type = compute_type
        self.tokenizer = load_tokenizer(checkpoint)
        self.encoder = FastEncoder(self.tokenizer)
        self.max_source_length = max_source_length

    def sample(self, sources: Sequence[str], settings: SamplingSettings, batch_seed: int) -> list[list[str]]:
        ids = self.encoder.encode(sources, self.max_source_length)
        tokens = [self.tokenizer.convert_ids_to_tokens(x) for x in ids]
        import ctranslate2

        # CTranslate2 seeds a worker's generator when the worker starts, so a seeded batch
        # needs a fresh translator (cheap: the converted model is memory-mapped and small).
        ctranslate2.set_random_seed(batch_seed % (2**31))
        translator = ctranslate2.Translator(
            str(self.converted), device=self.device, compute_type=self.compute_type, inter_threads=1
        )
        results = translator.translate_batch(
            tokens,
            beam_size=1,
            num_hypotheses=settings.samples_per_source,
            sampling_topk=settings.top_k or 0,
            sampling_topp=settings.top_p or 1.0,
            sampling_temperature=settings.temperature,
            max_decoding_length=settings.max_new_tokens,
            suppress_sequences=[[self.tokenizer.pad_token]],  # like HF's bad_words_ids in our configs
        )
        return [[self.tokenizer.convert_tokens_to_string(h).strip() for h in r.hypotheses] for r in results]


def make_sampler(backend: str, checkpoint: Path, max_source_length: int = 128) -> SamplingBackend:
    if backend == "hf":
        return HFSampler(checkpoint, max_source_length)
    if backend == "ctranslate2":
        return CT2Sampler(checkpoint, max_source_length)
    raise ValueError(f"grow.backend: unknown sampling backend '{backend}' (hf, ctranslate2)")
