"""A tiny, learnable synthetic translation task: word-for-word substitution."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from rest_pipeline.core.policy.model import build_causal, build_marian
from rest_pipeline.core.policy.tokenizer import load_tokenizer, train_sentencepiece
from rest_pipeline.spec import DataSpec, PolicySpec, TokenizerSpec

SRC_WORDS = "haus baum katze hund rot blau gross klein laufen springen".split()
TGT_WORDS = "house tree cat dog red blue big small run jump".split()


def pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        idx = [rng.randrange(len(SRC_WORDS)) for _ in range(rng.randint(2, 6))]
        src.append(" ".join(SRC_WORDS[i] for i in idx))
        tgt.append(" ".join(TGT_WORDS[i] for i in idx))
    return src, tgt


def tokenizer_dir(root: Path) -> Path:
    path = root / "tok"
    if not path.exists():
        s, t = pairs(400)
        train_sentencepiece(s + t, TokenizerSpec(vocab_size=41, model_type="unigram"), path)
    return path


TINY = PolicySpec(d_model=64, encoder_layers=1, decoder_layers=1, attention_heads=2, ffn_dim=128, dropout=0.1)


def tiny_model(tok_dir: Path, seed: int = 0):
    torch.manual_seed(seed)
    tok = load_tokenizer(tok_dir)
    return build_marian(TINY, tok, 32), tok


TINY_CAUSAL = PolicySpec(
    kind="causal_lm", d_model=64, decoder_layers=2, attention_heads=2, ffn_dim=128, prompt="translate: {source} =>"
)


def tiny_causal(tok_dir: Path, seed: int = 0, spec: PolicySpec = TINY_CAUSAL):
    """A tiny Llama-shaped LM on the synthetic vocabulary, prompted as `spec.prompt` says."""
    torch.manual_seed(seed)
    tok = load_tokenizer(tok_dir)
    return build_causal(spec, tok, 32), tok


# Multi30k De->En as a spec names it (specs are checked against the registry).
MULTI30K = DataSpec(
    dataset="multi30k_de_en", source_lang="de", target_lang="en", train="train", valid="val", test="test_2016_flickr"
)
