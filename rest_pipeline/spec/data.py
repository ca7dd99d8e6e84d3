"""`data` and `tokenizer`: what corpus, which splits, how lines are checked, how text becomes ids."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rest_pipeline.spec.base import _Strict


class LinePolicy(_Strict):
    """What to do with each kind of bad line: fail the run, or skip the pair and count it."""

    empty: Literal["reject", "skip"] = "reject"
    overlong: Literal["reject", "skip"] = "reject"
    undecodable: Literal["reject", "skip"] = "reject"
    max_chars: int = Field(1000, gt=0)


class TextPair(_Strict):
    """Plain parallel text: line n of `source` translates to line n of `target`."""

    source: str
    target: str


DataFile = str | TextPair
FORMATS = ("tsv", "jsonl", "parquet", "hf_disk", "text")


class DataFiles(_Strict):
    """A user's own corpus. Each split is a file (TSV, JSONL, Parquet), a folder written by Hugging Face
    `datasets`' save_to_disk, or a {source, target} pair of plain text files. Relative paths are read
    from the spec file's folder. A missing valid or test split is carved out of train (seeded)."""

    train: DataFile
    valid: DataFile | None = None
    test: DataFile | None = None
    format: Literal["auto", "tsv", "jsonl", "parquet", "hf_disk", "text"] = "auto"  # auto: by name
    source_field: str = "source"  # JSONL/Parquet/datasets field, or TSV header column
    target_field: str = "target"
    carve_pairs: int = Field(500, ge=1)  # pairs carved out of train for each missing valid/test split


class DataSpec(_Strict):
    """The corpus: a registered dataset by name (with split names), or the user's own `files`."""

    dataset: str | None = None
    files: DataFiles | None = None
    source_lang: str
    target_lang: str
    train: str | None = None  # split names of the registered dataset
    valid: str | None = None
    test: str | None = None
    # Keep only the first N training pairs (smoke runs); None keeps all.
    max_train_pairs: int | None = Field(None, gt=0)
    max_eval_pairs: int | None = Field(None, gt=0)
    lines: LinePolicy = LinePolicy()

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.dataset is None) == (self.files is None):
            raise ValueError("give exactly one of data.dataset (a registered corpus) and data.files (your own)")
        if self.dataset is not None:
            missing = [r for r in ("train", "valid", "test") if getattr(self, r) is None]
            if missing:
                raise ValueError(f"data.dataset '{self.dataset}' needs split names for data.{', data.'.join(missing)}")
        elif any(getattr(self, r) is not None for r in ("train", "valid", "test")):
            raise ValueError(
                "data.train/valid/test name a registered dataset's splits; with data.files, put the "
                "paths under data.files.train/valid/test"
            )
        return self

    @property
    def corpus_name(self) -> str:
        """What records and lineage call the corpus."""
        return self.dataset or "files"


class TokenizerSpec(_Strict):
    kind: Literal["sentencepiece", "pretrained"] = "sentencepiece"
    vocab_size: int = Field(8000, ge=16)
    model_type: Literal["unigram", "bpe"] = "unigram"
    character_coverage: float = Field(1.0, gt=0.0, le=1.0)
    max_length: int = Field(128, ge=8)
    # Sentences sampled for SentencePiece training (None = all of train).
    input_sentence_size: int | None = Field(None, gt=0)
