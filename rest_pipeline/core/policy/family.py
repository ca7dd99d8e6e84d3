"""Policy families: what differs between an encoder-decoder and a decoder-only LM prompted to
translate, kept in one place so that BC, Improve (every loss), Grow, evaluation and PPO run the
same code for both.

An encoder-decoder reads the source with its encoder and writes the target from a start token. A
causal LM reads `prompt(source)` and continues it; only the completion is trained on and returned.
Batches put every completion at the same position: prompts are padded on the left, completions on
the right, so logits[:, P-1 : P-1+T] predict the T completion tokens and the labels have the same
[batch, target] layout as an encoder-decoder's. Losses, log-probabilities and the behaviour policy's
token scores therefore never need to know which family produced them.

The prompt format travels in the model's config (`rest_prompt`, saved in config.json), so any
checkpoint folder says how to prompt it; a config without it is an encoder-decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rest_pipeline.core.policy.tokenizer import FastEncoder

IGNORE = -100  # label of a position that is not trained on


@dataclass(frozen=True)
class PromptFormat:
    """How a causal LM is asked to translate, and where its answer ends."""

    template: str = "Translate German to English:\n{source}\nEnglish:"
    chat_template: bool = True  # used when the tokenizer has a chat template
    stop: Literal["eos", "newline"] = "eos"

    def to_config(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Seq2SeqFormat:
    """What a pretrained encoder-decoder needs besides the text: language codes (M2M100/NLLB, mBART) or
    a task prefix (T5). Saved in the checkpoint's config as `rest_seq2seq`, like a causal LM's prompt."""

    source_lang_code: str | None = None
    target_lang_code: str | None = None
    task_prefix: str = ""

    def to_config(self) -> dict:
        return asdict(self)


LANGUAGE_CODED = {"m2m_100", "mbart"}  # M2M100 and NLLB (model_type m2m_100), mBART

# Seq2Seq.forward leaves out Marian's and mBART's all-zero logits bias (False: the model's own forward, the
# old path bench/bc_bench.py compares).
SKIP_ZERO_LOGITS_BIAS = True


def language_code_id(tokenizer: PreTrainedTokenizerBase, code: str, field: str) -> int:
    """The vocabulary id of a language code ('de' for M2M100, 'deu_Latn' for NLLB, 'de_DE' for mBART)."""
    token = tokenizer.get_lang_token(code) if hasattr(tokenizer, "get_lang_token") else code
    idx = tokenizer.convert_tokens_to_ids(token)
    if idx is None or idx == tokenizer.unk_token_id:
        known = [t for t in getattr(tokenizer, "additional_special_tokens", []) or []][:6]
        raise ValueError(f"{field}: '{code}' is not a language code of this tokenizer (e.g. {', '.join(known)})")
    return int(idx)


def decode_skipping_special(tokenizer: PreTrainedTokenizerBase, ids: Sequence[Sequence[int]]) -> list[str]:
    """`batch_decode(ids, skip_special_tokens=True)`, the same text faster: a slow (Python) tokenizer
    rebuilds its list of special tokens for every token it looks at (0.19 ms an output for our Marian,
    bench/decode_bench.py); dropping what it would skip first and decoding the rest takes half that.
    It skips a special id, and any id whose token reads as a special token (an id past the vocabulary
    becomes <unk>). A fast tokenizer skips them in Rust, as it is."""
    if tokenizer.is_fast:
        return tokenizer.batch_decode(ids, skip_special_tokens=True)
    special_ids, special_tokens = set(tokenizer.all_special_ids), set(tokenizer.all_special_tokens)
    seen = {i for x in ids for i in x}
    drop = special_ids | {i for i in seen if tokenizer.convert_ids_to_tokens(i) in special_tokens}
    return tokenizer.batch_decode([[i for i in x if i not in drop] for x in ids], skip_special_tokens=False)


@dataclass
class Batch:
    """One training batch of either family; `labels` is [B, T] with IGNORE where there is no target."""

    inputs: dict[str, torch.Tensor]  # the model's keyword arguments
    labels: torch.Tensor
    target_tokens: int
    prompt_width: int = 0  # causal: P, where completions start in `inputs`

    def rows(self, rows: torch.Tensor | slice) -> Batch:
        return Batch({k: v[rows] for k, v in self.inputs.items()}, self.labels[rows],
                     int((self.labels[rows] != IGNORE).sum()), self.prompt_width)  # fmt: skip


@dataclass
class Forward:
    logits: torch.Tensor  # [B, T, V], aligned with Batch.labels
    states: torch.Tensor  # [B, S, D]: the encoder's last layer, or a causal LM's last layer over the prompt
    states_mask: torch.Tensor  # [B, S]


class Seq2Seq:
    """Encoder-decoder (Marian, opus-mt, M2M100/NLLB, mBART, T5, any AutoModelForSeq2SeqLM).

    Language-coded families: the tokenizer writes the source code into the source and the target code
    into the labels; M2M100/NLLB then start each output with the target code (forced after the decoder
    start), mBART starts its decoder from it (the labels' trailing code is dropped)."""

    kind = "seq2seq"

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        decoder_start_id: int,
        fmt: Seq2SeqFormat | None = None,
        model_type: str = "marian",
    ):
        self.tokenizer, self.encoder = tokenizer, FastEncoder(tokenizer)
        self.pad_id, self.eos_id, self.start_id = tokenizer.pad_token_id, tokenizer.eos_token_id, decoder_start_id
        self.fmt, self.model_type = fmt or Seq2SeqFormat(), model_type
        self.generate_kw: dict = {}
        self.target_code_id: int | None = None
        if model_type in LANGUAGE_CODED:
            if not (self.fmt.source_lang_code and self.fmt.target_lang_code):
                raise ValueError(
                    f"policy.source_lang_code/target_lang_code: a {model_type} model translates between language "
                    "codes (NLLB: deu_Latn -> eng_Latn, M2M100: de -> en, mBART: de_DE -> en_XX); set both"
                )
            language_code_id(tokenizer, self.fmt.source_lang_code, "policy.source_lang_code")
            self.target_code_id = language_code_id(tokenizer, self.fmt.target_lang_code, "policy.target_lang_code")
            tokenizer.src_lang, tokenizer.tgt_lang = self.fmt.source_lang_code, self.fmt.target_lang_code
            if model_type == "mbart":
                self.start_id = self.target_code_id
                self.generate_kw = {"decoder_start_token_id": self.target_code_id}
            else:
                self.generate_kw = {"forced_bos_token_id": self.target_code_id}

    def encode_sources(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        prefix = self.fmt.task_prefix
        return self.encoder.encode([prefix + t for t in texts] if prefix else list(texts), max_length)

    def encode_targets(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        ids = self.encoder.encode(list(texts), max_length, target=True)
        if self.model_type == "mbart":  # [tokens, </s>, code]: the code is the decoder's start instead
            ids = [t[:-1] if t and t[-1] == self.target_code_id else t for t in ids]
        return ids

    def collate(self, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> Batch:
        n, ls, lt = len(src), max(len(s) for s in src), max(len(t) for t in tgt)
        input_ids = torch.full((n, ls), self.pad_id, dtype=torch.long)
        labels = torch.full((n, lt), IGNORE, dtype=torch.long)
        dec = torch.full((n, lt), self.pad_id, dtype=torch.long)
        for row, (s, t) in enumerate(zip(src, tgt, strict=True)):
            input_ids[row, : len(s)] = torch.tensor(s)
            labels[row, : len(t)] = torch.tensor(t)
            dec[row, 0] = self.start_id
            dec[row, 1 : len(t)] = torch.tensor(t[:-1])
        inputs = {"input_ids": input_ids, "attention_mask": (input_ids != self.pad_id).long(), "decoder_input_ids": dec}
        return Batch(inputs, labels, int((labels != IGNORE).sum()))

    def forward(self, model: PreTrainedModel, b: Batch) -> Forward:
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in b.inputs.items()}
        mask = inputs["attention_mask"]
        if self._zero_logits_bias(model):
            # Marian and mBART add a [1, V] logits bias that is all zeros unless a checkpoint trained one:
            # a pass over the [B, T, V] logits (~2 % of a default BC update) that changes no number. Their
            # forward is otherwise the base model and the LM head, called here without the bias.
            out = model.model(**inputs, use_cache=False)
            return Forward(model.lm_head(out.last_hidden_state), out.encoder_last_hidden_state, mask)
        out = model(**inputs)
        return Forward(out.logits, out.encoder_last_hidden_state, mask)

    def _zero_logits_bias(self, model: PreTrainedModel) -> bool:
        bias = getattr(model, "final_logits_bias", None)
        return (SKIP_ZERO_LOGITS_BIAS and self.model_type in ("marian", "mbart") and isinstance(bias, torch.Tensor)
                and not bias.any())  # fmt: skip

    def generate(self, model: PreTrainedModel, src: Sequence[Sequence[int]], **kw) -> list[list[int]]:
        """Output ids per returned sequence, up to and including the first EOS (the decoder start dropped)."""
        device = next(model.parameters()).device
        ids, mask = left_or_right_pad(src, self.pad_id, left=False)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **self.generate_kw, **kw).cpu()
        return [_cut(row[1:].tolist(), {self.eos_id}, self.pad_id) for row in out]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Text of each output, up to its first EOS (a language code is never text, whatever the tokenizer
        counts as special)."""
        cut = [[t for t in _cut(list(x), {self.eos_id}, self.pad_id) if t != self.target_code_id] for x in ids]
        return [t.strip() for t in decode_skipping_special(self.tokenizer, cut)]


class CausalLM:
    """Decoder-only LM (Llama, Qwen, any AutoModelForCausalLM) prompted to translate."""

    kind = "causal_lm"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt: PromptFormat):
        self.tokenizer, self.prompt, self.encoder = tokenizer, prompt, FastEncoder(tokenizer)
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.use_chat = prompt.chat_template and getattr(tokenizer, "chat_template", None) is not None
        # The completion's end: EOS, or the token(s) of a newline when the spec stops there.
        self.end = [self.eos_id] if prompt.stop == "eos" else self._newline_ids()
        # Every token a completion may end on: EOS, and with stop "newline" each token whose text holds a
        # newline (byte-level BPE merges them: "\n\n", ".\n", ...), so generation stops on any of them.
        self.stops = {self.eos_id} | (_newline_tokens(tokenizer) if prompt.stop == "newline" else set())

    def _newline_ids(self) -> list[int]:
        ids = self.tokenizer("\n", add_special_tokens=False)["input_ids"]
        if not ids or "\n" not in self.tokenizer.decode(ids):
            raise ValueError("policy.stop 'newline': this tokenizer cannot write a newline (SentencePiece "
                             "normalises it away); use stop: eos")  # fmt: skip
        return ids

    def _text_ids(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        if self.encoder._sp is not None:  # our SentencePiece vocabulary: the C++ encoder, without its EOS
            return [ids[:-1] for ids in self.encoder.encode(list(texts), max_length + 1)]
        enc = self.tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length)
        return enc["input_ids"]

    def encode_sources(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """Prompt ids: the source (cut to max_length tokens) inside the template."""
        if self.use_chat:
            out = []
            for text in texts:
                source = self.tokenizer.decode(self._text_ids([text], max_length)[0])
                messages = [{"role": "user", "content": self.prompt.template.format(source=source)}]
                out.append(
                    list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
                )
            return out
        before, after = self.prompt.template.split("{source}", 1)
        head = self._text_ids([before], 10_000)[0] if before.strip() else []
        tail = self._text_ids([after], 10_000)[0] if after.strip() else []
        bos = [self.tokenizer.bos_token_id] if getattr(self.tokenizer, "add_bos_token", False) else []
        return [bos + head + ids + tail for ids in self._text_ids(texts, max_length)]

    def encode_targets(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """Completion ids: the target then the end (EOS or newline), max_length tokens in all."""
        room = max_length - len(self.end)
        return [ids[:room] + self.end for ids in self._text_ids(texts, max_length)]

    def collate(self, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> Batch:
        n, p, t = len(src), max(len(s) for s in src), max(len(c) for c in tgt)
        # Input: prompt (left-padded to P) + completion without its last token; labels: the completion.
        ids = torch.full((n, p + t - 1), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, p + t - 1), dtype=torch.long)
        labels = torch.full((n, t), IGNORE, dtype=torch.long)
        for row, (s, c) in enumerate(zip(src, tgt, strict=True)):
            ids[row, p - len(s) : p] = torch.tensor(s)
            ids[row, p : p + len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
            mask[row, p - len(s) : p + len(c) - 1] = 1
            labels[row, : len(c)] = torch.tensor(c)
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        return Batch(inputs, labels, int((labels != IGNORE).sum()), prompt_width=p)

    def forward(self, model: PreTrainedModel, b: Batch) -> Forward:
        device = next(model.parameters()).device
        out = model(**{k: v.to(device) for k, v in b.inputs.items()}, output_hidden_states=True)
        p, t = b.prompt_width, b.labels.shape[1]
        logits = out.logits[:, p - 1 : p - 1 + t]
        states = out.hidden_states[-1][:, :p]
        return Forward(logits, states, b.inputs["attention_mask"][:, :p].to(device))

    def generate(self, model: PreTrainedModel, src: Sequence[Sequence[int]], **kw) -> list[list[int]]:
        """Completion ids per returned sequence, up to and including the first end token (EOS or newline)."""
        device = next(model.parameters()).device
        ids, mask = left_or_right_pad(src, self.pad_id, left=True)
        kw.setdefault("pad_token_id", self.pad_id)
        kw["eos_token_id"] = sorted(self.stops)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kw).cpu()
        return [_cut(row[ids.shape[1] :].tolist(), self.stops, self.pad_id) for row in out]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Text of each completion, up to its first end (EOS, or a newline when the spec stops there)."""
        cut = [_cut(list(x), {self.eos_id}, self.pad_id) for x in ids]
        texts = decode_skipping_special(self.tokenizer, cut)
        return [t.split("\n", 1)[0].strip() if self.prompt.stop == "newline" else t.strip() for t in texts]


Family = Seq2Seq | CausalLM


def family_of(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Family:
    """The family of a loaded model (a peft-wrapped one included), from its config."""
    config = model.config
    if config.is_encoder_decoder:
        fmt = Seq2SeqFormat(**(getattr(config, "rest_seq2seq", None) or {}))
        return Seq2Seq(tokenizer, config.decoder_start_token_id, fmt, config.model_type)
    return CausalLM(tokenizer, PromptFormat(**(getattr(config, "rest_prompt", None) or {})))


def hidden_size(model: PreTrainedModel) -> int:
    config = model.config
    return int(getattr(config, "d_model", None) or config.hidden_size)


def left_or_right_pad(seqs: Sequence[Sequence[int]], pad_id: int, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[row, cols] = torch.tensor(s, dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


def _newline_tokens(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids whose decoded text contains a newline; computed once per tokenizer (a vocabulary of 150k
    decodes in about a second)."""
    cached = getattr(tokenizer, "_rest_newline_tokens", None)
    if cached is None:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        cached = {i for i, t in enumerate(texts) if "\n" in t}
        tokenizer._rest_newline_tokens = cached
    return cached


def _cut(ids: list[int], ends: set[int], pad_id: int) -> list[int]:
    """Ids up to and including the first end token; trailing padding (finished rows) dropped."""
    for i, tok in enumerate(ids):
        if tok in ends:
            return ids[: i + 1]
    while ids and ids[-1] == pad_id:
        ids = ids[:-1]
    return ids
