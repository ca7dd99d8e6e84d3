"""Evaluate a policy checkpoint: decode valid/test with each decoding setting, score, store.

Hypotheses are written next to the scores (Parquet per split x decoding, one JSON summary)
so every number can be traced back to the exact outputs that produced it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from rest_pipeline.core.evaluation.metrics import corpus_scores
from rest_pipeline.core.paths import atomic_path
from rest_pipeline.core.policy.generate import translate
from rest_pipeline.core.policy.model import load_policy
from rest_pipeline.core.policy.tokenizer import load_tokenizer
from rest_pipeline.spec import EvaluationSpec


@dataclass(frozen=True)
class EvalRow:
    split: str
    decoding: str
    num_beams: int
    bleu: float
    chrf: float
    sentences: int
    seconds: float
    bleu_signature: str
    hypotheses_path: str


def evaluate_checkpoint(
    checkpoint: Path,
    splits: dict[str, pd.DataFrame],
    spec: EvaluationSpec,
    out_dir: Path,
    *,
    max_source_length: int = 128,
    log: Callable[[str], None] = print,
) -> list[EvalRow]:
    key = _eval_key(checkpoint, spec, splits)
    scores_file = out_dir / "scores.json"
    if scores_file.is_file():
        saved = json.loads(scores_file.read_text())
        if isinstance(saved, dict) and saved.get("key") == key:
            log(f"eval: {checkpoint} already evaluated with these settings; reusing {scores_file}")
            return [EvalRow(**r) for r in saved["rows"]]
    model = load_policy(checkpoint)
    tokenizer = load_tokenizer(checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[EvalRow] = []
    for split in spec.splits:
        df = splits[split]
        for dec in spec.decoding:
            t0 = time.perf_counter()
            hyps = translate(
                model,
                tokenizer,
                list(df.source),
                dec,
                batch_tokens=spec.batch_tokens,
                max_source_length=max_source_length,
            )
            seconds = time.perf_counter() - t0
            scores = corpus_scores(hyps, list(df.target))
            path = out_dir / f"{split}.{dec.name}.parquet"
            with atomic_path(path) as tmp:
                pd.DataFrame(
                    {"source_id": df.source_id, "source": df.source, "reference": df.target, "hypothesis": hyps}
                ).to_parquet(tmp, index=False)
            row = EvalRow(
                split,
                dec.name,
                dec.num_beams,
                round(scores.bleu, 2),
                round(scores.chrf, 2),
                len(df),
                round(seconds, 1),
                scores.bleu_signature,
                str(path),
            )
            log(f"eval: {split}/{dec.name}: BLEU {row.bleu} chrF {row.chrf} ({row.seconds}s, {len(df)} sentences)")
            rows.append(row)
    with atomic_path(scores_file) as tmp:
        tmp.write_text(json.dumps({"key": key, "rows": [asdict(r) for r in rows]}, indent=1))
    return rows


def _eval_key(checkpoint: Path, spec: EvaluationSpec, splits: dict[str, pd.DataFrame]) -> str:
    """Same weights + same settings + same data = same scores: no need to decode again."""
    h = hashlib.sha256()
    h.update((checkpoint / "model.safetensors").read_bytes())
    h.update(spec.model_dump_json().encode())
    for name in sorted(splits):
        h.update(name.encode())
        h.update(pd.util.hash_pandas_object(splits[name][["source", "target"]], index=False).values.tobytes())
    return h.hexdigest()[:24]


def read_scores(out_dir: Path) -> list[dict]:
    return json.loads((out_dir / "scores.json").read_text())["rows"]


def example_table(out_dir: Path, split: str, decoding: str, n: int) -> pd.DataFrame:
    df = pd.read_parquet(out_dir / f"{split}.{decoding}.parquet")
    return df.head(n)[["source", "reference", "hypothesis"]]
