"""The online-RL baseline of the paper: PPO from the BC policy with the same training reward model.

Each iteration samples N outputs for a batch of training sources from the *current* policy at the
Grow temperature, scores them with the reward model, and takes a few clipped-surrogate epochs on
them. Per token, the reward is the KL penalty to the BC policy, -beta * (log pi_old - log pi_BC);
the sequence reward R(x, y) arrives at the last token. Advantages come from a per-source group
baseline: A_t = R(x, y) - mean of R over the N samples of x - beta * (the KL still to come from t).
The policy PPO optimises is the one it samples from, pi_T: every log-probability (the behaviour
policy's, the updated policy's, BC's for the KL) is of the logits divided by the sampling temperature
T, as TRL does; greedy evaluation is the same for pi and pi_T. Samples end where the policy chose to
end them (no end token is forced at max_new_tokens: an action the policy did not take is not trained).
Why a group baseline and not a value head: the N samples of a source are drawn anyway, their mean
reward is an unbiased baseline with no critic to train, tune or let lag behind on two CPU cores,
and the clipped objective, the KL penalty and the several epochs per batch are PPO's unchanged.

A run is resumable: every `save_every_iterations` the policy, the optimiser, the counters and the
random state are saved together (atomically), and a killed run carries on from the last save with
the same samples it would have drawn. The budget (`total_candidates`, the mark spacing, the save
spacing) does not change what an iteration draws or trains, so raising `total_candidates` continues
a finished run where it stopped instead of starting over; any other setting starts a new run.
Compute is counted as for ReST (compute.py): candidates sampled, reward-model calls after
de-duplication, target tokens trained on, wall seconds; each iteration's seconds are also split into
sampling, scoring and the update (log-probs and epochs), to show which of them PPO's cost is.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from rest_pipeline.core.paths import atomic_dir, atomic_path
from rest_pipeline.core.policy.family import Batch, Family, family_of
from rest_pipeline.core.policy.model import load_policy, save_policy
from rest_pipeline.core.policy.tokenizer import load_tokenizer
from rest_pipeline.core.training.losses import token_logprobs
from rest_pipeline.core.types import Log
from rest_pipeline.spec import OnlineRLSpec, SamplingSpec


@dataclass
class Compute:
    """What a policy cost so far, counted the same way for ReST and PPO."""

    candidates: int = 0  # sequences sampled from a policy
    reward_calls: int = 0  # reward-model evaluations after de-duplication (and, for ReST, the cache)
    target_tokens: int = 0  # target tokens in training updates (each epoch counts)
    seconds: float = 0.0  # wall time of sampling, scoring and training

    def plus(self, other: Compute) -> Compute:
        return Compute(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values(), strict=True)))


@dataclass
class Mark:
    """A checkpoint saved at a compute mark, to be evaluated like an Improve checkpoint."""

    name: str  # policy name: ppo/c<candidates>
    path: Path
    compute: Compute
    iteration: int
    mean_reward: float
    kl: float


@dataclass
class PPOResult:
    marks: list[Mark]
    iterations: int
    compute: Compute
    history: list[dict] = field(default_factory=list)
    # Wall seconds per iteration by phase (sample, score, update), for the iterations timed so: where PPO's
    # seconds go. Kept apart from `history`, which a resumed run reproduces exactly and timings never do.
    phase_seconds: list[dict] = field(default_factory=list)


# -- the objective, on tensors ---------------------------------------------------------------------


def clipped_surrogate(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's loss, -min(rho A, clip(rho, 1-eps, 1+eps) A) averaged over target tokens, and the share of
    tokens whose ratio was clipped. Outside the clip range (in A's favourable direction) the gradient is 0."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    n = mask.sum().clamp_min(1)
    clipped_share = (((ratio - 1).abs() > clip) & mask).sum() / n
    return (per_token * mask).sum() / n, clipped_share


def group_baseline(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """R minus the mean R of its source's `group` samples (rewards laid out source by source)."""
    r = rewards.view(-1, group)
    return (r - r.mean(dim=1, keepdim=True)).flatten()


def token_advantages(
    sequence_advantage: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """A_t = A(x, y) - beta * sum_{t' >= t} kl_t' (returns with gamma = 1 of the per-token KL penalty)."""
    penalty = torch.flip(torch.cumsum(torch.flip(kl * mask, dims=[1]), dim=1), dims=[1])
    return (sequence_advantage[:, None] - kl_coef * penalty) * mask


# -- one iteration's data ------------------------------------------------------------------------


@dataclass
class Rollout:
    batch: Batch  # sources (each repeated N times) and their sampled outputs, as the update trains on them
    texts: list[str]


@torch.no_grad()
def sample_rollout(model, family: Family, sources: Sequence[str], sampling: SamplingSpec, max_length: int,
                   seed: int) -> Rollout:  # fmt: skip
    """N samples per source from the current policy, as a training batch (what the update trains on) and text."""
    src = family.encode_sources(sources, max_length)
    torch.manual_seed(seed)
    n = sampling.n
    outputs = family.generate(model, src, do_sample=True, temperature=sampling.temperature, top_k=0, num_beams=1,
                              num_return_sequences=n, max_new_tokens=sampling.max_new_tokens,
                              forced_eos_token_id=None)  # fmt: skip
    # An output cut by max_new_tokens has no end token; an empty one still trains its end token.
    outputs = [o or [family.eos_id] for o in outputs]
    batch = family.collate([s for s in src for _ in range(n)], outputs)
    return Rollout(batch, family.decode(outputs))


def never_sampled(model) -> list[int]:
    """Tokens generate() may not draw (the generation config's single-token bad words, e.g. Marian's pad)."""
    bad = getattr(model.generation_config, "bad_words_ids", None) or []
    return sorted({ids[0] for ids in bad if len(ids) == 1})


def sequence_logprobs(
    model, family: Family, r: Rollout, temperature: float, rows: torch.Tensor | slice = slice(None)
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi_T of each sampled token under the distribution the sampler drew from: the logits at the
    sampling temperature, without the tokens it may not draw."""
    b = r.batch.rows(rows)
    logits = family.forward(model, b).logits / temperature
    banned = never_sampled(model)
    if banned:
        logits = logits.index_fill(-1, torch.tensor(banned, device=logits.device), float("-inf"))
    return token_logprobs(logits, b.labels.to(logits.device))


# -- the loop ------------------------------------------------------------------------------------------


# Bumped when the objective's code changes what a run computes: a saved run of another version is not continued.
OBJECTIVE_VERSION = 2  # 2: log-probs of the sampling distribution (temperature, banned tokens), no forced end
BUDGET_ONLY = frozenset({"enabled", "total_candidates", "eval_every_candidates", "save_every_iterations"})


def run_key(settings: OnlineRLSpec, fingerprint: str) -> str:
    """What a saved run must match to be continued: the caller's fingerprint (BC weights, reward, seed,
    data) and every setting that changes the trajectory; not the budget, which only says where to stop."""
    trajectory = settings.model_dump_json(exclude=set(BUDGET_ONLY))
    return hashlib.sha256(f"{fingerprint}|{trajectory}|v{OBJECTIVE_VERSION}".encode()).hexdigest()[:16]


def _save_state(work_dir: Path, model, tokenizer, optimizer, state: dict) -> None:
    """Policy, optimiser and loop state in one folder, swapped in whole."""
    with atomic_dir(work_dir / "state") as tmp:
        save_policy(model, tokenizer, tmp / "policy")
        # No random state to keep: sampling reseeds per iteration and the updates draw from a seeded generator.
        torch.save({"optimizer": optimizer.state_dict()}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))


def _load_state(work_dir: Path) -> tuple[dict, Path] | None:
    folder = work_dir / "state"
    if not (folder / "state.json").is_file():
        return None
    return json.loads((folder / "state.json").read_text()), folder


def run_ppo(
    settings: OnlineRLSpec,
    bc_checkpoint: Path,
    train_sources: Sequence[str],
    train_references: Sequence[str],
    score: Callable[[list[str], list[str], list[str]], np.ndarray],
    work_dir: Path,
    *,
    sampling: SamplingSpec,
    max_length: int,
    fingerprint: str,
    log: Log = print,
) -> PPOResult:
    """PPO until `settings.total_candidates` are sampled; a checkpoint at every `eval_every_candidates`.
    `score(sources, hypotheses, references)` is the training reward, on [0, 1]; `sampling` is the
    spec's sampling with PPO's group size as N and the spec's seed (grow/sampling.py `sampling_for`)."""
    if sampling.n != settings.samples_per_source:
        raise ValueError(
            f"ppo: sampling.n {sampling.n} is not online_rl.samples_per_source {settings.samples_per_source}"
        )
    n, per_iter, seed, temperature = sampling.n, settings.sources_per_iteration, sampling.seed, sampling.temperature
    iterations = -(-settings.total_candidates // (n * per_iter))
    tokenizer = load_tokenizer(bc_checkpoint)
    reference = load_policy(bc_checkpoint).eval()
    family = family_of(reference, tokenizer)
    for p in reference.parameters():
        p.requires_grad_(False)
    key = run_key(settings, fingerprint)
    saved = _load_state(work_dir)
    if saved is not None and saved[0]["fingerprint"] != key:
        log(f"ppo: {work_dir} holds a run of other settings; starting over")
        saved = None
    model = load_policy(saved[1] / "policy" if saved else bc_checkpoint)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    state = {"fingerprint": key, "iteration": 0, "compute": asdict(Compute()), "history": [], "marks": []}
    if saved is not None:
        state = saved[0]
        extra = torch.load(saved[1] / "optimizer.pt", weights_only=True)  # no pickle from the store
        optimizer.load_state_dict(extra["optimizer"])
        done = state["compute"]["candidates"]
        log(f"ppo: resuming at iteration {state['iteration']} of {iterations} ({done} candidates sampled)")
    if state["iteration"] > iterations:
        raise ValueError(
            f"{work_dir}: holds a PPO run of {state['iteration']} iterations, more than online_rl.total_candidates "
            f"asks for ({iterations}); raise total_candidates to at least {state['compute']['candidates']}, or "
            "remove the folder to start over"
        )
    if state["iteration"] < iterations:  # a run under way, or a finished one whose budget was raised
        last, every = state["iteration"], settings.eval_every_candidates
        # the end mark of a smaller budget, off the grid a straight run would have marked there
        ends = [m for m in state["marks"] if m["iteration"] == last and m["compute"]["candidates"] % every]
        for m in ends:
            shutil.rmtree(work_dir / m["path"], ignore_errors=True)
        state["marks"] = [m for m in state["marks"] if m not in ends]
    compute = Compute(**state["compute"])
    order = np.random.default_rng(seed).permutation(len(train_sources))
    device = next(model.parameters()).device
    for it in range(state["iteration"], iterations):
        t0 = time.perf_counter()
        pick = [order[(it * per_iter + k) % len(order)] for k in range(per_iter)]
        sources = [train_sources[i] for i in pick]
        refs = [train_references[i] for i in pick]
        model.eval()  # dropout off throughout: the ratio is exactly 1 before the first update of a batch
        rollout = sample_rollout(model, family, sources, sampling, max_length, seed=seed * 1_000_003 + it)
        t_sampled = time.perf_counter()
        repeated = [(s, r) for s, r in zip(sources, refs, strict=True) for _ in range(n)]
        triples = [(s, h, r) for (s, r), h in zip(repeated, rollout.texts, strict=True)]
        unique = list(dict.fromkeys(triples))  # a repeated output of a source is scored once
        scores = score([u[0] for u in unique], [u[1] for u in unique], [u[2] for u in unique])
        by_triple = dict(zip(unique, np.asarray(scores, dtype=float), strict=True))
        rewards = torch.tensor([by_triple[t] for t in triples], dtype=torch.float32)
        unique_calls = len(unique)
        t_scored = time.perf_counter()
        with torch.no_grad():  # in minibatches: a whole batch's logits over the vocabulary is large
            chunks = torch.arange(len(rollout.texts)).split(settings.minibatch_sequences)
            parts = [sequence_logprobs(model, family, rollout, temperature, c) for c in chunks]
            old_logp, mask = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            ref_logp = torch.cat([sequence_logprobs(reference, family, rollout, temperature, c)[0] for c in chunks])
        kl = (old_logp - ref_logp) * mask
        advantages = token_advantages(group_baseline(rewards.to(device), n), kl, mask, settings.kl_coef)
        if settings.normalize_advantages:
            values = advantages[mask]
            advantages = (advantages - values.mean()) / (values.std() + 1e-8) * mask
        gen = torch.Generator().manual_seed(seed + it)
        tokens, clipped = 0, []
        for _ in range(settings.epochs):
            for rows in torch.randperm(len(rollout.texts), generator=gen).split(settings.minibatch_sequences):
                logp, m = sequence_logprobs(model, family, rollout, temperature, rows)
                loss, share = clipped_surrogate(logp, old_logp[rows], advantages[rows], m, settings.clip)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                optimizer.step()
                tokens += int(m.sum())
                clipped.append(float(share))
        step = Compute(len(rollout.texts), unique_calls, tokens, time.perf_counter() - t0)
        compute = compute.plus(step)
        row = {
            "iteration": it + 1,
            "candidates": compute.candidates,
            "mean_reward": round(float(rewards.mean()), 5),
            "kl_to_bc": round(float(kl.sum() / len(rollout.texts)), 5),  # per sequence, at sampling time
            "clipped_share": round(float(np.mean(clipped)), 4),
        }
        state["history"].append(row)
        state.setdefault("phase_seconds", []).append(
            {"iteration": it + 1, "sample": round(t_sampled - t0, 3), "score": round(t_scored - t_sampled, 3),
             "update": round(t0 + step.seconds - t_scored, 3)}
        )  # fmt: skip
        log(f"ppo: {row}")
        state["iteration"], state["compute"] = it + 1, asdict(compute)
        every = settings.eval_every_candidates  # a mark where this iteration crossed a multiple, and at the end
        mark_due = compute.candidates // every > (compute.candidates - step.candidates) // every or it + 1 == iterations
        if mark_due:
            name = f"ppo/c{compute.candidates:08d}"
            path = work_dir / "marks" / name.split("/", 1)[1]
            with atomic_dir(path) as tmp:
                save_policy(model, tokenizer, tmp)
            state["marks"].append(
                {"name": name, "path": str(path.relative_to(work_dir)), "compute": asdict(compute),
                 "iteration": it + 1, "mean_reward": row["mean_reward"], "kl": row["kl_to_bc"]}
            )  # fmt: skip
        if mark_due or (it + 1) % settings.save_every_iterations == 0:
            _save_state(work_dir, model, tokenizer, optimizer, state)
    marks = [
        Mark(m["name"], work_dir / m["path"], Compute(**m["compute"]), m["iteration"], m["mean_reward"], m["kl"])
        for m in state["marks"]
    ]
    with atomic_path(work_dir / "history.json") as tmp:
        tmp.write_text(json.dumps(state["history"], indent=1))
    return PPOResult(
        marks=marks,
        iterations=state["iteration"],
        compute=compute,
        history=state["history"],
        phase_seconds=state.get("phase_seconds", []),
    )
