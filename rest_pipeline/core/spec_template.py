"""`rest new`: a commented spec for a user's own task (their data, optionally their model and a served
reward), written from what the files hold. The user edits it; `rest check-spec` validates it and says
what will run. Nothing here guesses silently: every choice made for the user is a commented line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq

from rest_pipeline.core.corpus.files import data_format

TEMPLATE = """\
# {name}: ReST on your own data, written by `rest new` — edit freely, then
#   rest check-spec {path}     (validates it, counts the pairs, estimates the time here)
#   rest main {path}           (runs the whole graph; `rest ui` shows it)
description: {description}
seed: 1
data:
  files:
{files}
    format: auto              # tsv | jsonl | parquet | hf_disk | text, or auto (by suffix; a folder: save_to_disk)
{fields}    carve_pairs: 500          # pairs carved out of train (seeded) for a missing valid / test split
  source_lang: {source_lang}
  target_lang: {target_lang}
  lines: {{empty: reject, overlong: reject, undecodable: reject, max_chars: 1000}}  # reject: file:line; skip: count
{tokenizer_and_policy}
bc:                           # behavioural cloning to convergence on counts (never minutes)
  max_tokens: 2500
  epochs: 10
  lr: {bc_lr}
  warmup_steps: 300
  decay: cosine
  validate_pairs: 500
  keep_best_by: bleu
  patience: 3
evaluation:
  splits: [valid, test]
  decoding:
    - {{name: greedy, num_beams: 1}}
    - {{name: beam, num_beams: 4}}
  backend: {backend}
grow:
  sampling: {{n: 16, temperature: 0.8}}   # N samples per source (the paper: up to 100)
  max_sources: 5000
  shards: 2
  backend: {backend}
reward:
{reward}
improve:
  grows: 2
  filter: {{kind: percentile, values: [90, 100]}}   # per source: its top samples, then its best
  mix_originals: true
  dedupe: true
  train: {{max_steps: 300, lr: 0.0003, validate_every_steps: 100}}
  control: true               # the originals-only control beside ReST: what the samples add
"""


def _columns(data: Path, fmt: str) -> list[str]:
    """The field names a data file holds (for JSONL, those of its first line)."""
    if fmt == "parquet":
        return pq.read_schema(data).names
    if fmt == "jsonl":
        with open(data, encoding="utf-8") as f:
            first = json.loads(f.readline() or "{}")
        return list(first) if isinstance(first, dict) else []
    if fmt == "tsv":
        with open(data, encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\n").split("\t")
    if fmt == "hf_disk":
        folder = data / "train" if (data / "dataset_dict.json").is_file() else data
        info = (
            json.loads((folder / "dataset_info.json").read_text()) if (folder / "dataset_info.json").is_file() else {}
        )
        return list(info.get("features", {}))
    return []


def _fields(data: Path, fmt: str) -> str:
    cols = _columns(data, fmt)
    if fmt == "tsv" and not ({"source", "target"} <= set(cols)):
        return "    # two tab-separated columns per line: source<TAB>target (or a header naming source/target)\n"
    if {"source", "target"} <= set(cols):
        return "    source_field: source\n    target_field: target\n"
    src, tgt = (cols + ["source", "target"])[:2]
    return (
        f"    source_field: {src}          # the file's fields: {', '.join(cols) or 'unknown'}; check these two\n"
        f"    target_field: {tgt}\n"
    )


def _policy(model: str | None, spec_dir: Path, source: str, target: str) -> str:
    if model is None:
        return (
            "tokenizer: {kind: sentencepiece, vocab_size: 8000, max_length: 128}\n"
            "policy:                       # a small Marian from scratch; give --model to start from yours\n"
            "  kind: marian_scratch\n  d_model: 256\n  encoder_layers: 3\n  decoder_layers: 3\n"
            "  attention_heads: 4\n  ffn_dim: 1024"
        )
    folder = Path(model)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    decoder_only = not config.get("is_encoder_decoder", True)
    kind = "causal_lm" if decoder_only else "pretrained"
    shown = os.path.relpath(folder.resolve(), spec_dir.resolve())
    lines = [
        "tokenizer: {kind: pretrained, max_length: 128}   # the model folder's own tokenizer",
        f"policy:                       # {config.get('model_type', 'a Hugging Face')} model from your folder",
        f"  kind: {kind}",
        f"  pretrained_path: {shown}",
    ]
    if decoder_only:
        lines.append('  prompt: "Translate to the target language:\\n{source}\\nTranslation:"   # {source} is replaced')
    if config.get("model_type") in ("m2m_100", "mbart"):
        lines.append(f"  source_lang_code: {source}   # its tokenizer's codes: NLLB deu_Latn, M2M100 de, mBART de_DE")
        lines.append(f"  target_lang_code: {target}")
    if config.get("model_type") == "t5":
        lines.append('  task_prefix: "translate to the target language: "   # T5 reads a task prefix')
    return "\n".join(lines)


def _backend(model: str | None) -> str:
    """CTranslate2 where its outputs are checked equal to transformers' for the family (Marian, M2M100/NLLB,
    mBART, T5, and Llama-shaped causal LMs), transformers otherwise (CTranslate2 converts Mistral, Qwen, Gemma and
    Phi too: set the backend by hand after checking its outputs)."""
    from rest_pipeline.core.policy.ct2 import CT2_FAMILIES  # here: `rest new` starts without torch otherwise

    if model is None:
        return "ctranslate2"
    config = Path(model) / "config.json"
    kind = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    return "ctranslate2" if kind in (*CT2_FAMILIES, "llama") else "hf"


def _reward(reward: str) -> str:
    if reward.startswith(("http://", "https://")):
        return (
            "  model: http                # your served reward model (docs/reward_protocol.md)\n"
            f"  http: {{url: {reward}, batch_size: 64, timeout_s: 60, retries: 3, max_in_flight: 4, "
            "needs_reference: true}\n  extra: [chrf]               # an independent reward against reward hacking"
        )
    extra = "\n  extra: [chrf]               # an independent reward against reward hacking" if reward != "chrf" else ""
    return f"  model: {reward}               # chrf, bleu, learned, comet, http, or package.module:factory{extra}"


def new_spec(
    name: str,
    data: Path,
    out: Path,
    *,
    model: str | None = None,
    reward: str = "chrf",
    source_lang: str = "src",
    target_lang: str = "tgt",
) -> str:
    """The spec text for `name` (written to `out` by the caller); paths are relative to `out`'s folder."""
    fmt = data_format(data, "auto")
    spec_dir = out.parent
    shown = os.path.relpath(data.resolve(), spec_dir.resolve())
    files = (
        f"    train: {shown}               # valid/test: add `valid: <file>` and `test: <file>`, or let them be carved"
    )
    return TEMPLATE.format(
        name=name,
        path=out,
        description=f"ReST on {data.name}",
        files=files,
        fields=_fields(data, fmt),
        source_lang=source_lang,
        target_lang=target_lang,
        tokenizer_and_policy=_policy(model, spec_dir, source_lang, target_lang),
        bc_lr=0.0015 if model is None else 0.0001,
        backend=_backend(model),
        reward=_reward(reward),
    )
