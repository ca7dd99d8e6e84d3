"""Sampling engines for decoder-only policies, side by side in one run: transformers' `generate` (the
path every causal LM used before), CTranslate2 (a Generator, float32 and int8) and vLLM (its own
environment, `.venv-vllm`), on the same prompts with the same sampling settings.

    .venv/bin/python bench/engine_bench.py [--checkpoint PATH] [--sources 200] [--n 4] [--repeats 3]

Two policies: llm_smoke's BC policy (`./scripts/rest main llm_smoke` makes it; --checkpoint names
another) and a ~100M-parameter Llama-shaped model with random weights on the same vocabulary. Each
engine goes through the product's own sampler (core/grow/sampling.py `make_sampler`), is started and
warmed up on all prompts once first (start time reported apart), then timed on all prompts; candidates/s
and ratios to HF are the medians over --repeats. Beside the speed, the mean log-probability of each
engine's samples under the policy (transformers' forward pass), with its standard error: the engines
sample one distribution, so the means should agree within a few standard errors.

Writes bench/results/engines.json (no absolute paths).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rest_pipeline.core.grow.sampling import make_sampler, sample_candidates
from rest_pipeline.core.improve.finetune import behaviour_logprobs
from rest_pipeline.core.paths import home
from rest_pipeline.core.policy.model import count_parameters, load_policy, policy_config, save_policy
from rest_pipeline.core.policy.tokenizer import load_tokenizer
from rest_pipeline.spec import SamplingSpec

ENGINES = [("hf", "float32"), ("ctranslate2", "float32"), ("ctranslate2", "int8"), ("vllm", "float32")]


def random_llama(tokenizer_dir: Path, out: Path, prompt: dict, layers: int, hidden: int, ffn: int, heads: int) -> Path:
    """A Llama-shaped model with random weights (seeded) on a tokenizer folder's vocabulary, prompted as `prompt`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(tokenizer_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512, pad_token_id=pad,
            eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, tie_word_embeddings=True,
        )
    )  # fmt: skip
    model.config.rest_prompt = prompt
    return save_policy(model, tok, out)


def logprob_stats(checkpoint: Path, sources: list[str], samples: list[list[str]]) -> dict[str, float]:
    flat_src = [s for s, hyps in zip(sources, samples, strict=True) for _ in hyps]
    flat_hyp = [h for hyps in samples for h in hyps]
    totals = np.array([sum(t) for t in behaviour_logprobs(checkpoint, (flat_src, flat_hyp), 128)])
    return {"mean_logprob": round(float(totals.mean()), 3),
            "se": round(float(totals.std(ddof=1) / np.sqrt(len(totals))), 3)}  # fmt: skip


def bench_policy(
    checkpoint: Path, sources: list[str], settings: SamplingSpec, repeats: int, engines: list[tuple[str, str]] = ENGINES
) -> list[dict]:
    """Each engine through `make_sampler`: start time, candidates/s, tokens/s, samples' log-probability."""
    rows = []
    for backend, compute_type in engines:
        t0 = time.perf_counter()
        with closing(make_sampler(backend, checkpoint, 128, compute_type)) as sampler:
            sample_candidates(sampler, sources[:4], settings)  # start
            start = time.perf_counter() - t0
            sample_candidates(sampler, sources, settings)  # warm up: every lane, every batch shape once
            times, samples = [], []
            for _ in range(repeats):
                t1 = time.perf_counter()
                samples = sample_candidates(sampler, sources, settings)
                times.append(time.perf_counter() - t1)
        seconds = statistics.median(times)
        n = sum(len(s) for s in samples)
        tokens = sum(len(load_tokenizer(checkpoint)(h, add_special_tokens=False)["input_ids"])
                     for hyps in samples for h in hyps)  # fmt: skip
        row = {"engine": backend, "compute_type": compute_type, "start_s": round(start, 2),
               "seconds": [round(t, 3) for t in times], "candidates_per_s": round(n / seconds, 2),
               "tokens_per_s": round(tokens / seconds, 1), **logprob_stats(checkpoint, sources, samples)}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    hf = rows[0]["candidates_per_s"]
    for row in rows:
        row["ratio_to_hf"] = round(row["candidates_per_s"] / hf, 2)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=home() / "experiments" / "llm_smoke" / "policies" / "base")
    ap.add_argument("--sources", type=int, default=200)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "engines.json")
    args = ap.parse_args()
    if not (args.checkpoint / "config.json").is_file():
        raise SystemExit(f"{args.checkpoint}: no checkpoint; run `./scripts/rest main llm_smoke` or pass --checkpoint")
    corpus = args.checkpoint.parents[1] / "corpus" / "valid.parquet"
    sources = pd.read_parquet(corpus).source.tolist()[: args.sources]
    settings = SamplingSpec(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=11)
    result = {
        "what": "candidates/s of decoder-only sampling engines through make_sampler; same prompts and settings",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },  # fmt: skip
        "settings": {
            "sources": len(sources),
            "n": args.n,
            "temperature": 1.0,
            "max_new_tokens": args.max_new_tokens,
            "repeats": args.repeats,
        },  # fmt: skip
        "policies": {},
    }
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as d:
        prompt = policy_config(args.checkpoint)["rest_prompt"]
        big = random_llama(args.checkpoint, Path(d) / "llama100m", prompt, layers=12, hidden=768, ffn=2304, heads=12)
        for name, checkpoint in (("llm_smoke_bc", args.checkpoint), ("llama_100m_random", big)):
            params = count_parameters(load_policy(checkpoint, torch.device("cpu")))
            print(f"== {name}: {params / 1e6:.1f}M parameters", flush=True)
            rows = bench_policy(checkpoint, sources, settings, args.repeats)
            result["policies"][name] = {"parameters": params, "engines": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
