"""The one trainer: behavioural cloning (the paper's BC baseline) and every Improve loss, for a policy
of either family.

One loop a reader can hold in their head (`train_policy`), built from pieces: `_set_up` (checks,
tokenized validation set, optimizer, batches per epoch), `_resume` / `_save_resume_point` (an atomic
resume point every few hundred steps, so a killed run continues with the same batches, optimizer
state and RNG), `_epoch_batches` (token-bucketed batches, a pure function of seed and epoch, from
pairs in memory or streamed from a slice's Parquet chunk by chunk), `_train_step` (AdamW with
warm-up and decay, clipping, label smoothing) and `_record` (validation by greedy BLEU, loss or
reward; the best checkpoint kept).

Layout of `work_dir`:  last/ (resume point)  best/ (HF checkpoint)  snapshots/  history.json
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rest_pipeline.core.evaluation.metrics import corpus_scores
from rest_pipeline.core.paths import atomic_dir, atomic_path
from rest_pipeline.core.policy.family import Batch, Family, family_of
from rest_pipeline.core.policy.generate import translate_model
from rest_pipeline.core.policy.model import is_checkpoint, save_policy
from rest_pipeline.core.training.allocator import keep_freed_memory
from rest_pipeline.core.training.batching import make_batches
from rest_pipeline.core.training.dropout import numpy_masked_dropout
from rest_pipeline.core.training.losses import NLLLoss, SequenceLoss
from rest_pipeline.core.training.pairs import Chunk, ExampleSignals, Pairs, SlicePairs, TrainingPairs
from rest_pipeline.core.types import Log
from rest_pipeline.spec import BCSpec, DecodingSpec

# bf16 matmuls on a CPU run through oneDNN, which builds a kernel per new shape (~1.5 ms each here) and
# keeps 1,024 of them; token-bucketed batches bring a few hundred shapes an epoch, ~25 kernels each, so the
# default cache rebuilds kernels every step. Read once, at the first bf16 matmul; a user's own setting wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")

# AdamW as one fused kernel (False: torch's per-tensor loop, the old path bench/bc_bench.py compares).
FUSED_OPTIMIZER = True
# Dropout masks drawn by numpy on a CPU (False: torch's bernoulli_, the old path bench/bc_bench.py compares).
NUMPY_DROPOUT = True

# (sources, hypotheses, references) -> mean reward: validation by reward instead of BLEU (Improve).
RewardFn = Callable[[list[str], list[str], list[str]], float]


@dataclass
class TrainResult:
    best_dir: Path
    best_metric: float
    keep_best_by: str
    steps: int
    epochs: float
    train_seconds: float
    stopped_because: str
    averaged: bool
    history: list[dict] = field(default_factory=list)
    precision: str = "fp32"  # what the forward passes ran in (bf16 autocast where the hardware has it)
    clock_cut: bool = False  # stopped by the opt-in time budget: the same spec gives another model elsewhere

    def plateau(self, window: int) -> float | None:
        """Spread (max - min) of the selection metric over the last `window` validations: how flat the
        curve was when training stopped (None with fewer validations)."""
        rows = [r["metric"] for r in self.history if "averaged_snapshots" not in r]
        return round(max(rows[-window:]) - min(rows[-window:]), 4) if len(rows) >= window else None


def lr_at(step: int, spec: BCSpec, total_steps: int, budget_used: float = 0.0) -> float:
    """Learning rate before `step`; `budget_used` is the fraction of the time budget spent.

    Linear and cosine decay run to whichever end comes first, the planned steps or the time
    budget, so a run cut by its budget (every Improve step) still ends annealed instead of
    stopping at a high learning rate.
    """
    warm = max(spec.warmup_steps, 1)
    if step < warm:
        return spec.lr * (step + 1) / warm
    if spec.decay == "inverse_sqrt":
        factor = math.sqrt(warm / (step + 1))
    else:
        progress = min(max((step - warm) / max(total_steps - warm, 1), budget_used), 1.0)
        factor = 1 - progress if spec.decay == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return spec.lr * max(factor, spec.min_lr_ratio)


def resolve_precision(wanted: str, device: torch.device) -> str:
    """'bf16' or 'fp32' for this device: 'auto' takes bf16 where the hardware computes it natively
    (CUDA with bf16, a CPU with AVX512-BF16 or AMX); elsewhere bf16 autocast is emulated and slower."""
    if wanted != "auto":
        return wanted
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    cpu = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else ""
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or "AMX" in str(cpu).upper()
    return "bf16" if native else "fp32"


def training_forward(precision: str, device: torch.device) -> contextlib.ExitStack:
    """The context of one training forward pass: bf16 autocast when `precision` is bf16. On a CPU its
    attention runs on SDPA's math kernel: the bf16 flash kernel's backward took ~15x fp32's time on the
    default's short batches (profiled: research/log.md), and the math kernel is as accurate. On a CPU its
    dropout masks come from numpy (core/training/dropout.py: torch's own took ~7 % of an update)."""
    stack = contextlib.ExitStack()
    if device.type == "cpu" and NUMPY_DROPOUT:
        stack.enter_context(numpy_masked_dropout())
    if precision == "bf16":
        stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
        if device.type == "cpu":
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    return stack


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _state_dict_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


def _tied_safe(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; tied weights were cloned in _state_dict_cpu.
    return {k: v.contiguous() for k, v in sd.items()}


@torch.no_grad()
def validation_loss(model, family: Family, src, tgt, max_tokens: int) -> float:
    model.eval()
    total, tokens = 0.0, 0
    for idx in make_batches(src, tgt, max_tokens, seed=0, epoch=0):
        b = family.collate([src[i] for i in idx], [tgt[i] for i in idx])
        logits = family.forward(model, b).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), b.labels.to(logits.device).flatten(), reduction="sum")
        total += float(loss)
        tokens += b.target_tokens
    return total / max(tokens, 1)


@dataclass
class _Run:
    """What one training run carries from set-up through its epochs, validations and resume points."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    family: Family
    spec: BCSpec
    data: Pairs
    valid: _ValidationSet
    loss_fn: SequenceLoss
    optimizer: torch.optim.Optimizer
    work_dir: Path
    fingerprint: str
    seed: int
    max_length: int
    log: Log
    reward_fn: RewardFn | None
    decode_backend: str
    batches_per_epoch: int = 0
    total_steps: int = 0
    # progress, saved in every resume point
    step: int = 0
    elapsed: float = 0.0  # seconds of training, validation excluded
    history: list[dict] = field(default_factory=list)
    best: float = -math.inf  # of the selection metric, larger is better (BLEU, reward, or negative loss)
    tokens: int = 0  # target tokens trained on (compute accounting)
    _encoded: tuple[list[list[int]], list[list[int]]] | None = None  # an in-memory set is tokenized once

    @property
    def last_dir(self) -> Path:
        return self.work_dir / "last"

    @property
    def best_dir(self) -> Path:
        return self.work_dir / "best"

    @property
    def snap_dir(self) -> Path:
        return self.work_dir / "snapshots"


@dataclass
class _ValidationSet:
    sources: list[str]  # the first validate_pairs sources, decoded for BLEU / reward
    references: list[str]
    src_ids: list[list[int]]  # every valid pair, for the validation loss
    tgt_ids: list[list[int]]


@dataclass
class _TrainBatch:
    idx: list[int]  # rows of `signals`
    signals: ExampleSignals
    batch: Batch


# -- set-up ----------------------------------------------------------------------------------------
def _set_up(
    model, tokenizer, data: Pairs, valid, spec: BCSpec, work_dir: Path, seed: int, max_length: int, **rest
) -> _Run:
    """Check the inputs, tokenize validation, build the optimizer and count an epoch's batches."""
    if len(data) == 0:
        raise ValueError("bc: the training set is empty")
    if spec.keep_best_by == "reward" and rest["reward_fn"] is None:
        raise ValueError("bc: keep_best_by 'reward' needs a reward_fn")
    loss_fn = rest.pop("loss_fn") or NLLLoss()
    if loss_fn.needs_behaviour_logprobs and (
        not isinstance(data, TrainingPairs) or data.signals.behaviour_logprobs is None
    ):
        raise ValueError(f"bc: loss '{loss_fn.name}' needs the behaviour policy's token log-probabilities")
    device = next(model.parameters()).device
    keep_freed_memory()  # a step's big tensors reuse freed heap instead of faulting in fresh pages
    work_dir.mkdir(parents=True, exist_ok=True)
    _seed_all(seed)
    family = family_of(model, tokenizer)
    n_valid = spec.validate_pairs or len(valid[0])
    validation = _ValidationSet(
        list(valid[0][:n_valid]),
        list(valid[1][:n_valid]),
        family.encode_sources(valid[0], max_length),
        family.encode_targets(valid[1], max_length),
    )
    loss_fn.to(device)
    optimizer = torch.optim.AdamW(
        [*(p for p in model.parameters() if p.requires_grad), *(p for p in loss_fn.parameters() if p.requires_grad)],
        lr=spec.lr,
        betas=spec.betas,
        weight_decay=spec.weight_decay,
        eps=1e-8,
        # One fused kernel per step instead of a loop over tensors: 4-10 % more tokens/s on a 2-core CPU
        # for the default Marian (bench/bc_bench.py); the same update rule.
        fused=FUSED_OPTIMIZER and device.type in ("cpu", "cuda"),
    )
    run = _Run(
        model,
        tokenizer,
        family,
        spec,
        data,
        validation,
        loss_fn,
        optimizer,
        work_dir,
        seed=seed,
        max_length=max_length,
        **rest,
    )
    run.batches_per_epoch = sum(
        len(make_batches(*_encode(run, chunk), spec.max_tokens, seed, 0, spec.bucketing))
        for chunk in data.chunks(seed, 0)
    )
    run.total_steps = spec.max_steps or spec.epochs * run.batches_per_epoch
    return run


def _encode(run: _Run, chunk: Chunk) -> tuple[list[list[int]], list[list[int]]]:
    if isinstance(run.data, TrainingPairs) and run._encoded is not None:
        return run._encoded
    encoded = (
        run.family.encode_sources(chunk.sources, run.max_length),
        run.family.encode_targets(chunk.targets, run.max_length),
    )
    if isinstance(run.data, TrainingPairs):
        run._encoded = encoded
    return encoded


# -- resume ----------------------------------------------------------------------------------------
def _resume(run: _Run) -> None:
    """Continue from the resume point in `last/` when it belongs to this fingerprint; else start fresh."""
    state_file = run.last_dir / "trainer_state.pt"
    if not state_file.is_file():
        return
    state = torch.load(state_file, map_location="cpu", weights_only=True)  # tensors and plain data only
    if state.get("fingerprint") != run.fingerprint:
        run.log("bc: resume point belongs to a different spec; starting fresh")
        for d in (run.last_dir, run.best_dir, run.snap_dir):
            shutil.rmtree(d, ignore_errors=True)
        return
    run.model.load_state_dict(load_file(str(run.last_dir / "model.safetensors")), strict=False)
    run.model.tie_weights()
    run.optimizer.load_state_dict(state["optimizer"])
    run.loss_fn.load_state_dict(state.get("loss", {}))
    run.step, run.elapsed, run.history, run.best = state["step"], state["elapsed"], state["history"], state["best"]
    run.tokens = state.get("tokens", 0)
    torch.set_rng_state(state["torch_rng"])
    run.log(f"bc: resuming at step {run.step} ({run.elapsed:.0f}s already trained)")


def _save_resume_point(run: _Run) -> None:
    with atomic_dir(run.last_dir) as tmp:
        save_file(_tied_safe(_state_dict_cpu(run.model)), str(tmp / "model.safetensors"))
        torch.save(
            {
                "fingerprint": run.fingerprint,
                "optimizer": run.optimizer.state_dict(),
                "loss": run.loss_fn.state_dict(),
                "step": run.step,
                "elapsed": run.elapsed,
                "history": run.history,
                "best": run.best,
                "tokens": run.tokens,
                "torch_rng": torch.get_rng_state(),
            },
            tmp / "trainer_state.pt",
        )


# -- epoch -----------------------------------------------------------------------------------------
def _epoch_batches(run: _Run, epoch: int) -> Iterator[_TrainBatch]:
    """Epoch `epoch`'s batches, exactly batches_per_epoch of them, a pure function of (seed, epoch) so a
    resumed run skips exactly those it trained on. Length noise can give an epoch fewer batches than
    epoch 0; the epoch then wraps to its start (no empty epoch that never advances)."""
    produced = 0
    while True:
        for chunk in run.data.chunks(run.seed, epoch):
            src, tgt = _encode(run, chunk)
            for idx in make_batches(src, tgt, run.spec.max_tokens, run.seed, epoch, run.spec.bucketing):
                if produced == run.batches_per_epoch:
                    return
                yield _TrainBatch(idx, chunk.signals, run.family.collate([src[i] for i in idx], [tgt[i] for i in idx]))
                produced += 1


def _train_step(run: _Run, tb: _TrainBatch, precision: str, budget: float | None) -> float:
    """One update; returns the batch's summed loss."""
    spec, b = run.spec, tb.batch
    used = run.elapsed / budget if budget else 0.0
    for g in run.optimizer.param_groups:
        g["lr"] = lr_at(run.step, spec, run.total_steps, used)
    progress = max(run.step / run.total_steps, used)
    with training_forward(precision, next(run.model.parameters()).device):
        out = run.family.forward(run.model, b)
        loss_sum = run.loss_fn(tb.signals.batch(tb.idx, out, b, progress, spec.label_smoothing))
    loss = loss_sum / b.target_tokens
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), spec.clip_norm)
    run.optimizer.step()
    run.step += 1
    run.tokens += b.target_tokens
    return loss_sum.item()


# -- validation ------------------------------------------------------------------------------------
def _validate(run: _Run) -> dict:
    t0 = time.perf_counter()
    v = run.valid
    loss = validation_loss(run.model, run.family, v.src_ids, v.tgt_ids, run.spec.max_tokens * 2)
    greedy = DecodingSpec(name="greedy", num_beams=1, max_new_tokens=run.max_length)
    hyps = translate_model(
        run.model, run.tokenizer, v.sources, greedy, backend=run.decode_backend, max_source_length=run.max_length
    )
    scores = corpus_scores(hyps, v.references)
    out = {"valid_loss": round(loss, 4), "valid_bleu": round(scores.bleu, 2), "valid_chrf": round(scores.chrf, 2)}
    if run.reward_fn is not None:
        out["valid_reward"] = round(float(run.reward_fn(v.sources, hyps, v.references)), 5)
    run.model.train()
    out["validate_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _record(run: _Run, row: dict, what: str) -> bool:
    """Validate, log and append to history; save the checkpoint if it is the best so far."""
    t_validate = time.perf_counter()
    row.update(_validate(run))
    row["validation_seconds"] = round(time.perf_counter() - t_validate, 2)  # not in train_seconds
    by = run.spec.keep_best_by
    row["metric"] = -row["valid_loss"] if by == "loss" else row[f"valid_{by}"]
    row["best"] = row["metric"] > run.best
    run.history.append(row)
    run.log(f"bc: {what} {row}")
    if row["best"]:
        save_policy(run.model, run.tokenizer, run.best_dir)
        run.best = row["metric"]
    return row["best"]


def _snapshot(run: _Run) -> None:
    """Keep the last `average_last` validated weights for the final average."""
    snap = run.snap_dir / f"step_{run.step:07d}.safetensors"
    with atomic_path(snap) as tmp:
        save_file(_tied_safe(_state_dict_cpu(run.model)), str(tmp))
    for old in sorted(run.snap_dir.glob("step_*.safetensors"))[: -run.spec.average_last]:
        old.unlink()


def _average_snapshots(run: _Run) -> bool:
    """Validate the average of the kept snapshots; True when it is the best checkpoint."""
    snaps = sorted(run.snap_dir.glob("step_*.safetensors"))
    if len(snaps) <= 1:
        return False
    sds = [load_file(str(p)) for p in snaps]
    avg = {k: sum(sd[k].float() for sd in sds) / len(sds) for k in sds[0]}
    run.model.load_state_dict({k: v.to(sds[-1][k].dtype) for k, v in avg.items()}, strict=False)
    run.model.tie_weights()
    return _record(run, {"step": run.step, "averaged_snapshots": len(snaps)}, f"averaged last {len(snaps)} snapshots")


# -- the loop --------------------------------------------------------------------------------------
def train_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train: Pairs | tuple[Sequence[str], Sequence[str]],
    valid: tuple[Sequence[str], Sequence[str]],
    spec: BCSpec,
    work_dir: Path,
    *,
    seed: int,
    max_length: int,
    fingerprint: str,
    log: Log = print,
    reward_fn: RewardFn | None = None,
    loss_fn: SequenceLoss | None = None,
    signals: ExampleSignals | None = None,
    decode_backend: str = "hf",
) -> TrainResult:
    """Train `model` in place on `train` (pairs in memory or a slice streamed from Parquet, or a
    (sources, targets) tuple with `signals`); returns where the best checkpoint is.

    Per-pair signals (rewards, behaviour baselines, ...) reach `loss_fn`; plain BC ignores them. A loss
    with parameters of its own (a critic, a temperature) is optimised and saved with the resume point.
    """
    data = train if isinstance(train, TrainingPairs | SlicePairs) else TrainingPairs(*train, signals)
    done = finished_result(work_dir, fingerprint)
    if done is not None:
        log(f"bc: already trained with this spec ({done.steps} steps); reusing {done.best_dir}")
        return done
    run = _set_up(
        model,
        tokenizer,
        data,
        valid,
        spec,
        work_dir,
        seed,
        max_length,
        fingerprint=fingerprint,
        log=log,
        reward_fn=reward_fn,
        loss_fn=loss_fn,
        decode_backend=decode_backend,
    )
    _resume(run)
    validate_every = spec.validate_every_steps or run.batches_per_epoch
    budget = None if spec.time_budget_minutes is None else spec.time_budget_minutes * 60  # seconds
    stopped = "max_steps" if spec.max_steps else "epochs"
    precision = resolve_precision(spec.precision, next(model.parameters()).device)
    if precision != "fp32":
        log(f"bc: forward passes in {precision} autocast (weights, optimizer and gradients stay fp32)")
    model.train()
    t_start = time.perf_counter() - run.elapsed
    window_loss, window_tokens, t_window = 0.0, 0, time.perf_counter()
    while run.step < run.total_steps:
        epoch, pos = divmod(run.step, run.batches_per_epoch)
        for tb in itertools.islice(_epoch_batches(run, epoch), pos, None):
            if run.step >= run.total_steps:
                break
            window_loss += _train_step(run, tb, precision, budget)
            window_tokens += tb.batch.target_tokens
            run.elapsed = time.perf_counter() - t_start
            step = run.step
            if step % 50 == 0:
                now = time.perf_counter()
                log(
                    f"bc: step {step}/{run.total_steps} epoch {step / run.batches_per_epoch:.2f} "
                    f"loss {window_loss / window_tokens:.3f} lr {run.optimizer.param_groups[0]['lr']:.2e} "
                    f"{window_tokens / (now - t_window):.0f} tgt tok/s"
                )
                window_loss, window_tokens, t_window = 0.0, 0, now

            out_of_time = budget is not None and run.elapsed >= budget
            scheduled = step % validate_every == 0
            # A scheduled validation this close to the budget is the last one: the few steps left would
            # only buy one more validation of a barely different model.
            near_end = budget is not None and budget - run.elapsed < 0.25 * validate_every * run.elapsed / step
            out_of_time |= scheduled and near_end
            if scheduled or step == run.total_steps or out_of_time:
                row = {
                    "step": step,
                    "epoch": round(step / run.batches_per_epoch, 2),
                    "elapsed": round(run.elapsed, 1),
                    "target_tokens": run.tokens,
                }
                _record(run, row, "validation")
                if spec.average_last > 1:
                    _snapshot(run)
                _save_resume_point(run)
                t_start = time.perf_counter() - run.elapsed  # validation time does not count
                if spec.patience is not None and _no_improvement_for(run.history, spec.patience):
                    stopped = f"patience ({spec.patience} validations without improvement)"
                    run.total_steps = step
                if out_of_time:
                    stopped = f"time budget ({spec.time_budget_minutes} min)"
                    run.total_steps = step
            elif step % spec.save_every_steps == 0:
                _save_resume_point(run)

    averaged = spec.average_last > 1 and _average_snapshots(run)
    return _finish(run, stopped, averaged, precision)


def _finish(run: _Run, stopped: str, averaged: bool, precision: str) -> TrainResult:
    """The result, also written to history.json (what `finished_result` reads back)."""
    result = TrainResult(
        best_dir=run.best_dir,
        best_metric=-run.best if run.spec.keep_best_by == "loss" else run.best,
        keep_best_by=run.spec.keep_best_by,
        steps=run.step,
        epochs=round(run.step / run.batches_per_epoch, 2),
        train_seconds=round(run.elapsed, 1),
        stopped_because=stopped,
        averaged=averaged,
        history=run.history,
        precision=precision,
        clock_cut=stopped.startswith("time budget"),
    )
    record_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    record_json["best_dir"] = run.best_dir.name  # relative to work_dir: the folder can move
    record_json["fingerprint"] = run.fingerprint
    with atomic_path(run.work_dir / "history.json") as tmp:
        tmp.write_text(json.dumps(record_json, indent=1))
    return result


def finished_result(work_dir: Path, fingerprint: str) -> TrainResult | None:
    """The recorded result of a finished run with the same fingerprint, if its checkpoint is there."""
    path = work_dir / "history.json"
    if not path.is_file() or not is_checkpoint(work_dir / "best"):
        return None
    data = json.loads(path.read_text())
    if data.pop("fingerprint", None) != fingerprint:
        return None
    data["best_dir"] = work_dir / data["best_dir"]  # an absolute path (older records) stays as it is
    return TrainResult(**data)


def _no_improvement_for(history: list[dict], patience: int) -> bool:
    flags = [r["best"] for r in history if "averaged_snapshots" not in r]
    return len(flags) > patience and not any(flags[-patience:])
