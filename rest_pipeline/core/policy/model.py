"""The policy: a Transformer encoder-decoder in Hugging Face format.

From scratch we build a small Marian; a `pretrained` spec loads any HF seq2seq
checkpoint (e.g. an opus-mt model) instead. Checkpoints are saved with safetensors so
`AutoModelForSeq2SeqLM.from_pretrained(path)` loads them anywhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    MarianConfig,
    MarianMTModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rest_pipeline.core.paths import atomic_dir
from rest_pipeline.spec import PolicySpec


def pick_device() -> torch.device:
    """The device this process computes on (core/devices.py: Ray's GPU, a REST_DEVICES claim, or the CPU)."""
    from rest_pipeline.core.devices import torch_device

    return torch_device()


def build_marian(spec: PolicySpec, tokenizer: PreTrainedTokenizerBase, max_length: int) -> MarianMTModel:
    vocab = len(tokenizer)
    config = MarianConfig(
        vocab_size=vocab,
        decoder_vocab_size=vocab,
        d_model=spec.d_model,
        encoder_layers=spec.encoder_layers,
        decoder_layers=spec.decoder_layers,
        encoder_attention_heads=spec.attention_heads,
        decoder_attention_heads=spec.attention_heads,
        encoder_ffn_dim=spec.ffn_dim,
        decoder_ffn_dim=spec.ffn_dim,
        dropout=spec.dropout,
        attention_dropout=spec.attention_dropout,
        activation_dropout=spec.activation_dropout,
        activation_function="relu",
        max_position_embeddings=max(max_length, 64) * 2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        bad_words_ids=[[tokenizer.pad_token_id]],
        num_beams=1,
        max_length=max_length,
    )
    return MarianMTModel(config)


def load_policy(path: str | Path, device: torch.device | None = None) -> PreTrainedModel:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face checkpoint (config.json missing)")
    model = AutoModelForSeq2SeqLM.from_pretrained(str(path))
    return model.to(device or pick_device())


def weights_hash(checkpoint: str | Path) -> str:
    """Identity of a checkpoint's weights: keys caches of evaluations, conversions and lineage."""
    return hashlib.sha256((Path(checkpoint) / "model.safetensors").read_bytes()).hexdigest()[:16]


def save_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path) -> Path:
    """Write model + tokenizer as one self-contained HF folder, atomically."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return path


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
