"""`evaluation`: which splits, which decodings, which backend."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rest_pipeline.spec.base import _Strict


class DecodingSpec(_Strict):
    name: str
    num_beams: int = Field(1, ge=1)
    length_penalty: float = 1.0
    max_new_tokens: int = Field(128, ge=1)


class EvaluationSpec(_Strict):
    splits: list[Literal["valid", "test"]] = ["valid", "test"]
    decoding: list[DecodingSpec] = [
        DecodingSpec(name="greedy", num_beams=1),
        DecodingSpec(name="beam", num_beams=5),
    ]
    batch_tokens: int = Field(6000, ge=64)
    examples: int = Field(8, ge=0)
    # Greedy/beam decoding of validation and evaluation; CTranslate2 (float32) gives HF's outputs, ~3-4x faster.
    backend: Literal["hf", "ctranslate2"] = "hf"

    @model_validator(mode="after")
    def _unique(self) -> EvaluationSpec:
        names = [d.name for d in self.decoding]
        if len(set(names)) != len(names):
            raise ValueError(f"evaluation.decoding names must be unique, got {names}")
        return self
