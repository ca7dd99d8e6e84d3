"""Behavioural cloning (supervised NLL) of a policy of either family: the paper's BC baseline.

One loop a reader can hold in their head: token-bucketed batches, AdamW with warm-up and
decay, clipping, label smoothing, validation by greedy BLEU, best checkpoint kept, and a
resume point written atomically every few hundred steps so a killed run continues where
it stopped (same batches, same optimizer state, same time budget).

Layout of `work_dir`:  last/ (resume point)  best/ (HF checkpoint)  snapshots/  history.json
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rest_pipeline.core.evaluation.metrics import corpus_scores
from rest_pipeline.core.paths import atomic_dir, atomic_path
from rest_pipeline.core.policy.family import Batch, Family, Forward, family_of
from rest_pipeline.core.policy.generate import translate_model
from rest_pipeline.core.policy.model import is_checkpoint, save_policy
from rest_pipeline.core.training.batching import make_batches
from rest_pipeline.core.training.losses import LossBatch, NLLLoss, SequenceLoss
from rest_pipeline.core.types import Log
from rest_pipeline.spec import BCSpec, DecodingSpec

# AdamW as one fused kernel (False: torch's per-tensor loop, the old path bench/bc_bench.py compares).
FUSED_OPTIMIZER = True

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


@dataclass
class ExampleSignals:
    """What an Improve loss knows of each training pair besides its text."""

    rewards: list[float]  # R(x, y) under the training reward model
    baselines: list[float]  # mean reward of the behaviour policy's samples of the same source
    is_sample: list[bool]  # drawn from the behaviour (grow) policy; False for original pairs
    behaviour_logprobs: list[list[float]] | None = None  # per target token, for losses that need them

    @classmethod
    def plain(cls, n: int) -> ExampleSignals:
        return cls([1.0] * n, [0.0] * n, [False] * n)

    def batch(self, idx: Sequence[int], out: Forward, b: Batch, progress: float, smoothing: float) -> LossBatch:
        device = out.logits.device

        def pick(values: list, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([values[i] for i in idx], dtype=dtype, device=device)

        labels = b.labels.to(device)
        behaviour = None
        if self.behaviour_logprobs is not None:
            behaviour = torch.zeros(labels.shape, dtype=torch.float32)
            for row, i in enumerate(idx):
                lp = self.behaviour_logprobs[i][: labels.shape[1]]
                behaviour[row, : len(lp)] = torch.tensor(lp)
            behaviour = behaviour.to(device)
        return LossBatch(
            logits=out.logits,
            labels=labels,
            rewards=pick(self.rewards, torch.float32),
            baselines=pick(self.baselines, torch.float32),
            is_sample=pick(self.is_sample, torch.float32),
            encoder_states=out.states,
            encoder_mask=out.states_mask,
            progress=progress,
            label_smoothing=smoothing,
            behaviour_logprobs=behaviour,
        )


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


def train_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train: tuple[Sequence[str], Sequence[str]],
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
    """Train `model` in place on (sources, targets); returns where the best checkpoint is.

    `signals` (rewards, behaviour baselines, ... one per training pair) reach `loss_fn`; plain BC
    ignores them. A loss with parameters of its own (a critic, a temperature) is optimised and saved
    with the resume point like the model.
    """
    if not train[0]:
        raise ValueError("bc: the training set is empty")
    if spec.keep_best_by == "reward" and reward_fn is None:
        raise ValueError("bc: keep_best_by 'reward' needs a reward_fn")
    loss_fn = loss_fn or NLLLoss()
    signals = signals or ExampleSignals.plain(len(train[0]))
    if len(signals.rewards) != len(train[0]):
        raise ValueError(f"bc: {len(signals.rewards)} example signals for {len(train[0])} training pairs")
    if loss_fn.needs_behaviour_logprobs and signals.behaviour_logprobs is None:
        raise ValueError(f"bc: loss '{loss_fn.name}' needs the behaviour policy's token log-probabilities")
    done = finished_result(work_dir, fingerprint)
    if done is not None:
        log(f"bc: already trained with this spec ({done.steps} steps); reusing {done.best_dir}")
        return done
    device = next(model.parameters()).device
    work_dir.mkdir(parents=True, exist_ok=True)
    _seed_all(seed)
    family = family_of(model, tokenizer)
    src = family.encode_sources(train[0], max_length)
    tgt = family.encode_targets(train[1], max_length)
    n_valid = spec.validate_pairs or len(valid[0])
    v_src_text, v_ref = list(valid[0][:n_valid]), list(valid[1][:n_valid])
    v_src = family.encode_sources(valid[0], max_length)
    v_tgt = family.encode_targets(valid[1], max_length)
    greedy = DecodingSpec(name="greedy", num_beams=1, max_new_tokens=max_length)

    batches_per_epoch = len(make_batches(src, tgt, spec.max_tokens, seed, 0))
    total_steps = spec.max_steps or spec.epochs * batches_per_epoch
    validate_every = spec.validate_every_steps or batches_per_epoch

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
    step, elapsed, history, tokens = 0, 0.0, [], 0  # tokens: target tokens trained on (compute accounting)
    best = -math.inf  # larger is better (BLEU, or negative loss)
    last_dir, best_dir, snap_dir = work_dir / "last", work_dir / "best", work_dir / "snapshots"

    state_file = last_dir / "trainer_state.pt"
    if state_file.is_file():
        state = torch.load(state_file, map_location="cpu", weights_only=True)  # tensors and plain data only
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(load_file(str(last_dir / "model.safetensors")), strict=False)
            model.tie_weights()
            optimizer.load_state_dict(state["optimizer"])
            loss_fn.load_state_dict(state.get("loss", {}))
            step, elapsed, history, best = state["step"], state["elapsed"], state["history"], state["best"]
            tokens = state.get("tokens", 0)
            torch.set_rng_state(state["torch_rng"])
            log(f"bc: resuming at step {step} ({elapsed:.0f}s already trained)")
        else:
            log("bc: resume point belongs to a different spec; starting fresh")
            for d in (last_dir, best_dir, snap_dir):
                shutil.rmtree(d, ignore_errors=True)

    def save_resume_point() -> None:
        with atomic_dir(last_dir) as tmp:
            save_file(_tied_safe(_state_dict_cpu(model)), str(tmp / "model.safetensors"))
            torch.save(
                {
                    "fingerprint": fingerprint,
                    "optimizer": optimizer.state_dict(),
                    "loss": loss_fn.state_dict(),
                    "step": step,
                    "elapsed": elapsed,
                    "history": history,
                    "best": best,
                    "tokens": tokens,
                    "torch_rng": torch.get_rng_state(),
                },
                tmp / "trainer_state.pt",
            )

    def validate() -> dict:
        t0 = time.perf_counter()
        loss = validation_loss(model, family, v_src, v_tgt, spec.max_tokens * 2)
        hyps = translate_model(
            model, tokenizer, v_src_text, greedy, backend=decode_backend, max_source_length=max_length
        )
        scores = corpus_scores(hyps, v_ref)
        out = {"valid_loss": round(loss, 4), "valid_bleu": round(scores.bleu, 2), "valid_chrf": round(scores.chrf, 2)}
        if reward_fn is not None:
            out["valid_reward"] = round(float(reward_fn(v_src_text, hyps, v_ref)), 5)
        model.train()
        out["validate_seconds"] = round(time.perf_counter() - t0, 1)
        return out

    def record(row: dict, what: str) -> bool:
        """Validate, log and append to history; save the checkpoint if it is the best so far."""
        t_validate = time.perf_counter()
        row.update(validate())
        row["validation_seconds"] = round(time.perf_counter() - t_validate, 2)  # not in train_seconds
        by = spec.keep_best_by
        row["metric"] = -row["valid_loss"] if by == "loss" else row[f"valid_{by}"]
        row["best"] = row["metric"] > best
        history.append(row)
        log(f"bc: {what} {row}")
        if row["best"]:
            save_policy(model, tokenizer, best_dir)
        return row["best"]

    stopped = "max_steps" if spec.max_steps else "epochs"
    precision = resolve_precision(spec.precision, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    if precision != "fp32":
        log(f"bc: forward passes in {precision} autocast (weights, optimizer and gradients stay fp32)")
    model.train()
    t_start = time.perf_counter() - elapsed
    window_loss, window_tokens, t_window = 0.0, 0, time.perf_counter()
    budget = None if spec.time_budget_minutes is None else spec.time_budget_minutes * 60  # seconds
    while step < total_steps:
        epoch, pos = divmod(step, batches_per_epoch)
        order = make_batches(src, tgt, spec.max_tokens, seed, epoch)
        # Length noise can give an epoch one batch more or less than epoch 0; wrap to a fixed count so
        # step -> (epoch, position) stays a pure function (exact resume, no empty epoch that never advances).
        order = [order[i % len(order)] for i in range(batches_per_epoch)]
        for idx in order[pos:]:
            if step >= total_steps:
                break
            b = family.collate([src[i] for i in idx], [tgt[i] for i in idx])
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step, spec, total_steps, elapsed / budget if budget else 0.0)
            progress = max(step / total_steps, elapsed / budget if budget else 0.0)
            with autocast:
                out = family.forward(model, b)
                loss_sum = loss_fn(signals.batch(idx, out, b, progress, spec.label_smoothing))
            loss = loss_sum / b.target_tokens
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip_norm)
            optimizer.step()
            step += 1
            window_loss += loss_sum.item()
            window_tokens += b.target_tokens
            tokens += b.target_tokens
            elapsed = time.perf_counter() - t_start

            if step % 50 == 0:
                now = time.perf_counter()
                log(
                    f"bc: step {step}/{total_steps} epoch {step / batches_per_epoch:.2f} "
                    f"loss {window_loss / window_tokens:.3f} lr {optimizer.param_groups[0]['lr']:.2e} "
                    f"{window_tokens / (now - t_window):.0f} tgt tok/s"
                )
                window_loss, window_tokens, t_window = 0.0, 0, now

            out_of_time = budget is not None and elapsed >= budget
            scheduled = step % validate_every == 0
            # A scheduled validation this close to the budget is the last one: the few steps left would
            # only buy one more validation of a barely different model.
            near_end = budget is not None and budget - elapsed < 0.25 * validate_every * elapsed / step
            out_of_time |= scheduled and near_end
            if scheduled or step == total_steps or out_of_time:
                row = {
                    "step": step,
                    "epoch": round(step / batches_per_epoch, 2),
                    "elapsed": round(elapsed, 1),
                    "target_tokens": tokens,
                }
                if record(row, "validation"):
                    best = history[-1]["metric"]
                if spec.average_last > 1:
                    snap = snap_dir / f"step_{step:07d}.safetensors"
                    with atomic_path(snap) as tmp:
                        save_file(_tied_safe(_state_dict_cpu(model)), str(tmp))
                    for old in sorted(snap_dir.glob("step_*.safetensors"))[: -spec.average_last]:
                        old.unlink()
                save_resume_point()
                t_start = time.perf_counter() - elapsed  # validation time does not count
                if spec.patience is not None and _no_improvement_for(history, spec.patience):
                    stopped = f"patience ({spec.patience} validations without improvement)"
                    total_steps = step
                if out_of_time:
                    stopped = f"time budget ({spec.time_budget_minutes} min)"
                    total_steps = step
            elif step % spec.save_every_steps == 0:
                save_resume_point()

    averaged = False
    if spec.average_last > 1:
        snaps = sorted(snap_dir.glob("step_*.safetensors"))
        if len(snaps) > 1:
            sds = [load_file(str(p)) for p in snaps]
            avg = {k: sum(sd[k].float() for sd in sds) / len(sds) for k in sds[0]}
            model.load_state_dict({k: v.to(sds[-1][k].dtype) for k, v in avg.items()}, strict=False)
            model.tie_weights()
            if record({"step": step, "averaged_snapshots": len(snaps)}, f"averaged last {len(snaps)} snapshots"):
                best, averaged = history[-1]["metric"], True

    result = TrainResult(
        best_dir=best_dir,
        best_metric=-best if spec.keep_best_by == "loss" else best,
        keep_best_by=spec.keep_best_by,
        steps=step,
        epochs=round(step / batches_per_epoch, 2),
        train_seconds=round(elapsed, 1),
        stopped_because=stopped,
        averaged=averaged,
        history=history,
        precision=precision,
        clock_cut=stopped.startswith("time budget"),
    )
    record_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    record_json["best_dir"] = best_dir.name  # relative to work_dir: the folder can move
    record_json["fingerprint"] = fingerprint
    with atomic_path(work_dir / "history.json") as tmp:
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
