"""Tokenizers: a joint SentencePiece vocabulary packaged as a Hugging Face MarianTokenizer.

Packaging the SentencePiece model in Marian's layout (source.spm, target.spm, vocab.json)
means `MarianTokenizer.from_pretrained(dir)` loads it anywhere, and CTranslate2's Marian
converter accepts the resulting checkpoint later.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm
from transformers import AutoTokenizer, MarianTokenizer, PreTrainedTokenizerBase

from rest_pipeline.core.paths import atomic_dir, is_hub_id
from rest_pipeline.spec import TokenizerSpec

# Ids fixed by the trained vocabulary; the model config reads them from the tokenizer.
# As in opus-mt models, <pad> is the *last* id (it is not a SentencePiece piece): the decoder
# starts from its zero embedding, and CTranslate2's Marian converter relies on that layout.
EOS_ID, UNK_ID = 0, 1


def train_sentencepiece(texts: Sequence[str], spec: TokenizerSpec, out_dir: Path, seed: int = 0) -> Path:
    """Train a joint (source+target) SentencePiece model and write a MarianTokenizer folder."""
    with atomic_dir(out_dir) as tmp_dir:
        _train_into(texts, spec, tmp_dir, seed)
    return out_dir


def _train_into(texts: Sequence[str], spec: TokenizerSpec, out_dir: Path, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
        prefix = Path(tmp) / "spm"
        kwargs = {
            "input": str(corpus),
            "model_prefix": str(prefix),
            "vocab_size": spec.vocab_size - 1,  # + <pad> = vocab_size
            "model_type": spec.model_type,
            "character_coverage": spec.character_coverage,
            "eos_id": EOS_ID,
            "unk_id": UNK_ID,
            "pad_id": -1,
            "bos_id": -1,
            "num_threads": 2,
            "minloglevel": 2,
        }
        if spec.input_sentence_size:
            kwargs["input_sentence_size"] = spec.input_sentence_size
            kwargs["shuffle_input_sentence"] = True
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(**kwargs)
        except RuntimeError as e:
            raise ValueError(f"tokenizer: SentencePiece training failed ({e}); lower tokenizer.vocab_size?") from e
        model_bytes = prefix.with_suffix(".model").read_bytes()
    (out_dir / "source.spm").write_bytes(model_bytes)
    (out_dir / "target.spm").write_bytes(model_bytes)
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    vocab["<pad>"] = len(vocab)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tok = MarianTokenizer(
        source_spm=str(out_dir / "source.spm"),
        target_spm=str(out_dir / "target.spm"),
        vocab=str(out_dir / "vocab.json"),
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=spec.max_length,
    )
    tok.save_pretrained(out_dir)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    if is_hub_id(path):
        try:
            return AutoTokenizer.from_pretrained(str(path))
        except OSError as e:
            raise FileNotFoundError(f"{path}: no local folder and no tokenizer on the Hugging Face Hub ({e})") from e
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: tokenizer folder not found")
    try:
        if (path / "source.spm").is_file():
            return MarianTokenizer.from_pretrained(str(path))
        if not (path / "tokenizer.json").is_file():
            # Only a SentencePiece model: converting it to a fast tokenizer needs a protobuf newer than
            # unbabel-comet allows, and the slow tokenizer gives the same ids.
            return AutoTokenizer.from_pretrained(str(path), use_fast=False)
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{path}: no loadable tokenizer ({str(e)[:300]})") from e


class FastEncoder:
    """Batch encoding without per-sentence Python overhead.

    For our own MarianTokenizer the SentencePiece ids *are* the vocabulary ids, so the C++
    processor encodes directly (same ids as the HF tokenizer, ~20x faster); any other
    tokenizer goes through its own __call__.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self._sp: spm.SentencePieceProcessor | None = None
        if isinstance(tokenizer, MarianTokenizer):
            sp = tokenizer.spm_source
            if sp.get_piece_size() <= len(tokenizer.encoder) and all(
                tokenizer.encoder.get(sp.id_to_piece(i)) == i for i in range(sp.get_piece_size())
            ):
                self._sp = sp

    def encode(self, texts: Sequence[str], max_length: int, target: bool = False) -> list[list[int]]:
        if self._sp is not None:
            ids = self._sp.encode(list(texts))
            return [seq[: max_length - 1] + [self.eos_id] for seq in ids]
        kw = {"text_target": list(texts)} if target else {"text": list(texts)}
        enc = self.tokenizer(**kw, truncation=True, max_length=max_length)
        return enc["input_ids"]
