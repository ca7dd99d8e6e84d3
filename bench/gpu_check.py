"""GPU check and benchmark of the core on CUDA, next to the same work on the CPU in the same run.

    python bench/gpu_check.py --data ../shared/data --out bench/results/gpu.json

BC training throughput (target tokens/s), HF sampling (candidates/s), one Improve step with a
chrF reward, a greedy evaluation, and causal-LM sampling engines (a ~100M Llama-shaped model with
random weights: transformers, CTranslate2 at float16, vLLM when `.venv-vllm` is already built there;
bench/engine_bench.py): each on CUDA when present, with a CPU baseline measured in the same process.
Uses only the functional core (no Dagster), so it runs on a bare GPU box.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from rest_pipeline.core.evaluation.metrics import corpus_scores
from rest_pipeline.core.grow.sampling import HFSampler, sample_candidates
from rest_pipeline.core.improve.filtering import build_slice
from rest_pipeline.core.improve.step import run_improve_step
from rest_pipeline.core.policy.generate import translate
from rest_pipeline.core.policy.model import build_marian, load_policy, save_policy
from rest_pipeline.core.policy.tokenizer import load_tokenizer, train_sentencepiece
from rest_pipeline.core.rewards.base import ChrFReward
from rest_pipeline.core.rewards.scoring import score_candidates
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.training.trainer import train_policy
from rest_pipeline.spec import (
    BCSpec,
    DataSpec,
    DecodingSpec,
    ExperimentSpec,
    ImproveSpec,
    ImproveTrainSpec,
    PolicySpec,
    SamplingSpec,
    ThresholdFilter,
    TokenizerSpec,
)


def read_pairs(data: Path, split: str) -> pd.DataFrame:
    src = (data / "multi30k" / f"{split}.de").read_text(encoding="utf-8").splitlines()
    tgt = (data / "multi30k" / f"{split}.en").read_text(encoding="utf-8").splitlines()
    return pd.DataFrame({"source_id": [f"{split}/{i}" for i in range(len(src))], "source": src, "target": tgt})


def bc_throughput(tok, train, valid, device: str, steps: int, work: Path, max_tokens: int) -> dict:
    torch.manual_seed(0)
    model = build_marian(PolicySpec(), tok, 128).to(device)
    spec = BCSpec(
        max_tokens=max_tokens,
        epochs=50,
        max_steps=steps,
        lr=1.5e-3,
        warmup_steps=100,
        validate_every_steps=steps,
        validate_pairs=200,
        save_every_steps=10_000,
    )
    t0 = time.perf_counter()
    res = train_policy(
        model,
        tok,
        (list(train.source), list(train.target)),
        (list(valid.source), list(valid.target)),
        spec,
        work,
        seed=0,
        max_length=128,
        fingerprint=f"gpu-check-{device}-{steps}",
        log=lambda m: None,
    )
    wall = time.perf_counter() - t0
    tokens = sum(len(tok(t).input_ids) for t in train.target) * res.epochs
    return {
        "device": device,
        "steps": res.steps,
        "epochs": res.epochs,
        "train_seconds": res.train_seconds,
        "wall_seconds": round(wall, 1),
        "tgt_tokens_per_s": round(tokens / res.train_seconds),
        "valid_bleu_greedy_200": res.history[-1]["valid_bleu"],
        "checkpoint": str(Path(res.best_dir).relative_to(work.parent)),  # relative to the --work folder
    }


def sampling_rate(ckpt: Path, sources: list[str], device: str) -> dict:
    sampler = HFSampler(ckpt)
    sampler.model.to(device)
    settings = SamplingSpec(n=8, temperature=0.8, max_new_tokens=128, seed=1)
    sample_candidates(sampler, sources[:32], settings)  # warm-up
    t0 = time.perf_counter()
    out = sample_candidates(sampler, sources, settings, batch_tokens=16000 if device == "cuda" else 4000)
    dt = time.perf_counter() - t0
    return {
        "device": device,
        "candidates": len(sources) * 8,
        "cand_per_s": round(len(sources) * 8 / dt, 1),
        "distinct_per_source": round(sum(len(set(o)) for o in out) / len(out), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/rest_gpu_check"))
    ap.add_argument("--gpu-steps", type=int, default=3000)
    ap.add_argument("--cpu-steps", type=int, default=40)
    ap.add_argument("--sources", type=int, default=1000)
    ap.add_argument("--vocab", type=int, default=8000)
    args = ap.parse_args()
    gpu = "cuda" if torch.cuda.is_available() else "cpu"
    report: dict = {
        "cuda": torch.cuda.is_available(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
    }
    train, valid = read_pairs(args.data, "train"), read_pairs(args.data, "val")
    tok_dir = train_sentencepiece(
        list(train.source) + list(train.target), TokenizerSpec(vocab_size=args.vocab), args.work / "tok", 0
    )
    tok = load_tokenizer(tok_dir)

    def emit(key: str, value: object) -> None:
        report[key] = value
        print(key, json.dumps(value), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))

    emit("bc_cpu", bc_throughput(tok, train, valid, "cpu", args.cpu_steps, args.work / "bc_cpu", 2500))
    bc = bc_throughput(tok, train, valid, gpu, args.gpu_steps, args.work / "bc_gpu", 8000)
    emit("bc_gpu", bc)
    ckpt = args.work / bc["checkpoint"]
    sources = list(train.source[: args.sources])
    emit("sampling_gpu", sampling_rate(ckpt, sources, gpu))
    emit("sampling_cpu", sampling_rate(ckpt, sources[:200], "cpu"))

    # One Improve step on the device: grow from the checkpoint, score with chrF, filter, fine-tune.
    store = ExperimentStore(args.work / "exp")
    save_policy(load_policy(ckpt), tok, store.base_policy_dir)
    store.corpus_dir.mkdir(parents=True, exist_ok=True)
    train.head(args.sources).to_parquet(store.split_file("train"))
    valid.to_parquet(store.split_file("valid"))
    sampler = HFSampler(store.base_policy_dir)
    samples = sample_candidates(
        sampler, sources, SamplingSpec(n=8, temperature=0.8, max_new_tokens=128, seed=2), batch_tokens=16000
    )
    store.write_candidates(
        experiment="gpu",
        grow=1,
        shard=0,
        source_ids=list(train.source_id[: args.sources]),
        sources=sources,
        references=list(train.target[: args.sources]),
        samples=samples,
        policy="base@gpu-check",
        decoding="hf:n=8,t=0.8",
    )
    reward = ChrFReward()
    score_candidates(store, reward, 1, 0)
    stats = build_slice(store, 1, 1, "chrf", "threshold", 0.6, mix_originals=True)
    spec = ExperimentSpec(
        name="gpu",
        data=DataSpec(
            dataset="multi30k_de_en",
            source_lang="de",
            target_lang="en",
            train="train",
            valid="val",
            test="test_2016_flickr",
        ),
        improve=ImproveSpec(
            grows=1,
            filter=ThresholdFilter(kind="threshold", values=[0.6], first_above_mean=False),
            train=ImproveTrainSpec(
                max_tokens=8000, max_steps=200, time_budget_minutes=None, validate_every_steps=100, validate_pairs=400
            ),
        ),
    )
    t0 = time.perf_counter()
    rec = run_improve_step(spec, store, 1, 1, reward, log=lambda m: None)
    emit(
        "improve_step",
        {
            "device": gpu,
            "slice_kept": stats.kept,
            "kept_fraction": stats.kept_fraction,
            "status": rec.status,
            "parent_valid_chrf": rec.parent_valid_reward,
            "valid_chrf": rec.valid_reward,
            "steps": rec.train_steps,
            "seconds": round(time.perf_counter() - t0, 1),
        },
    )
    model = load_policy(rec.checkpoint)
    t0 = time.perf_counter()
    hyps = translate(model, tok, list(valid.source), DecodingSpec(name="beam", num_beams=5), batch_tokens=20000)
    emit(
        "eval_valid_beam5",
        {
            "device": gpu,
            "bleu": round(corpus_scores(hyps, list(valid.target)).bleu, 2),
            "seconds": round(time.perf_counter() - t0, 1),
            "sentences": len(hyps),
        },
    )
    # Causal-LM sampling: the engines behind grow.backend on a ~100M Llama-shaped model (random weights).
    from engine_bench import bench_policy, random_llama

    from rest_pipeline.core.policy.family import PromptFormat
    from rest_pipeline.core.policy.vllm_engine import env_dir

    prompt = PromptFormat(template="Translate German to English: {source} =>", chat_template=False).to_config()
    llama = random_llama(tok_dir, args.work / "llama100m", prompt, layers=12, hidden=768, ffn=2304, heads=12)
    engines = [("hf", "float32"), ("ctranslate2", "float16" if gpu == "cuda" else "int8")]
    if (env_dir() / "rest_vllm_pin").is_file():  # the box cannot install it without the package index
        engines.append(("vllm", "float16" if gpu == "cuda" else "float32"))
    settings = SamplingSpec(n=4, temperature=1.0, max_new_tokens=48, seed=3)
    emit("causal_sampling", {"device": gpu, "engines": bench_policy(llama, sources[:256], settings, 1, engines)})
    b, c = report["bc_gpu"], report["bc_cpu"]
    s, sc = report["sampling_gpu"], report["sampling_cpu"]
    print(
        f"\nBC tgt tok/s  {gpu}: {b['tgt_tokens_per_s']:>9}  cpu: {c['tgt_tokens_per_s']:>7}  "
        f"ratio {b['tgt_tokens_per_s'] / c['tgt_tokens_per_s']:.1f}x"
    )
    print(
        f"sampling c/s  {gpu}: {s['cand_per_s']:>9}  cpu: {sc['cand_per_s']:>7}  "
        f"ratio {s['cand_per_s'] / sc['cand_per_s']:.1f}x"
    )


if __name__ == "__main__":
    main()
