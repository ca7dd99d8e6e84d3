"""Evaluate a checkpoint the way ReST is judged: average reward under the training reward
model, plus independent checks that the policy is not just pleasing it (BLEU, chrF, a reward
it was not trained on) and a diversity probe. Every number is stored with its hypotheses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from rest_pipeline.core.evaluation.metrics import corpus_scores
from rest_pipeline.core.grow.sampling import SamplingSettings, make_sampler, sample_candidates
from rest_pipeline.core.paths import atomic_path
from rest_pipeline.core.policy.generate import translate
from rest_pipeline.core.policy.model import load_policy
from rest_pipeline.core.policy.tokenizer import load_tokenizer
from rest_pipeline.core.rewards.base import RewardModel, check_scores
from rest_pipeline.spec import DecodingSpec

Log = Callable[[str], None]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams over a corpus of outputs (lower = more repetitive)."""
    total, seen = 0, set()
    for t in texts:
        toks = t.split()
        grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def reward_scores(model: RewardModel, sources: Sequence[str], hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """One validated score in [0, 1] per hypothesis (references passed only to models that need them)."""
    scores = model.score(list(sources), list(hyps), list(refs) if model.needs_reference else None)
    return check_scores(model, scores, len(hyps))


def weights_hash(checkpoint: Path) -> str:
    return hashlib.sha256((Path(checkpoint) / "model.safetensors").read_bytes()).hexdigest()[:16]


def evaluate_policy(
    checkpoint: Path,
    splits: dict[str, pd.DataFrame],
    rewards: list[RewardModel],
    out_dir: Path,
    *,
    max_length: int = 128,
    diversity: SamplingSettings | None = None,
    diversity_sources: int = 200,
    backend: str = "hf",
    log: Log = print,
) -> dict:
    """Greedy outputs of each split scored by every reward and by BLEU/chrF; reused when nothing changed.

    Returns {"key", "checkpoint", "splits": {split: {bleu, chrf, reward_<name>, distinct_1, ...}}}.
    """
    key_parts = [weights_hash(checkpoint), str(max_length), backend, repr(diversity), str(diversity_sources)]
    key_parts += [f"{m.name}:{m.version}" for m in rewards]
    for name in sorted(splits):
        key_parts.append(name + str(pd.util.hash_pandas_object(splits[name][["source", "target"]]).sum()))
    key = hashlib.sha256("|".join(key_parts).encode()).hexdigest()[:24]
    summary_file = out_dir / "summary.json"
    if summary_file.is_file():
        saved = json.loads(summary_file.read_text())
        if saved.get("key") == key:
            log(f"eval: {checkpoint} already evaluated with these rewards; reusing {summary_file}")
            return saved
    model = load_policy(checkpoint)
    tokenizer = load_tokenizer(checkpoint)
    greedy = DecodingSpec(name="greedy", num_beams=1, max_new_tokens=max_length)
    result: dict = {"key": key, "checkpoint": str(checkpoint), "splits": {}}
    for split, df in splits.items():
        hyps = translate(model, tokenizer, list(df.source), greedy, max_source_length=max_length)
        table = pd.DataFrame(
            {"source_id": df.source_id, "source": df.source, "reference": df.target, "hypothesis": hyps}
        )
        corpus = corpus_scores(hyps, list(df.target))
        row: dict = {"sentences": len(df), "bleu": round(corpus.bleu, 2), "chrf": round(corpus.chrf, 2)}
        for m in rewards:
            s = reward_scores(m, df.source, hyps, df.target)
            table[f"reward_{m.name}"] = s
            row[f"reward_{m.name}"] = round(float(s.mean()), 5)
        row["distinct_1"] = round(distinct_n(hyps, 1), 4)
        row["distinct_2"] = round(distinct_n(hyps, 2), 4)
        row["mean_length"] = round(float(np.mean([len(h.split()) for h in hyps])), 2)
        path = out_dir / f"{split}.greedy.parquet"
        with atomic_path(path) as tmp:
            table.to_parquet(tmp, index=False)
        row["hypotheses_path"] = str(path)
        log(f"eval: {split}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "hypotheses_path"))
        result["splits"][split] = row
    if diversity is not None and "valid" in splits:
        sampler = make_sampler(backend, checkpoint, max_length)
        sources = list(splits["valid"].source[:diversity_sources])
        samples = sample_candidates(sampler, sources, diversity)
        distinct = [len(set(s)) for s in samples]
        result["diversity"] = {
            "samples_per_source": diversity.samples_per_source,
            "temperature": diversity.temperature,
            "sources": len(sources),
            "distinct_samples_per_source": round(float(np.mean(distinct)), 3),
            "distinct_2_of_samples": round(distinct_n([h for s in samples for h in s], 2), 4),
        }
        log(f"eval: diversity {result['diversity']}")
    with atomic_path(summary_file) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return result


def best_of_n(
    checkpoint: Path,
    sources: Sequence[str],
    references: Sequence[str],
    reward: RewardModel,
    ns: Sequence[int],
    settings: SamplingSettings,
    out_file: Path,
    *,
    backend: str = "hf",
    max_length: int = 128,
    log: Log = print,
) -> dict[int, float]:
    """Mean over sources of the best reward among the first N samples, for each N.

    One set of max(ns) samples per source serves every N, so the curve is monotone by
    construction and costs a single sampling pass.
    """
    n_max = max(ns)
    sampler = make_sampler(backend, checkpoint, max_length)
    settings = SamplingSettings(**{**settings.__dict__, "samples_per_source": n_max})
    samples = sample_candidates(sampler, list(sources), settings)
    flat_src = [s for s, hyps in zip(sources, samples, strict=True) for _ in hyps]
    flat_ref = [r for r, hyps in zip(references, samples, strict=True) for _ in hyps]
    flat_hyp = [h for hyps in samples for h in hyps]
    log(f"best-of-n: scoring {len(flat_hyp)} samples of {checkpoint}")
    scores = reward_scores(reward, flat_src, flat_hyp, flat_ref).reshape(len(sources), n_max)
    curve = {int(n): round(float(scores[:, :n].max(axis=1).mean()), 5) for n in ns}
    with atomic_path(out_file) as tmp:
        pd.DataFrame(
            {
                "source": flat_src,
                "hypothesis": flat_hyp,
                "sample": np.tile(np.arange(n_max), len(sources)),
                "reward": scores.ravel(),
            }
        ).to_parquet(tmp, index=False)
    return curve
