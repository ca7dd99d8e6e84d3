"""Evaluate one checkpoint, two ways, with every number stored beside the outputs that produced it:

- `evaluate_decodings`: BLEU/chrF on valid/test under each decoding setting of the spec (greedy,
  beam, ...): how good a translator the BC policy is.
- `evaluate_policy`: the way ReST is judged: greedy outputs scored by every reward model (the
  training reward and independent ones), BLEU, chrF, and a diversity probe of sampled outputs.

Both are skipped when the same weights were already evaluated with the same settings and data.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd

from rest_pipeline.core.evaluation.metrics import corpus_scores
from rest_pipeline.core.grow.sampling import make_sampler, sample_candidates
from rest_pipeline.core.paths import atomic_path
from rest_pipeline.core.policy.generate import translate_checkpoint
from rest_pipeline.core.policy.model import weights_hash
from rest_pipeline.core.rewards.base import RewardModel, check_scores
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.records import DecodingEval, Diversity, EvalRow, Evaluation, ScoreSignature, SplitScores
from rest_pipeline.core.types import Log
from rest_pipeline.spec import DecodingSpec, EvaluationSpec, ExperimentSpec, SamplingSpec


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


def _data_hash(splits: dict[str, pd.DataFrame]) -> str:
    h = hashlib.sha256()
    for name in sorted(splits):
        h.update(name.encode())
        h.update(pd.util.hash_pandas_object(splits[name][["source", "target"]], index=False).values.tobytes())
    return h.hexdigest()[:24]


def _write_outputs(path: Path, table: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)


def evaluate_decodings(
    store: ExperimentStore,
    checkpoint: Path,
    splits: dict[str, pd.DataFrame],
    spec: EvaluationSpec,
    *,
    max_source_length: int = 128,
    log: Log = print,
) -> DecodingEval:
    """BLEU and chrF of each split under each decoding setting; hypotheses stored per (split, decoding)."""
    key = hashlib.sha256(
        # Not the backend: CTranslate2 at float32 decodes exactly like HF (tested), so results carry over.
        f"{weights_hash(checkpoint)}|{spec.model_dump_json(exclude={'backend'})}|{_data_hash(splits)}|"
        f"{max_source_length}".encode()
    ).hexdigest()[:24]
    saved = store.reusable(DecodingEval, key)
    if saved is not None:
        log(f"eval: {checkpoint} already evaluated with these settings; reusing {store.decoding_eval_dir}")
        return saved
    rows: list[EvalRow] = []
    for split in spec.splits:
        df = splits[split]
        for dec in spec.decoding:
            t0 = time.perf_counter()
            hyps = translate_checkpoint(
                checkpoint,
                list(df.source),
                dec,
                backend=spec.backend,
                batch_tokens=spec.batch_tokens,
                max_source_length=max_source_length,
            )
            seconds = time.perf_counter() - t0
            scores = corpus_scores(hyps, list(df.target))
            path = store.decoding_eval_dir / f"{split}.{dec.name}.parquet"
            _write_outputs(
                path,
                pd.DataFrame(
                    {"source_id": df.source_id, "source": df.source, "reference": df.target, "hypothesis": hyps}
                ),
            )
            row = EvalRow(
                split=split,
                decoding=dec,
                bleu=round(scores.bleu, 2),
                chrf=round(scores.chrf, 2),
                sentences=len(df),
                seconds=round(seconds, 1),
                bleu_signature=scores.bleu_signature,
                chrf_signature=scores.chrf_signature,
                hypotheses=store.rel(path),
            )
            log(f"eval: {split}/{dec.name}: BLEU {row.bleu} chrF {row.chrf} ({row.seconds}s, {len(df)} sentences)")
            rows.append(row)
    record = DecodingEval(key=key, checkpoint=store.rel(checkpoint), rows=rows)
    store.put(record)
    return record


def eval_splits(spec: ExperimentSpec, store: ExperimentStore) -> dict[str, pd.DataFrame]:
    """The spec's evaluation splits (valid, test) as the store holds them."""
    return {s: store.split(s) for s in spec.evaluation.splits}


def evaluate_policy(
    store: ExperimentStore,
    policy: str,
    checkpoint: Path,
    splits: dict[str, pd.DataFrame],
    rewards: list[RewardModel],
    *,
    max_length: int = 128,
    diversity: SamplingSpec | None = None,
    diversity_sources: int = 200,
    backend: str = "hf",
    decode_backend: str = "hf",
    compute_type: str = "float32",
    log: Log = print,
) -> Evaluation:
    """Greedy outputs of each split scored by every reward and by BLEU/chrF, plus a diversity probe."""
    greedy = DecodingSpec(name="greedy", num_beams=1, max_new_tokens=max_length)
    # The decode backend is not in the key: CTranslate2 and HF greedy give the same outputs (tested).
    sampler = backend if compute_type == "float32" else f"{backend}-{compute_type}"  # as grow.sampling.sampler_id
    probe = diversity.signature() if diversity is not None else None
    key_parts = [weights_hash(checkpoint), greedy.model_dump_json(), sampler, str(probe), str(diversity_sources)]
    key_parts += [f"{m.name}:{m.version}" for m in rewards] + [_data_hash(splits)]
    key = hashlib.sha256("|".join(key_parts).encode()).hexdigest()[:24]
    saved = store.reusable(Evaluation, policy=policy, key=key)
    if saved is not None:
        log(f"eval: {checkpoint} already evaluated with these rewards; reusing {store.eval_dir(policy)}")
        return saved
    out_dir = store.eval_dir(policy)
    scores: dict[str, SplitScores] = {}
    corpus = None
    for split, df in splits.items():
        hyps = translate_checkpoint(
            checkpoint, list(df.source), greedy, backend=decode_backend, max_source_length=max_length
        )
        table = pd.DataFrame(
            {"source_id": df.source_id, "source": df.source, "reference": df.target, "hypothesis": hyps}
        )
        corpus = corpus_scores(hyps, list(df.target))
        means: dict[str, float] = {}
        for m in rewards:
            s = reward_scores(m, df.source, hyps, df.target)
            table[f"reward_{m.name}"] = s
            means[m.name] = round(float(s.mean()), 5)
        path = out_dir / f"{split}.greedy.parquet"
        _write_outputs(path, table)
        scores[split] = SplitScores(
            sentences=len(df),
            bleu=round(corpus.bleu, 2),
            chrf=round(corpus.chrf, 2),
            rewards=means,
            distinct_1=round(distinct_n(hyps, 1), 4),
            distinct_2=round(distinct_n(hyps, 2), 4),
            mean_length=round(float(np.mean([len(h.split()) for h in hyps])), 2),
            hypotheses=store.rel(path),
        )
        log(f"eval {policy}: {split}: BLEU {scores[split].bleu}, chrF {scores[split].chrf}, rewards {means}")
    probe = None
    if diversity is not None and "valid" in splits:
        sources = list(splits["valid"].source[:diversity_sources])
        with closing(make_sampler(backend, checkpoint, max_length, compute_type)) as sampler:
            samples = sample_candidates(sampler, sources, diversity)
        probe = Diversity(
            samples_per_source=diversity.n,
            temperature=diversity.temperature,
            sources=len(sources),
            distinct_samples_per_source=round(float(np.mean([len(set(s)) for s in samples])), 3),
            distinct_2_of_samples=round(distinct_n([h for s in samples for h in s], 2), 4),
        )
        log(f"eval {policy}: diversity {probe}")
    signature = ScoreSignature(
        decoding=f"greedy,max_new={greedy.max_new_tokens},{decode_backend}",
        bleu=corpus.bleu_signature if corpus else None,
        chrf=corpus.chrf_signature if corpus else None,
        rewards={m.name: m.version for m in rewards},
    )
    record = Evaluation(
        key=key,
        policy=policy,
        checkpoint=store.rel(checkpoint),
        decoding=greedy,
        splits=scores,
        diversity=probe,
        signature=signature,
    )
    store.put(record)
    return record


def hypotheses(store: ExperimentStore, evaluation: Evaluation, split: str) -> pd.DataFrame:
    """Per-sentence outputs and rewards of an evaluation (columns source_id, hypothesis, reward_<name>)."""
    return pd.read_parquet(store.resolve(evaluation.splits[split].hypotheses))
