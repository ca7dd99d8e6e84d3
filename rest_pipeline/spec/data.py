"""`data` and `tokenizer`: what corpus, which splits, how lines are checked, how text becomes ids."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rest_pipeline.spec.base import _Strict


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
