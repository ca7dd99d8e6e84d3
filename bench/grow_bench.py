"""Grow benchmarks: each number next to a naive baseline measured in the same run.

    python bench/grow_bench.py --policy data/experiments/default/policies/base \
        --reward data/experiments/default/reward_model --sources 400 --rows 1000000

Prints a table of medians and ratios and writes bench/results/grow.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from throughput_bench import score_with_store  # noqa: E402 - bench/ is on sys.path when run as a script

from rest_pipeline.core.grow.sampling import CT2Sampler, HFSampler, sample_candidates
from rest_pipeline.core.rewards.base import ChrFReward
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.queries import canned_query
from rest_pipeline.spec import SamplingSpec


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def naive_hf(sampler: HFSampler, sources: list[str], settings: SamplingSpec, batch: int = 32) -> None:
    """Baseline: fixed-size batches in corpus order (no length bucketing)."""
    for i in range(0, len(sources), batch):
        chunk = sources[i : i + batch]
        with torch.inference_mode():
            sampler.family.generate(
                sampler.model,
                sampler.family.encode_sources(chunk, 128),
                do_sample=True,
                temperature=settings.temperature,
                num_return_sequences=settings.n,
                max_new_tokens=settings.max_new_tokens,
            )


def bench_sampling(policy: Path, sources: list[str], n: int, repeats: int) -> dict:
    sampler = HFSampler(policy)
    settings = SamplingSpec(n=n, temperature=0.8, max_new_tokens=128, seed=1)
    ours = timed(lambda: sample_candidates(sampler, sources, settings, batch_tokens=4000), repeats)
    base = timed(lambda: naive_hf(sampler, sources, settings), repeats)
    ct2 = CT2Sampler(policy)
    fast = timed(lambda: sample_candidates(ct2, sources, settings, batch_tokens=4000), repeats)
    total = len(sources) * n
    return {
        "candidates": total,
        "device": ct2.device,
        "ours_cand_per_s": total / statistics.median(ours),
        "ct2_cand_per_s": total / statistics.median(fast),
        "naive_cand_per_s": total / statistics.median(base),
        "speedup": statistics.median(base) / statistics.median(ours),
        "ct2_speedup_vs_naive_hf": statistics.median(base) / statistics.median(fast),
    }


def bench_scoring(model, name: str, sources, hyps, refs, repeats: int) -> dict:
    """Ours: score_candidates (dedup + cache, cold cache each repeat). Baseline: score every row."""
    n = len(hyps)

    def ours():
        score_with_store(model, sources, refs, hyps_per_source)

    per = n // len(sources)
    hyps_per_source = [hyps[i * per : (i + 1) * per] for i in range(len(sources))]
    flat_src = [s for s in sources for _ in range(per + 1)]
    flat_hyp = [h for hs, r in zip(hyps_per_source, refs, strict=True) for h in [*hs, r]]
    flat_ref = [r for r in refs for _ in range(per + 1)]
    t_ours = timed(ours, repeats)
    t_base = timed(lambda: model.score(flat_src, flat_hyp, flat_ref), repeats)
    rows = len(flat_hyp)
    return {
        "reward": name,
        "rows": rows,
        "ours_rows_per_s": rows / statistics.median(t_ours),
        "naive_rows_per_s": rows / statistics.median(t_base),
        "speedup": statistics.median(t_base) / statistics.median(t_ours),
    }


def bench_store(rows: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    n_src, per = rows // 9, 8
    with tempfile.TemporaryDirectory() as d:
        store = ExperimentStore(Path(d))
        vocab = np.array("a dog cat man woman runs sits red blue street park ball water".split())
        refs = [" ".join(rng.choice(vocab, 8)) for _ in range(n_src)]
        samples = [[" ".join(rng.choice(vocab, 8)) for _ in range(per)] for _ in range(n_src)]
        shards = 8
        t0 = time.perf_counter()
        bounds = np.linspace(0, n_src, shards + 1).astype(int)
        for s in range(shards):
            lo, hi = bounds[s], bounds[s + 1]
            store.write_candidates(
                experiment="b",
                grow=1,
                shard=s,
                source_ids=[f"s{i}" for i in range(lo, hi)],
                sources=refs[lo:hi],
                references=refs[lo:hi],
                samples=samples[lo:hi],
                policy="p",
                decoding="d",
            )
        ingest = time.perf_counter() - t0
        # Baseline ingest: one CSV file (what scripts glued by shell usually write).
        df = pd.read_parquet(store.root / "candidates")
        t0 = time.perf_counter()
        df.to_csv(Path(d) / "all.csv", index=False)
        csv_ingest = time.perf_counter() - t0
        q = timed(lambda: canned_query(store, "duplicate_rate", "chrf"), repeats)
        q_csv = timed(
            lambda: pd.read_csv(Path(d) / "all.csv").query("origin == 'sample'").groupby("grow").pair_hash.nunique(),
            repeats,
        )
        total = len(df)
    return {
        "rows": total,
        "ingest_rows_per_s": total / ingest,
        "csv_ingest_rows_per_s": total / csv_ingest,
        "query_duplicate_rate_s": statistics.median(q),
        "pandas_csv_query_s": statistics.median(q_csv),
        "query_speedup": statistics.median(q_csv) / statistics.median(q),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", type=Path, required=True)
    ap.add_argument("--reward", type=Path, default=None)
    ap.add_argument("--corpus", type=Path, default=Path("data/experiments/default/corpus/train.parquet"))
    ap.add_argument("--sources", type=int, default=200)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/grow.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    train = pd.read_parquet(args.corpus).head(args.sources)
    sources, refs = list(train.source), list(train.target)
    results: dict[str, object] = {"sampling": bench_sampling(args.policy, sources, args.n, args.repeats)}
    print("sampling", json.dumps(results["sampling"], indent=1), flush=True)
    hyps = sum(
        sample_candidates(
            HFSampler(args.policy), sources, SamplingSpec(n=args.n, temperature=0.8, max_new_tokens=128, seed=2)
        ),
        [],
    )
    results["scoring"] = [bench_scoring(ChrFReward(), "chrf", sources, hyps, refs, args.repeats)]
    if args.reward:
        from rest_pipeline.core.rewards.learned import CometReward

        results["scoring"].append(bench_scoring(CometReward(args.reward, "learned"), "learned", sources, hyps, refs, 1))
    print("scoring", json.dumps(results["scoring"], indent=1), flush=True)
    results["store"] = bench_store(args.rows, args.repeats)
    print("store", json.dumps(results["store"], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
