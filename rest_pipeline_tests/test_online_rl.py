"""The PPO baseline: its objective on tensors, its loop on a real tiny model with the real chrF reward,
its compute counters, and its resume after a SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rest_pipeline.core.online_rl.ppo import (
    clipped_surrogate,
    group_baseline,
    run_ppo,
    sample_rollout,
    sequence_logprobs,
    token_advantages,
)
from rest_pipeline.core.policy.family import family_of, left_or_right_pad
from rest_pipeline.core.policy.model import load_policy, save_policy, weights_hash
from rest_pipeline.core.policy.tokenizer import load_tokenizer
from rest_pipeline.core.rewards.base import load_reward
from rest_pipeline.spec import OnlineRLSpec, SamplingSpec
from rest_pipeline_tests.synthetic import pairs, tiny_model, tokenizer_dir

SETTINGS = OnlineRLSpec(
    enabled=True,
    total_candidates=96,  # 6 iterations of 8 sources x 2 samples
    eval_every_candidates=48,
    sources_per_iteration=8,
    samples_per_source=2,
    kl_coef=0.1,
    epochs=2,
    minibatch_sequences=8,
    lr=3e-3,
    save_every_iterations=2,
)


def test_clipped_objective_has_no_gradient_outside_the_clip_range():
    """Ratio above 1 + eps with A > 0, or below 1 - eps with A < 0: the clipped term wins, gradient 0."""
    old = torch.zeros(1, 6)
    logp = torch.tensor([[0.5, 0.5, -0.5, -0.5, 0.05, -0.05]], requires_grad=True)  # ratios e^.5, e^-.5, ~1
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0, 1.0, -1.0]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    loss, clipped = clipped_surrogate(logp, old, adv, mask, clip=0.2)
    loss.backward()
    grad = logp.grad[0]
    assert grad[0] == 0 and grad[2] == 0  # pushed past the range in A's direction: nothing more to gain
    assert grad[1] != 0 and grad[3] != 0  # outside the range against A's direction: still corrected
    assert grad[4] != 0 and grad[5] != 0  # inside the range
    assert clipped.item() == pytest.approx(4 / 6)
    assert grad[4] == pytest.approx(-np.exp(0.05) / 6, rel=1e-5)  # d/dlogp of -rho*A/6 with A = 1


def test_advantages_are_group_relative_and_charge_the_kl_still_to_come():
    rewards = torch.tensor([0.2, 0.6, 0.5, 0.5])  # two sources, two samples each
    assert group_baseline(rewards, 2).tolist() == pytest.approx([-0.2, 0.2, 0.0, 0.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv = token_advantages(torch.tensor([1.0, -1.0]), kl, mask, kl_coef=0.5)
    assert adv[0].tolist() == pytest.approx([1 - 0.5 * 0.6, 1 - 0.5 * 0.5, 1 - 0.5 * 0.3])
    assert adv[1].tolist() == pytest.approx([-1 - 0.5 * 1.0, -1 - 0.5 * 0.5, 0.0])  # padding: no KL, no advantage


@pytest.fixture(scope="module")
def bc_policy(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ppo")
    model, tok = tiny_model(tokenizer_dir(tmp))
    return save_policy(model, tok, tmp / "bc")


def _run(bc: Path, work: Path, settings: OnlineRLSpec = SETTINGS, log=lambda m: None):
    chrf = load_reward("chrf")
    src, ref = pairs(40, seed=5)
    return run_ppo(
        settings, bc, src, ref, lambda s, h, r: chrf.score(s, h, r), work, max_length=32, fingerprint="test", log=log,
        sampling=SamplingSpec(n=settings.samples_per_source, temperature=1.0, max_new_tokens=12, seed=3),
    )  # fmt: skip


@pytest.fixture(scope="module")
def straight(bc_policy, tmp_path_factory):
    """One uninterrupted run of SETTINGS, which the resumed and extended runs must reproduce."""
    return _run(bc_policy, tmp_path_factory.mktemp("straight") / "run")


def test_ppo_moves_away_from_bc_and_counts_its_compute(straight, bc_policy):
    result = straight
    history = result.history
    assert len(history) == 6 and result.iterations == 6
    assert history[0]["kl_to_bc"] == 0.0  # the first batch is sampled by BC itself
    assert history[-1]["kl_to_bc"] > 0.01  # and the policy moves away from it
    assert [m.name for m in result.marks] == ["ppo/c00000048", "ppo/c00000096"]
    assert weights_hash(result.marks[-1].path) != weights_hash(bc_policy)
    c = result.compute
    assert c.candidates == 96 == history[-1]["candidates"]
    assert 0 < c.reward_calls <= c.candidates  # repeated outputs of a source are scored once
    assert c.target_tokens > 0 and c.seconds > 0
    first, last = result.marks[0].compute, result.marks[1].compute
    assert first.candidates == 48 and all(
        getattr(last, k) > getattr(first, k) for k in ("candidates", "reward_calls", "target_tokens", "seconds")
    )
    saved = json.loads((result.marks[0].path.parents[1] / "history.json").read_text())
    assert saved == history
    # Each iteration's seconds, split by phase, add up to the seconds counted.
    phases = result.phase_seconds
    assert [t["iteration"] for t in phases] == [1, 2, 3, 4, 5, 6]
    assert all(t["sample"] > 0 and t["score"] > 0 and t["update"] > 0 for t in phases)
    assert sum(t["sample"] + t["score"] + t["update"] for t in phases) == pytest.approx(c.seconds, abs=0.02)


# The child computes with the parent's thread count: float sums differ bitwise between thread counts
# (an earlier test in the same process may have set torch to one thread).
KILLED = """
import sys
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[3]))
from rest_pipeline_tests.test_online_rl import _run
_run(Path(sys.argv[1]), Path(sys.argv[2]))
"""


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_save_to_the_same_policy(bc_policy, straight, tmp_path):
    work = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(bc_policy), str(work), str(torch.get_num_threads())])
    state = work / "state" / "state.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (state.is_file() and json.loads(state.read_text())["iteration"] >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    at = json.loads(state.read_text())["iteration"]
    assert 2 <= at < 6, at  # killed in the middle
    resumed = _run(bc_policy, work)
    assert resumed.history == straight.history
    assert resumed.compute.candidates == straight.compute.candidates
    assert resumed.compute.target_tokens == straight.compute.target_tokens
    assert weights_hash(resumed.marks[-1].path) == weights_hash(straight.marks[-1].path)
    assert [t["iteration"] for t in resumed.phase_seconds] == [1, 2, 3, 4, 5, 6]  # each iteration timed once


@pytest.mark.slow
def test_a_bigger_budget_continues_a_finished_run_and_other_settings_start_over(bc_policy, straight, tmp_path):
    work = tmp_path / "grown"
    grid = {"eval_every_candidates": 32}  # marks at 32, 64, 96; a 40-candidate budget ends off that grid, at 48
    half = _run(bc_policy, work, SETTINGS.model_copy(update={**grid, "total_candidates": 40}))
    assert half.iterations == 3 and [m.name for m in half.marks] == ["ppo/c00000032", "ppo/c00000048"]
    said: list[str] = []
    grown = _run(bc_policy, work, SETTINGS.model_copy(update=grid), log=said.append)  # iterations 4-6 only
    assert said[0].startswith("ppo: resuming at iteration 3 of 6")
    assert sum(m.startswith("ppo: {") for m in said) == 3
    assert grown.history == straight.history  # the budget does not change what an iteration does
    assert [m.name for m in grown.marks] == ["ppo/c00000032", "ppo/c00000064", "ppo/c00000096"]
    assert not (work / "marks" / "c00000048").exists()  # the old end mark, off the grid, is gone
    assert grown.marks[0].compute == half.marks[0].compute  # the first half as it was run, not re-run
    assert weights_hash(grown.marks[-1].path) == weights_hash(straight.marks[-1].path)
    assert grown.compute.target_tokens == straight.compute.target_tokens
    again = _run(bc_policy, work, SETTINGS.model_copy(update=grid))  # nothing left to do: the same result
    assert again.history == grown.history and again.iterations == 6
    with pytest.raises(ValueError, match="holds a PPO run of 6 iterations.*raise total_candidates to at least 96"):
        _run(bc_policy, work, SETTINGS.model_copy(update={**grid, "total_candidates": 40}))
    other = _run(bc_policy, work, SETTINGS.model_copy(update={"total_candidates": 48, "lr": 1e-3}))
    assert other.iterations == 3 and len(other.history) == 3  # a new run, not the 6 iterations saved
    assert other.history[1] != straight.history[1]


def test_ppo_scores_each_sample_under_the_distribution_that_drew_it(bc_policy):
    """The behaviour log-probs PPO's ratio and KL use are the sampler's: logits at the sampling
    temperature, without the tokens generate() may not draw (Marian's pad), no forced end token."""
    model, tok = load_policy(bc_policy).eval(), load_tokenizer(bc_policy)
    family = family_of(model, tok)
    sources = pairs(6, seed=1)[0]
    src = family.encode_sources(sources, 32)
    ids, mask = left_or_right_pad(src, family.pad_id, left=False)
    torch.manual_seed(7)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.7, top_k=0, num_beams=1,
                         num_return_sequences=2, max_new_tokens=4, forced_eos_token_id=None,
                         return_dict_in_generate=True, output_scores=True)  # fmt: skip
    drawn = out.sequences[:, 1:]
    sampler = torch.stack(out.scores, 1).log_softmax(-1).gather(-1, drawn.unsqueeze(-1)).squeeze(-1)
    rollout = sample_rollout(model, family, sources, SamplingSpec(n=2, temperature=0.7, max_new_tokens=4), 32, seed=7)
    with torch.no_grad():
        logp, m = sequence_logprobs(model, family, rollout, 0.7)
    assert logp.shape[1] <= sampler.shape[1] and bool(m.any())
    assert torch.allclose(logp[m], sampler[:, : logp.shape[1]][m], atol=1e-4)
    at_one, _ = sequence_logprobs(model, family, rollout, 1.0)
    assert torch.isfinite(logp).all() and not torch.allclose(logp[m], at_one[m])
    # Cut at max_new_tokens, a sample ends where the policy stopped it: mostly not on an end token.
    last = rollout.batch.labels.gather(1, (m.sum(1, keepdim=True) - 1)).squeeze(1)
    assert (last == family.eos_id).float().mean() < 0.5
