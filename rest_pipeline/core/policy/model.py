"""The policy in Hugging Face format: an encoder-decoder or a decoder-only LM (family.py says how
each is fed).

From scratch we build a small Marian or a tiny Llama-shaped LM; a `pretrained_path` loads any HF
seq2seq or causal-LM folder instead. Checkpoints are saved with safetensors so `from_pretrained(path)`
loads them anywhere. With `policy.lora`, an Improve step's checkpoint is a peft adapter folder that
names its parent (a relative path and the parent's weights hash); loading merges the chain of
adapters into the base, so every reader sees a plain model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    LlamaConfig,
    LlamaForCausalLM,
    MarianConfig,
    MarianMTModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rest_pipeline.core.paths import atomic_dir, is_hub_id
from rest_pipeline.core.policy.family import PromptFormat, Seq2SeqFormat
from rest_pipeline.spec import LoraSpec, PolicySpec

ADAPTER_FILE = "adapter_model.safetensors"
LINEAGE_FILE = "rest_adapter.json"  # an adapter folder's parent: relative path + weights hash
MERGED_WEIGHTS_FILE = "rest_merged_weights"  # in a merged LoRA chain's folder: its weights hash


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


def prompt_format(spec: PolicySpec) -> PromptFormat:
    return PromptFormat(template=spec.prompt, chat_template=spec.chat_template, stop=spec.stop)


def build_causal(spec: PolicySpec, tokenizer: PreTrainedTokenizerBase, max_length: int) -> LlamaForCausalLM:
    """A tiny Llama-shaped LM on our vocabulary (decoder_layers deep): the CPU smoke's causal policy."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.d_model,
        intermediate_size=spec.ffn_dim,
        num_hidden_layers=spec.decoder_layers,
        num_attention_heads=spec.attention_heads,
        num_key_value_heads=spec.attention_heads,
        max_position_embeddings=max(max_length, 64) * 4,  # prompt + completion
        attention_dropout=spec.attention_dropout,
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    config.rest_prompt = prompt_format(spec).to_config()
    return LlamaForCausalLM(config)


def build_policy(spec: PolicySpec, tokenizer: PreTrainedTokenizerBase, max_length: int) -> PreTrainedModel:
    """The BC policy before training: from scratch, or the pretrained folder (a causal LM gets the prompt)."""
    if spec.pretrained_path:
        model = load_policy(spec.pretrained_path)
        if not model.config.is_encoder_decoder:
            model.config.rest_prompt = prompt_format(spec).to_config()
        elif spec.kind == "causal_lm":
            raise ValueError(f"policy.pretrained_path {spec.pretrained_path}: an encoder-decoder, not a causal LM")
        elif spec.source_lang_code or spec.target_lang_code or spec.task_prefix:
            fmt = Seq2SeqFormat(spec.source_lang_code, spec.target_lang_code, spec.task_prefix)
            model.config.rest_seq2seq = fmt.to_config()  # saved with every checkpoint after it
        return model
    if spec.kind == "causal_lm":
        return build_causal(spec, tokenizer, max_length).to(pick_device())
    return build_marian(spec, tokenizer, max_length).to(pick_device())


def load_policy(path: str | Path, device: torch.device | None = None) -> PreTrainedModel:
    """A checkpoint folder as a plain model: seq2seq or causal by its config; an adapter folder merged
    into its parent (recursively)."""
    if is_hub_id(path):
        return _from_pretrained(str(path)).to(device or pick_device())
    path = Path(path)
    if (path / LINEAGE_FILE).is_file():
        return _load_adapter(path).to(device or pick_device())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face checkpoint (config.json missing)")
    return _from_pretrained(str(path)).to(device or pick_device())


def _from_pretrained(name: str) -> PreTrainedModel:
    try:
        config = AutoConfig.from_pretrained(name)
    except OSError as e:
        raise FileNotFoundError(f"{name}: no local folder and not loadable from the Hugging Face Hub ({e})") from e
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return auto.from_pretrained(name)


def _load_adapter(path: Path) -> PreTrainedModel:
    from peft import PeftModel

    parent = adapter_parent(path)
    base = load_policy(parent, torch.device("cpu"))
    return PeftModel.from_pretrained(base, str(path)).merge_and_unload()


def adapter_parent(path: Path) -> Path:
    """The checkpoint an adapter folder was trained on; checked by hash so a moved folder fails loudly."""
    lineage = json.loads((path / LINEAGE_FILE).read_text())
    parent = (path / lineage["parent"]).resolve()
    if not parent.exists() or weights_hash(parent) != lineage["parent_hash"]:
        raise FileNotFoundError(
            f"{path}: its LoRA parent {lineage['parent']} (weights {lineage['parent_hash']}) is missing or changed"
        )
    return parent


def policy_config(checkpoint: Path) -> dict:
    """The transformers config a checkpoint runs with (an adapter's: its base model's), as stored."""
    checkpoint = Path(checkpoint)
    while not (checkpoint / "config.json").is_file() and (checkpoint / LINEAGE_FILE).is_file():
        checkpoint = adapter_parent(checkpoint)
    return json.loads((checkpoint / "config.json").read_text())


def adapter_lineage(path: Path) -> dict | None:
    """For a LoRA checkpoint: the model it applies to (path, weights hash) and its own adapter's hash."""
    path = Path(path)
    if not (path / LINEAGE_FILE).is_file():
        return None
    lineage = json.loads((path / LINEAGE_FILE).read_text())
    config = json.loads((path / "adapter_config.json").read_text())
    return {
        "applies_to": str(adapter_parent(path)),
        "applies_to_hash": lineage["parent_hash"],
        "adapter_hash": hashlib.sha256((path / ADAPTER_FILE).read_bytes()).hexdigest()[:16],
        "r": config.get("r"),
        "alpha": config.get("lora_alpha"),
        "target_modules": sorted(config.get("target_modules") or []),
    }


def with_lora(model: PreTrainedModel, spec: LoraSpec, parent: Path) -> PreTrainedModel:
    """`model` (loaded from `parent`) wrapped with fresh LoRA adapters; only they train."""
    from peft import LoraConfig, get_peft_model

    causal = not model.config.is_encoder_decoder
    config = LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=spec.target_modules,
        task_type="CAUSAL_LM" if causal else "SEQ_2_SEQ_LM",
    )  # fmt: skip
    wrapped = get_peft_model(model, config)
    wrapped.rest_parent = Path(parent).resolve()
    return wrapped


def weight_files(path: Path) -> list[Path]:
    """A full checkpoint's weights: model.safetensors, or the shards its index names (a folder from the
    Hub or another tool; save_policy writes one file)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        return shards if all(f.is_file() for f in shards) else []
    return []


def is_checkpoint(path: Path) -> bool:
    """A complete checkpoint folder: full weights, or a LoRA adapter with its parent link."""
    path = Path(path)
    full = (path / "config.json").is_file() and bool(weight_files(path))
    return full or ((path / LINEAGE_FILE).is_file() and (path / ADAPTER_FILE).is_file())


def weights_hash(checkpoint: str | Path) -> str:
    """Identity of a checkpoint's weights: keys caches of evaluations, conversions and lineage. An
    adapter folder's identity is its parent's plus its adapter's."""
    checkpoint = Path(checkpoint)
    if (checkpoint / LINEAGE_FILE).is_file():
        parent = json.loads((checkpoint / LINEAGE_FILE).read_text())["parent_hash"]
        return hashlib.sha256(parent.encode() + (checkpoint / ADAPTER_FILE).read_bytes()).hexdigest()[:16]
    files = weight_files(checkpoint)
    if not files:
        raise FileNotFoundError(f"{checkpoint}: no model.safetensors (or complete shards) to identify the weights by")
    h = hashlib.sha256()  # streamed: a pretrained LLM's weights are gigabytes
    for f in files:
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()[:16]


def save_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path) -> Path:
    """Write model + tokenizer as one self-contained HF folder, atomically; a LoRA-wrapped model as its
    adapter plus the parent it applies to (relative path from `path`, and that parent's hash)."""
    parent = getattr(model, "rest_parent", None)
    with atomic_dir(path) as tmp:
        # One weights file whatever the size (transformers shards above 5 GB by default), so that a
        # checkpoint is always model.safetensors for hashing, branching and CTranslate2.
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size="10000GB")
        tokenizer.save_pretrained(tmp)
        if parent is not None:
            lineage = {"parent": os.path.relpath(parent, Path(path).resolve()), "parent_hash": weights_hash(parent)}
            (tmp / LINEAGE_FILE).write_text(json.dumps(lineage, indent=1))
    return path


def export_merged(checkpoint: Path, out: Path) -> Path:
    """A checkpoint (adapters merged) as a plain HF folder that `from_pretrained` loads anywhere."""
    from rest_pipeline.core.policy.tokenizer import load_tokenizer

    return save_policy(load_policy(checkpoint, torch.device("cpu")), load_tokenizer(checkpoint), out)


def merged_checkpoint(checkpoint: Path) -> Path:
    """A folder an inference engine can load: `checkpoint` itself when it holds full weights; for a LoRA
    chain, its merge, written once beside it (`.<name>.merged`) and re-made when the chain's hash (its
    weights_hash: every parent's hash and every adapter) changes. Engines without runtime LoRA
    (CTranslate2, vLLM here) read this, so a grow merges its policy once, not per batch or lane."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / LINEAGE_FILE).is_file():
        return checkpoint
    out = checkpoint.parent / f".{checkpoint.name}.merged"
    stamp, marker = weights_hash(checkpoint), out / "rest_merged_from"
    if marker.is_file() and marker.read_text() == stamp and is_checkpoint(out):
        return out
    from filelock import FileLock

    with FileLock(str(out.with_name(out.name + ".lock"))):  # two shards may need it at once
        if not (marker.is_file() and marker.read_text() == stamp and is_checkpoint(out)):
            with atomic_dir(out) as tmp:
                export_merged(checkpoint, tmp / "hf")
                for f in (tmp / "hf").iterdir():
                    f.rename(tmp / f.name)
                (tmp / "hf").rmdir()
                (tmp / MERGED_WEIGHTS_FILE).write_text(weights_hash(tmp))  # hashed once, for lineage
                (tmp / "rest_merged_from").write_text(stamp)
    return out


def merged_weights_hash(merged: Path) -> str:
    """The weights hash of a `merged_checkpoint` folder, recorded when it was made (no re-read of an
    LLM's gigabytes per sampler)."""
    recorded = Path(merged) / MERGED_WEIGHTS_FILE
    return recorded.read_text() if recorded.is_file() else weights_hash(merged)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
