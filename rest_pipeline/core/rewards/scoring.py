"""Scoring a grow shard's candidates with a reward model, through a content-hash cache: identical
(source, hypothesis[, reference]) inputs are scored once across shards, grows, runs and branches.

The reward owns its cache and its score checks; the store only says where the files go
(`CandidateTables.scores_file`, `cache_dir`). A chunk's scores are checked (length, finite, numeric)
before anything is written, so a broken reward leaves no cache entry and no scores file.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rest_pipeline.core.paths import atomic_path
from rest_pipeline.core.rewards.base import RewardModel, cache_key, check_scores
from rest_pipeline.core.store.candidates import CandidateTables
from rest_pipeline.core.store.location import connect_for, glob


@dataclass(frozen=True)
class ScoreReport:
    candidates: int
    unique_inputs: int
    newly_scored: int
    path: Path


def cached_scores(tables: CandidateTables, reward: str, keys: Sequence[str]) -> dict[str, float]:
    """The cached score of each of `keys` that has one."""
    files = glob(tables.cache_dir(reward), "*.parquet")
    if not files:
        return {}
    con = connect_for(files)
    con.register("wanted", pd.DataFrame({"key": list(set(keys))}))
    con.read_parquet([str(f) for f in files]).create_view("cache")
    df = con.execute(
        "SELECT c.key, any_value(c.score) AS score FROM cache c JOIN wanted USING (key) GROUP BY c.key"
    ).df()
    return dict(zip(df.key, df.score, strict=True))


def _append_cache(tables: CandidateTables, reward: str, keys: Sequence[str], scores: np.ndarray) -> None:
    path = tables.cache_dir(reward) / f"{uuid.uuid4().hex}.parquet"
    with atomic_path(path) as tmp:
        pq.write_table(pa.table({"key": list(keys), "score": scores.astype(np.float64)}), tmp)


def score_candidates(
    tables: CandidateTables,
    model: RewardModel,
    grow: int,
    shard: int,
    *,
    chunk: int = 2048,
    log: Callable[[str], None] | None = None,
) -> ScoreReport:
    """Score a shard's candidates; identical inputs are scored once and cached across runs."""
    cand = tables.read_candidates(grow, shard)
    tables.check_writable(tables.scores_file(model.name, grow, shard))
    refs = cand.reference.tolist()
    keys = [cache_key(model, s, h, r) for s, h, r in zip(cand.source, cand.hypothesis, refs, strict=True)]
    known = cached_scores(tables, model.name, keys)
    todo: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k not in known and k not in todo:
            todo[k] = i
    todo_items = list(todo.items())
    for start in range(0, len(todo_items), chunk):
        part = todo_items[start : start + chunk]
        idx = [i for _, i in part]
        scores = model.score(
            [cand.source.iat[i] for i in idx],
            [cand.hypothesis.iat[i] for i in idx],
            [refs[i] for i in idx] if model.needs_reference else None,
        )
        scores = check_scores(model, scores, len(idx))
        _append_cache(tables, model.name, [k for k, _ in part], scores)
        known.update({k: float(s) for (k, _), s in zip(part, scores, strict=True)})
        if log:
            log(f"scored {min(start + chunk, len(todo_items))}/{len(todo_items)} new inputs with {model.name}")
    out = pd.DataFrame(
        {"candidate_id": cand.candidate_id, "score": [known[k] for k in keys], "reward_version": model.version}
    )
    path = tables.scores_file(model.name, grow, shard)
    with atomic_path(path) as tmp:
        out.to_parquet(tmp, index=False)
    return ScoreReport(candidates=len(keys), unique_inputs=len(set(keys)), newly_scored=len(todo_items), path=path)
