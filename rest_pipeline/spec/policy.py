"""`policy`: the model ReST improves (a Marian from scratch, a pretrained folder, a causal LM, LoRA)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rest_pipeline.spec.base import _Strict


class LoraSpec(_Strict):
    """Low-rank adapters (peft) for Improve steps: each step saves only its adapter; loading merges it
    into its parent, so sampling, evaluation and exports see a plain checkpoint."""

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # Module names to adapt (peft's target_modules); "all-linear" adapts every linear layer.
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class PolicySpec(_Strict):
    """marian_scratch / pretrained: an encoder-decoder (a small Marian from scratch, or any HF seq2seq
    folder). causal_lm: a decoder-only LM prompted to translate (from scratch with the fields below, a
    tiny Llama-shaped model, or any HF causal-LM folder given as pretrained_path)."""

    kind: Literal["marian_scratch", "pretrained", "causal_lm"] = "marian_scratch"
    pretrained_path: str | None = None
    # causal_lm: the prompt before the completion; {source} is replaced by the source sentence. With
    # chat_template and a tokenizer that has one, the prompt is sent as the user's turn instead.
    prompt: str = "Translate German to English:\n{source}\nEnglish:"
    chat_template: bool = True
    # causal_lm: where a completion ends, at the tokenizer's EOS or at the first newline.
    stop: Literal["eos", "newline"] = "eos"
    lora: LoraSpec | None = None
    # Pretrained encoder-decoders that need them: M2M100/NLLB and mBART translate between language codes
    # (e.g. deu_Latn -> eng_Latn for NLLB, de -> en for M2M100, de_DE -> en_XX for mBART): the source code
    # is set on the tokenizer, the target code starts every output. T5 reads a task prefix before the source.
    source_lang_code: str | None = None
    target_lang_code: str | None = None
    task_prefix: str = ""  # e.g. "translate German to English: " (T5)
    d_model: int = Field(256, ge=8)
    encoder_layers: int = Field(3, ge=1)
    decoder_layers: int = Field(3, ge=1)
    attention_heads: int = Field(4, ge=1)
    ffn_dim: int = Field(1024, ge=8)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    attention_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    activation_dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self) -> PolicySpec:
        if self.kind == "pretrained" and not self.pretrained_path:
            raise ValueError("policy.pretrained_path is required when policy.kind is 'pretrained'")
        if self.kind == "causal_lm" and "{source}" not in self.prompt:
            raise ValueError("policy.prompt must contain '{source}' (where the source sentence goes)")
        if self.d_model % self.attention_heads:
            raise ValueError("policy.d_model must be divisible by policy.attention_heads")
        return self
