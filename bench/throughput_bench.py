"""Throughput of each ReST stage against the path it replaces, measured side by side in one run.

    python bench/throughput_bench.py --experiment data/experiments/default --repeats 3

Needs an experiment whose corpus, BC policy (policies/base) and learned reward exist (the default after
`./scripts/rest main default --until default/reward_model` and BC). Stages:

- scoring: the learned reward through the store's cached scorer, COMET's torch encoder (before) against
  the CTranslate2 int8 encoder (now); parity of the scores and of the held-out Kendall tau.
- sampling: CTranslate2 float32 with one translator per batch on all cores (before) against int8 on
  one lane process per core (now); the reward of both sets of samples, paired by source.
- step overhead: what an Improve validation costs: HF greedy decoding of the validation split plus
  torch scoring (before) against CTranslate2 (conversion of the in-training weights included) plus
  int8 scoring (now); the greedy outputs must be identical.

Prints medians and ratios, writes bench/results/throughput.json (no absolute paths).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rest_pipeline.core.grow.sampling import CT2Sampler, sample_candidates
from rest_pipeline.core.policy.generate import translate, translate_model
from rest_pipeline.core.policy.model import load_policy
from rest_pipeline.core.policy.tokenizer import load_tokenizer
from rest_pipeline.core.rewards.scoring import score_candidates
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.spec import DecodingSpec, SamplingSpec


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def paired_interval(diff: np.ndarray, seed: int = 0, n: int = 2000) -> list[float]:
    rng = np.random.default_rng(seed)
    means = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(n)]
    return [round(float(np.quantile(means, 0.025)), 5), round(float(np.quantile(means, 0.975)), 5)]


def score_with_store(reward, sources, refs, samples) -> np.ndarray:
    """The Grow scoring path: a shard written to a fresh store, scored with an empty cache."""
    with tempfile.TemporaryDirectory() as d:
        store = ExperimentStore(Path(d))
        store.write_candidates(
            experiment="bench",
            grow=1,
            shard=0,
            source_ids=[f"s{i}" for i in range(len(sources))],
            sources=sources,
            references=refs,
            samples=samples,
            policy="p",
            decoding="d",
        )
        score_candidates(store, reward, 1, 0)
        return pd.read_parquet(store.scores_file(reward.name, 1, 0)).score.to_numpy()


def old_ct2_sampling(sampler: CT2Sampler, sources: list[str], settings: SamplingSpec) -> list[list[str]]:
    """The path before lanes: float32, a fresh translator per batch on all cores, batches one after another."""
    import ctranslate2

    from rest_pipeline.core.policy.ct2 import engine_device
    from rest_pipeline.core.policy.generate import length_batches

    pol = sampler.policy
    lengths = [len(s.split()) + 2 for s in sources]
    out: list[list[str]] = [[] for _ in sources]
    budget = max(4000 // settings.n, 16)
    for b, batch in enumerate(length_batches(lengths, budget, max_batch=256)):
        ctranslate2.set_random_seed((settings.seed * 1_000_003 + b) % (2**31))
        tr = ctranslate2.Translator(
            str(pol.model_dir), **engine_device(pol.device), compute_type="float32", inter_threads=1
        )
        res = tr.translate_batch(
            pol.tokens([sources[i] for i in batch]),
            beam_size=1,
            num_hypotheses=settings.n,
            sampling_topk=0,
            sampling_temperature=settings.temperature,
            max_decoding_length=settings.max_new_tokens,
            suppress_sequences=[[pol.tokenizer.pad_token]],
        )
        for i, r in zip(batch, res, strict=True):
            out[i] = [pol.tokenizer.convert_tokens_to_string(h).strip() for h in r.hypotheses]
    return out


def bench_sampling(policy: Path, sources: list[str], refs: list[str], n: int, repeats: int, reward) -> dict:
    settings = SamplingSpec(n=n, temperature=0.8, max_new_tokens=128, seed=11)
    before_sampler = CT2Sampler(policy, compute_type="float32")
    now_sampler = CT2Sampler(policy, compute_type="int8")
    t_before, before = timed(lambda: old_ct2_sampling(before_sampler, sources, settings), repeats)
    sample_candidates(now_sampler, sources[:8], settings)  # start the lanes outside the timing
    t_now, now = timed(lambda: sample_candidates(now_sampler, sources, settings), repeats)
    total = len(sources) * n
    # Quality: mean learned reward per source of int8 samples minus float32 samples (same seeds).
    flat = lambda s: [h for hs in s for h in hs]  # noqa: E731
    rep_src = [x for x in sources for _ in range(n)]
    rep_ref = [r for r in refs for _ in range(n)]
    r_before = reward.score(rep_src, flat(before), rep_ref).reshape(len(sources), n).mean(1)
    r_now = reward.score(rep_src, flat(now), rep_ref).reshape(len(sources), n).mean(1)
    diff = r_now - r_before
    return {
        "candidates": total,
        "lanes": now_sampler.lanes,
        "before_cand_per_s": round(total / statistics.median(t_before), 1),
        "now_cand_per_s": round(total / statistics.median(t_now), 1),
        "ratio": round(statistics.median(t_before) / statistics.median(t_now), 2),
        "reward_float32": round(float(r_before.mean()), 5),
        "reward_int8": round(float(r_now.mean()), 5),
        "reward_int8_minus_float32": round(float(diff.mean()), 5),
        "reward_int8_minus_float32_95ci": paired_interval(diff),
    }


def bench_scoring(
    reward_dir: Path, sources, refs, samples, repeats: int, judgements: Path | None, split_seed: int
) -> dict:
    from scipy.stats import kendalltau

    from rest_pipeline.core.rewards.learned import CometReward, load_judgements, split_by_source

    torch_r = CometReward(reward_dir, "learned", engine="torch")
    ct2_r = CometReward(reward_dir, "learned", engine="ctranslate2", compute_type="int8")
    score_with_store(ct2_r, sources[:8], refs[:8], samples[:8])  # convert the encoder outside the timing
    t_before, s_before = timed(lambda: score_with_store(torch_r, sources, refs, samples), repeats)
    t_now, s_now = timed(lambda: score_with_store(ct2_r, sources, refs, samples), repeats)
    rows = len(s_before)
    diff = np.abs(np.asarray(s_now) - np.asarray(s_before))
    out = {
        "rows": rows,
        "before_rows_per_s": round(rows / statistics.median(t_before), 1),
        "now_rows_per_s": round(rows / statistics.median(t_now), 1),
        "ratio": round(statistics.median(t_before) / statistics.median(t_now), 2),
        "abs_diff_mean": round(float(diff.mean()), 5),
        "abs_diff_p99": round(float(np.quantile(diff, 0.99)), 5),
        "abs_diff_max": round(float(diff.max()), 5),
    }
    if judgements is not None:  # held-out Kendall tau of the reward model, scored by either engine
        df = load_judgements(judgements)
        test = split_by_source(df, split_seed)["test"]  # the part the reward model never trained on
        taus = {}
        for name, r in (("torch", torch_r), ("ctranslate2_int8", ct2_r)):
            pred = r.raw_scores(list(test.src), list(test.mt), list(test.ref))
            taus[name] = round(float(kendalltau(pred, test.da_z).statistic), 4)
        out["heldout_rows"] = len(test)
        out["heldout_kendall_tau"] = taus
        out["heldout_kendall_tau_delta"] = round(taus["ctranslate2_int8"] - taus["torch"], 4)
    return out


def bench_step_overhead(policy: Path, reward_dir: Path, valid: pd.DataFrame, repeats: int) -> dict:
    """One Improve validation: greedy decode of the validation split + its reward, before and now."""
    from rest_pipeline.core.rewards.learned import CometReward

    model, tok = load_policy(policy), load_tokenizer(policy)
    src, ref = list(valid.source), list(valid.target)
    greedy = DecodingSpec(name="greedy", num_beams=1, max_new_tokens=128)
    torch_r = CometReward(reward_dir, "learned", engine="torch")
    ct2_r = CometReward(reward_dir, "learned", engine="ctranslate2", compute_type="int8")

    def before():
        hyps = translate(model, tok, src, greedy)
        return hyps, float(torch_r.score(src, hyps, ref).mean())

    def now():
        hyps = translate_model(model, tok, src, greedy, backend="ctranslate2")
        return hyps, float(ct2_r.score(src, hyps, ref).mean())

    t_before, (h_before, r_before) = timed(before, repeats)
    t_now, (h_now, r_now) = timed(now, repeats)
    t_dec_before, _ = timed(lambda: translate(model, tok, src, greedy), repeats)
    t_dec_now, _ = timed(lambda: translate_model(model, tok, src, greedy, backend="ctranslate2"), repeats)
    return {
        "sentences": len(src),
        "before_s": round(statistics.median(t_before), 2),
        "now_s": round(statistics.median(t_now), 2),
        "ratio": round(statistics.median(t_before) / statistics.median(t_now), 2),
        "decode_before_s": round(statistics.median(t_dec_before), 2),
        "decode_now_s": round(statistics.median(t_dec_now), 2),
        "decode_ratio": round(statistics.median(t_dec_before) / statistics.median(t_dec_now), 2),
        "greedy_identical": sum(a == b for a, b in zip(h_before, h_now, strict=True)),
        "valid_reward_before": round(r_before, 5),
        "valid_reward_now": round(r_now, 5),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiment", type=Path, default=Path("data/experiments/default"))
    ap.add_argument("--judgements", type=Path, default=None, help="the DA TSV, for the held-out Kendall tau")
    ap.add_argument("--seed", type=int, default=1234, help="the experiment's seed (splits the judgements)")
    ap.add_argument("--sources", type=int, default=300)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/throughput.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    store = ExperimentStore(args.experiment)
    policy, reward_dir = store.base_policy_dir, store.reward_model_dir
    train = store.split("train").head(args.sources)
    sources, refs = list(train.source), list(train.target)
    results: dict[str, object] = {
        "machine": {"cpus": torch.get_num_threads(), "processor": platform.processor() or platform.machine()},
        "inputs": {"sources": len(sources), "n": args.n, "repeats": args.repeats},
    }
    from rest_pipeline.core.rewards.learned import CometReward

    reward = CometReward(reward_dir, "learned", engine="torch")
    results["sampling"] = bench_sampling(policy, sources, refs, args.n, args.repeats, reward)
    print("sampling", json.dumps(results["sampling"], indent=1), flush=True)
    samples = sample_candidates(CT2Sampler(policy), sources, SamplingSpec(n=args.n, temperature=0.8, seed=2))
    results["scoring"] = bench_scoring(reward_dir, sources, refs, samples, args.repeats, args.judgements, args.seed)
    print("scoring", json.dumps(results["scoring"], indent=1), flush=True)
    results["step_overhead"] = bench_step_overhead(policy, reward_dir, store.split("valid"), args.repeats)
    print("step_overhead", json.dumps(results["step_overhead"], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
