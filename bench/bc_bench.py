"""BC training speed: the old path (fp32, AdamW as a loop over tensors, F.cross_entropy, torch's dropout
masks, Marian's zero logits bias added, glibc's allocator defaults, jittered length buckets) against the
new one (fused AdamW, a one-pass smoothed cross-entropy, numpy dropout masks, no zero-bias pass, freed
memory kept for reuse, exact length buckets, bf16 autocast where the CPU computes it natively) and the
steps between, taking turns, with the validation loss after the same number of updates.

    python bench/bc_bench.py --experiment default --updates 300

Needs an experiment whose corpus and tokenizer exist (`./scripts/rest main default --until tokenizer`).
Every path builds the spec's policy from the same seed and trains it with the real trainer on its own
batches, in a process of its own (the allocator setting is process-wide; one path computes at a time).
The paths take turns of `--segment` updates (the order reversed every turn) after `--warmup` untimed
updates each, so a host whose speed drifts by 10 % within minutes (these shared machines do: separate
two-minute runs of one path gave 1,453 and 1,723 tokens/s) charges every path alike; the ratio is
reported over the whole run and per turn, with a bootstrap interval over turns. The warm-up also builds
oneDNN's bf16 kernels for the first shapes, as a BC of many epochs has them after its first. Also prints
the padding share of the batches under each bucketing (how much of each padded batch is real tokens).
Writes bench/results/bc.json (no absolute paths).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import platform
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rest_pipeline.core.policy import family as family_module
from rest_pipeline.core.policy.family import family_of
from rest_pipeline.core.policy.model import build_policy
from rest_pipeline.core.policy.tokenizer import load_tokenizer
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.training import losses
from rest_pipeline.core.training import trainer as bc_module
from rest_pipeline.core.training.batching import make_batches
from rest_pipeline.core.training.pairs import TrainingPairs
from rest_pipeline.core.training.trainer import resolve_precision
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
    numpy_dropout: bool  # dropout masks drawn by numpy (core/training/dropout.py), or torch's bernoulli_
    skip_zero_logits_bias: bool  # Seq2Seq.forward without Marian's all-zero logits bias, or the model's forward
    keep_freed_memory: bool  # glibc thresholds raised (core/training/allocator.py), or its defaults
    bucketing: str  # exact or jittered (core/training/batching.py)


# The old path, the new one on the old path's batches (same batches: quality must match), bf16 on those
# batches where the CPU computes it natively, and everything together ("new").
PATHS = {
    "old": TrainPath("fp32", False, False, False, False, False, "jittered"),
    "new_jittered": TrainPath("fp32", True, True, True, True, True, "jittered"),
    "bf16_jittered": TrainPath("bf16", True, True, True, True, True, "jittered"),
    "new": TrainPath("auto", True, True, True, True, True, "exact"),
}


class PathRun:
    """One path's BC in training, in a process of its own (`_serve`: the allocator setting is process-wide):
    its own model (the spec's seed), optimizer and batches, stepped a segment at a time so that all paths
    share the machine's drift."""

    def __init__(self, name: str, store: ExperimentStore, tmp: Path):
        spec = store_spec(store)
        self.name, self.how = name, PATHS[name]
        torch.manual_seed(spec.seed)
        tok = load_tokenizer(store.tokenizer_dir)
        model = build_policy(spec.policy, tok, spec.tokenizer.max_length)
        train, valid = store.split("train"), store.split("valid")
        bc = spec.bc.model_copy(update={"precision": self.how.precision, "bucketing": self.how.bucketing,
                                        "time_budget_minutes": None})  # fmt: skip
        bc_module.FUSED_OPTIMIZER = self.how.fused_adamw  # read when the optimizer is built
        data = TrainingPairs(list(train.source), list(train.target))
        self.run = bc_module._set_up(
            model, tok, data, (list(valid.source), list(valid.target)), bc, tmp / name, spec.seed,
            spec.tokenizer.max_length, fingerprint="bench", log=lambda _m: None, reward_fn=None, loss_fn=None,
            decode_backend=spec.evaluation.backend,
        )  # fmt: skip
        self.precision = resolve_precision(self.how.precision, torch.device("cpu"))
        self.batches = itertools.chain.from_iterable(bc_module._epoch_batches(self.run, e) for e in itertools.count())
        self.seconds, self.tokens, self.segments = 0.0, 0, []
        model.train()

    def step(self, updates: int, timed: bool = True) -> None:
        """`updates` updates; their seconds and target tokens count when `timed`."""
        losses.FUSED_CROSS_ENTROPY = self.how.fused_cross_entropy
        bc_module.NUMPY_DROPOUT = self.how.numpy_dropout
        family_module.SKIP_ZERO_LOGITS_BIAS = self.how.skip_zero_logits_bias
        todo = [next(self.batches) for _ in range(updates)]  # batches built outside the timed span
        t0 = time.perf_counter()
        for tb in todo:
            bc_module._train_step(self.run, tb, self.precision, None)
        seconds, tokens = time.perf_counter() - t0, sum(tb.batch.target_tokens for tb in todo)
        if timed:
            self.seconds, self.tokens = self.seconds + seconds, self.tokens + tokens
            self.segments.append(tokens / seconds)

    def summary(self) -> dict:
        v = self.run.valid
        loss = bc_module.validation_loss(self.run.model, self.run.family, v.src_ids, v.tgt_ids, 5000)
        return {**asdict(self.how), "precision": self.precision, "updates": self.run.step,
                "target_tokens": self.tokens, "train_seconds": round(self.seconds, 1),
                "tgt_tok_per_s": round(self.tokens / self.seconds, 1), "valid_loss": round(loss, 4),
                "segment_tok_per_s": [round(r, 1) for r in self.segments]}  # fmt: skip


def paired_ratio(new: list[float], old: list[float], resamples: int = 4000) -> dict:
    """Median over segments of new/old tokens/s (segment i of each ran back to back) and a 95 % bootstrap
    interval of that median."""
    ratios = [a / b for a, b in zip(new, old, strict=True)]
    rng = random.Random(0)
    boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return {"median": round(statistics.median(ratios), 3),
            "ci95": [round(boot[int(0.025 * resamples)], 3), round(boot[int(0.975 * resamples)], 3)]}  # fmt: skip


def _serve(name: str, experiment: str, tmp: str, conn) -> None:
    """A path's process: builds its PathRun, then runs the turns the parent sends ((updates, timed)),
    answering each with its tokens/s, until asked for its summary. Only one path computes at a time."""
    os.environ["REST_KEEP_FREED_MEMORY"] = "1" if PATHS[name].keep_freed_memory else "0"
    run = PathRun(name, ExperimentStore.open(experiment), Path(tmp))
    while (msg := conn.recv()) != "summary":
        updates, timed = msg
        run.step(updates, timed)
        conn.send(run.segments[-1] if timed else None)
    conn.send(run.summary())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--experiment", default="default", help="experiment whose corpus and tokenizer exist (under REST_HOME)"
    )
    ap.add_argument("--updates", type=int, default=300, help="timed updates per path")
    ap.add_argument("--segment", type=int, default=10, help="updates per path before the next path's turn")
    ap.add_argument("--warmup", type=int, default=20, help="untimed updates per path first")
    ap.add_argument("--out", default="bench/results/bc.json")
    args = ap.parse_args()
    store = ExperimentStore.open(args.experiment)
    spec = store_spec(store)
    native_bf16 = resolve_precision("auto", torch.device("cpu")) == "bf16"
    # Where bf16 is emulated (slower), `auto` trains in fp32 and there is no bf16 path to show.
    names = ["old", "new_jittered", "bf16_jittered", "new"] if native_bf16 else ["old", "new_jittered", "new"]
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        conns, procs = {}, []
        for name in names:
            conns[name], child = spawn.Pipe()
            procs.append(spawn.Process(target=_serve, args=(name, args.experiment, tmp, child), daemon=True))
            procs[-1].start()

        def turn(name: str, updates: int, timed: bool = True):
            conns[name].send((updates, timed))
            return conns[name].recv()

        for name in names:
            turn(name, args.warmup, timed=False)
        segments: dict[str, list[float]] = {name: [] for name in names}
        for seg in range(args.updates // args.segment):
            for name in names if seg % 2 == 0 else names[::-1]:  # alternate who goes first
                segments[name].append(turn(name, args.segment))
            if seg % 5 == 4:
                print(f"segment {seg + 1}: " + ", ".join(f"{n} {segments[n][-1]:.0f}" for n in names), flush=True)
        rows = {}
        for name in names:
            conns[name].send("summary")
            rows[name] = conns[name].recv()
        for proc in procs:
            proc.join()
    out: dict = {
        "what": f"BC training of spec '{spec.name}' (bc.max_tokens {spec.bc.max_tokens}), every path from the "
        f"same seed on its own batches: {args.warmup} untimed updates each, then {args.updates} timed updates "
        f"in turns of {args.segment} (order reversed every turn), a process per path; target tokens/s over "
        "training time; validation loss after the same number of updates",
        "machine": {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16},
        "batches": {b: padding_share(store, spec.bc.max_tokens, spec.tokenizer.max_length, b)
                    for b in ("jittered", "exact")},
        **rows,
    }  # fmt: skip
    for name in names[1:]:
        out[f"{name}_over_old_tok_per_s"] = {
            "whole": round(rows[name]["tgt_tok_per_s"] / rows["old"]["tgt_tok_per_s"], 3),
            "per_turn": paired_ratio(segments[name], segments["old"]),
        }
        out[f"{name}_minus_old_valid_loss"] = round(rows[name]["valid_loss"] - rows["old"]["valid_loss"], 4)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in rows}, indent=1))


if __name__ == "__main__":
    main()
