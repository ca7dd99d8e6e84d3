"""BC training speed: the old path (fp32, AdamW as a loop over tensors, F.cross_entropy, jittered length
buckets) against the new one (fused AdamW, a one-pass smoothed cross-entropy, exact length buckets, bf16
autocast where the CPU computes it natively) and the steps between, side by side in one run, with
quality after the same number of updates.

    python bench/bc_bench.py --experiment default --updates 200 --repeats 2

Needs an experiment whose corpus and tokenizer exist (`./scripts/rest main default --until
tokenizer`). Each run trains the spec's policy from the same seed (on its path's batches) for
`--updates` updates with the spec's BC settings (real `train_policy`, validation only at the end), then
reports target tokens/s over the training time and the validation loss and greedy BLEU after it.
Paths run in turn, in reverse order every other round, so machine drift hits all. A first round per path (`--warmup`, on by default)
is run but left out of the medians and kept as `warmup_runs`: bf16 matmuls on a CPU go through oneDNN,
which builds kernels per new batch shape, and a BC run of many epochs meets each epoch's shapes again, so
the warm rate is what it pays after its first epoch (the cold rate is kept beside it). Also prints the
padding share of the batches under each bucketing (how much of each padded batch is real tokens). Writes
bench/results/bc.json (no absolute paths).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rest_pipeline.core.policy.family import family_of
from rest_pipeline.core.policy.model import build_policy
from rest_pipeline.core.policy.tokenizer import load_tokenizer
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.training import losses
from rest_pipeline.core.training import trainer as bc_module
from rest_pipeline.core.training.batching import make_batches
from rest_pipeline.core.training.trainer import TrainResult, resolve_precision, train_policy
from rest_pipeline.spec import find_spec, load_spec


def padding_share(store: ExperimentStore, max_tokens: int, max_length: int, bucketing: str) -> dict:
    """Real (source + target) tokens over padded tokens in one epoch of batches."""
    tok = load_tokenizer(store.tokenizer_dir)
    train = store.split("train")
    model = build_policy(store_spec(store).policy, tok, max_length)
    family = family_of(model, tok)
    src = family.encode_sources(list(train.source), max_length)
    tgt = family.encode_targets(list(train.target), max_length)
    real_src = real_tgt = padded_src = padded_tgt = 0
    batches = make_batches(src, tgt, max_tokens, seed=0, epoch=0, bucketing=bucketing)
    for idx in batches:
        real_src += sum(len(src[i]) for i in idx)
        real_tgt += sum(len(tgt[i]) for i in idx)
        padded_src += len(idx) * max(len(src[i]) for i in idx)
        padded_tgt += len(idx) * max(len(tgt[i]) for i in idx)
    return {
        "batches_per_epoch": len(batches),
        "real_over_padded": round((real_src + real_tgt) / (padded_src + padded_tgt), 4),
        "source_real_over_padded": round(real_src / padded_src, 4),
        "target_real_over_padded": round(real_tgt / padded_tgt, 4),
        "target_tokens_per_batch": round(real_tgt / len(batches), 1),
    }


def cpu_model() -> str:
    """The CPU's model name: these machines change from session to session (an AMX Xeon, an AVX2 EPYC)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def store_spec(store: ExperimentStore):
    return load_spec(find_spec(store.experiment))


@dataclass(frozen=True)
class TrainPath:
    """One way of running the same BC: what the bench switches between."""

    precision: str  # fp32, bf16, or auto (what this machine's `auto` takes)
    fused_adamw: bool  # AdamW as one kernel, or torch's loop over tensors
    fused_cross_entropy: bool  # losses.smoothed_cross_entropy_sum, or F.cross_entropy
    bucketing: str  # exact or jittered (core/training/batching.py)


# The old path, the new one on the old path's batches (same batches: quality must match), bf16 on those
# batches where the CPU computes it natively, and everything together ("new").
PATHS = {
    "old": TrainPath("fp32", False, False, "jittered"),
    "new_jittered": TrainPath("fp32", True, True, "jittered"),
    "bf16_jittered": TrainPath("bf16", True, True, "jittered"),
    "new": TrainPath("auto", True, True, "exact"),
}


def train_spec_bc(store: ExperimentStore, **overrides: object) -> tuple[TrainResult, str]:
    """The experiment's BC from its seed with `overrides` on its bc settings (one validation, at the end),
    in a scratch folder; the result and the sha256 of the weights it kept. bc_repro.py uses it too."""
    spec = store_spec(store)
    torch.manual_seed(spec.seed)
    tok = load_tokenizer(store.tokenizer_dir)
    model = build_policy(spec.policy, tok, spec.tokenizer.max_length)
    train, valid = store.split("train"), store.split("valid")
    updates = overrides["max_steps"]
    bc = spec.bc.model_copy(
        update={"time_budget_minutes": None, "validate_every_steps": updates, "save_every_steps": 10**9,
                "average_last": 1, "patience": None, **overrides}
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        result = train_policy(
            model,
            tok,
            (list(train.source), list(train.target)),
            (list(valid.source), list(valid.target)),
            bc,
            Path(tmp),
            seed=spec.seed,
            max_length=spec.tokenizer.max_length,
            fingerprint="bench",
            log=lambda _m: None,
            decode_backend=spec.evaluation.backend,
        )
        weights = hashlib.sha256((Path(tmp) / "best" / "model.safetensors").read_bytes()).hexdigest()[:16]
    return result, weights


def one_run(store: ExperimentStore, path: str, updates: int, valid_pairs: int) -> dict:
    how = PATHS[path]
    bc_module.FUSED_OPTIMIZER, losses.FUSED_CROSS_ENTROPY = how.fused_adamw, how.fused_cross_entropy
    result, _ = train_spec_bc(
        store, precision=how.precision, bucketing=how.bucketing, max_steps=updates, validate_pairs=valid_pairs
    )
    last = result.history[-1]
    return {
        "path": path,
        "precision": result.precision,
        "fused_adamw": how.fused_adamw,
        "fused_cross_entropy": how.fused_cross_entropy,
        "bucketing": how.bucketing,
        "updates": result.steps,
        "train_seconds": result.train_seconds,
        "target_tokens": last["target_tokens"],
        "tgt_tok_per_s": round(last["target_tokens"] / result.train_seconds, 1),
        "valid_loss": last["valid_loss"],
        "valid_bleu": last["valid_bleu"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--experiment", default="default", help="experiment whose corpus and tokenizer exist (under REST_HOME)"
    )
    ap.add_argument("--updates", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1, help="rounds per path run first and left out of the medians")
    ap.add_argument("--valid-pairs", type=int, default=500)
    ap.add_argument("--out", default="bench/results/bc.json")
    args = ap.parse_args()
    store = ExperimentStore.open(args.experiment)
    spec = store_spec(store)
    native_bf16 = resolve_precision("auto", torch.device("cpu")) == "bf16"
    # Where bf16 is emulated (slower), `auto` trains in fp32 and there is no bf16 path to show.
    paths = ["old", "new_jittered", "bf16_jittered", "new"] if native_bf16 else ["old", "new_jittered", "new"]
    runs: dict[str, list[dict]] = {p: [] for p in paths}
    warmup: dict[str, list[dict]] = {p: [] for p in paths}
    for r in range(args.warmup + args.repeats):
        # Every other round in reverse: a host that slows through a round would otherwise always charge
        # the paths run last (the first EPYC run had the fused optimizer 5 % slower than the loop, which
        # alone runs 5x faster).
        for path in paths if r % 2 == 0 else paths[::-1]:
            row = one_run(store, path, args.updates, args.valid_pairs)
            (warmup if r < args.warmup else runs)[path].append(row)
            print(f"{'warm-up' if r < args.warmup else 'repeat'} {r + 1} {path}: {row}", flush=True)

    def summary(rows: list[dict]) -> dict:
        return {
            "tgt_tok_per_s_median": statistics.median(r["tgt_tok_per_s"] for r in rows),
            "valid_loss": [r["valid_loss"] for r in rows],
            "valid_bleu": [r["valid_bleu"] for r in rows],
            "runs": rows,
        }

    out: dict = {
        "what": f"BC training, {args.updates} updates of spec '{spec.name}' (bc.max_tokens {spec.bc.max_tokens}), "
        "same seed (batches per the path's bucketing); tokens/s over training time (validation excluded); "
        f"medians over the repeats after {args.warmup} warm-up round(s) per path",
        "machine": {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16},
        "batches": {b: padding_share(store, spec.bc.max_tokens, spec.tokenizer.max_length, b)
                    for b in ("jittered", "exact")},
    }  # fmt: skip
    old = summary(runs["old"])
    for path in paths:
        s = summary(runs[path])
        out[path] = {**asdict(PATHS[path]), **s, "warmup_runs": warmup[path]}
        if path != "old":
            out[f"{path}_over_old_tok_per_s"] = round(s["tgt_tok_per_s_median"] / old["tgt_tok_per_s_median"], 3)
            loss_delta = statistics.mean(s["valid_loss"]) - statistics.mean(old["valid_loss"])
            out[f"{path}_minus_old_valid_loss"] = round(loss_delta, 4)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in paths}, indent=1))


if __name__ == "__main__":
    main()
