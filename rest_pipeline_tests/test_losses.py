"""The Improve losses on tiny tensors: each pushes a high-reward sample up relative to a low-reward one
of the same source, ignores padding, stays finite with all-equal rewards, and reduces to (or differs
from) NLL where its paper says it does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rest_pipeline.core.training.losses import (
    BVMPOLoss,
    GOLDLoss,
    LossBatch,
    NLLLoss,
    OACLoss,
    make_loss,
    token_logprobs,
)

V, D = 7, 8


def batch(rewards, logits=None, labels=None, progress=0.5, behaviour=None) -> LossBatch:
    torch.manual_seed(0)
    n = len(rewards)
    logits = torch.randn(n, 4, V, requires_grad=True) if logits is None else logits
    labels = torch.tensor([[1, 2, 3, -100], [4, 5, 6, 0]])[:n] if labels is None else labels
    if behaviour is None:
        behaviour = token_logprobs(logits.detach(), labels)[0]
    return LossBatch(
        logits=logits,
        labels=labels,
        rewards=torch.tensor(rewards, dtype=torch.float32),
        baselines=torch.full((n,), 0.5),
        is_sample=torch.ones(n),
        encoder_states=torch.randn(n, 3, D, generator=torch.Generator().manual_seed(1)),
        encoder_mask=torch.ones(n, 3, dtype=torch.long),
        progress=progress,
        behaviour_logprobs=behaviour,
    )


LOSSES = {
    "gold": lambda: GOLDLoss(),
    "bvmpo": lambda: BVMPOLoss(),
    "oac": lambda: OACLoss(D),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_step_favours_the_high_reward_sample(name):
    b = batch([0.9, 0.1])
    loss = LOSSES[name]()
    loss(b).backward()
    with torch.no_grad():
        before = token_logprobs(b.logits, b.labels)[0].sum(-1)
        after = token_logprobs(b.logits - 0.5 * b.logits.grad, b.labels)[0].sum(-1)
    gain = after - before
    assert gain[0] > gain[1], (name, gain)
    assert gain[0] > 0


@pytest.mark.parametrize("name", sorted(LOSSES) + ["bc"])
def test_padding_is_ignored_and_all_equal_rewards_stay_finite(name):
    loss = LOSSES.get(name, NLLLoss)()
    b = batch([0.5, 0.5])
    value = loss(b)
    assert value.shape == () and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(b.logits.grad).all()
    assert (b.logits.grad[0, 3] == 0).all()  # the padded position of example 0 gets no gradient
    # Changing the logits under padding changes nothing.
    moved = b.logits.detach().clone()
    moved[0, 3] += 100.0
    again = batch([0.5, 0.5], logits=moved.requires_grad_(), behaviour=b.behaviour_logprobs)
    assert loss(again).item() == pytest.approx(loss(batch([0.5, 0.5], logits=b.logits)).item(), rel=1e-5)


def test_gold_is_nll_when_every_weight_and_reward_is_one():
    b = batch([1.0, 1.0])
    nll = F.cross_entropy(b.logits.flatten(0, 1), b.labels.flatten(), reduction="sum")
    assert GOLDLoss(weight_floor=1.0)(b).item() == pytest.approx(nll.item(), rel=1e-5)
    assert GOLDLoss(weight_floor=0.2)(b).item() < nll.item()  # down-weights tokens the policy finds unlikely


def test_bvmpo_keeps_the_top_half_and_anneals_its_kl():
    loss = BVMPOLoss(learn_eta=False)
    assert loss.kl_coefficient(0.0) == pytest.approx(1.0) and loss.kl_coefficient(1.0) == pytest.approx(1e-5)
    b = batch([0.9, 0.1], progress=1.0)  # lambda ~ 0: the policy term alone
    loss(b).backward()
    assert b.logits.grad[1].abs().max() < 1e-4 * b.logits.grad[0].abs().max()  # the bottom half is not trained
    with pytest.raises(ValueError):
        GOLDLoss(weight_floor=0.0)


def test_oac_critic_learns_the_reward_and_a_perfect_critic_stops_the_actor():
    loss = OACLoss(D)
    b = batch([0.9, 0.1])
    opt = torch.optim.Adam(loss.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss(batch([0.9, 0.1], logits=b.logits.detach())).backward()
        opt.step()
    v = loss.value(b.encoder_states, b.encoder_mask)
    assert torch.allclose(v, torch.tensor([0.9, 0.1]), atol=0.05)
    exact = batch(v.detach().tolist())  # rewards equal to the critic's values: zero advantage
    loss(exact).backward()
    assert exact.logits.grad.abs().max() < 1e-6  # unlike NLL, nothing pulls the policy
    with pytest.raises(ValueError, match="behaviour"):
        loss(LossBatch(**{**batch([0.5, 0.5]).__dict__, "behaviour_logprobs": None}))


def test_unknown_loss_is_refused():
    assert isinstance(make_loss("bvmpo", options={"eps_eta": 0.05}), BVMPOLoss)
    with pytest.raises(ValueError, match="not implemented"):
        make_loss("ppo")


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_bc_loss_equals_torch_cross_entropy_in_value_and_gradient(smoothing):
    """The one-pass smoothed cross-entropy BC trains with is F.cross_entropy's value and gradient, padding
    rows left out, from fp32 or bf16 (autocast) logits."""
    gen = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.bfloat16):
        logits = (3 * torch.randn(3, 5, 50, generator=gen)).to(dtype).requires_grad_()
        labels = torch.randint(0, 50, (3, 5), generator=gen)
        labels[0, 2:], labels[2, 4:] = -100, -100
        b = batch([1.0, 1.0, 1.0], logits=logits, labels=labels)
        b.label_smoothing = smoothing
        ours = NLLLoss()(b)
        (grad_ours,) = torch.autograd.grad(2.5 * ours, logits)
        ref = F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), label_smoothing=smoothing, reduction="sum"
        )
        (grad_ref,) = torch.autograd.grad(2.5 * ref, logits)
        assert ours.dtype == torch.float32 and grad_ours.dtype == dtype
        assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
        assert torch.allclose(grad_ours.float(), grad_ref.float(), atol=1e-6 if dtype == torch.float32 else 1e-2)
        assert grad_ours[0, 2:].abs().sum() == 0  # padding gets no gradient
