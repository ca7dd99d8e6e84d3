"""Improve losses behind one interface: BC (plain NLL) and the offline-RL losses of the ReST paper's
ablation (GOLD, BVMPO, OAC).

A loss sees one batch (`LossBatch`: the policy's logits, the labels, and per example the
sequence reward, the behaviour baseline of its source, whether it is a sample of the behaviour
(grow) policy, and, when the loss asks for them, the behaviour policy's token log-probabilities)
and returns a loss summed over target tokens; the training loop divides by the batch's token
count. Losses with parameters of their own (a learned temperature, a critic) are modules whose
parameters the loop optimises and saves with its resume point.

The rewards are the training reward model's scores that the slice already carries. The original
(reference) pairs mixed into every slice enter each loss like any other example, with their own
reward-model score: they are demonstrations in D_g, as in the paper, and a baseline or a critic
judges them like the samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LossBatch:
    logits: torch.Tensor  # [B, T, V]
    labels: torch.Tensor  # [B, T], -100 on padding
    rewards: torch.Tensor  # [B] sequence reward R(x, y) in [0, 1]
    baselines: torch.Tensor  # [B] mean reward of the behaviour policy's samples of the same source
    is_sample: torch.Tensor  # [B] bool: drawn from the behaviour (grow) policy; False for original pairs
    encoder_states: torch.Tensor  # [B, S, D] last encoder layer (for a critic)
    encoder_mask: torch.Tensor  # [B, S]
    progress: float  # fraction of the planned training done, in [0, 1] (annealing schedules)
    label_smoothing: float = 0.0
    behaviour_logprobs: torch.Tensor | None = None  # [B, T] log pi_b(y_t | y_<t, x), 0 on padding


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y_t | y_<t, x) of each label token ([B, T], 0 on padding) and the padding mask."""
    mask = labels != -100
    logp = torch.log_softmax(logits.float(), dim=-1)
    taken = logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return taken.masked_fill(~mask, 0.0), mask  # not taken * mask: a banned token 0 is -inf there


class SequenceLoss(nn.Module):
    name = "base"
    needs_behaviour_logprobs = False

    def forward(self, b: LossBatch) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class _SmoothedCrossEntropySum(torch.autograd.Function):
    """Summed label-smoothed cross-entropy over rows of logits, with labels -100 left out: the value of
    `F.cross_entropy(..., label_smoothing=eps, reduction="sum")` in fewer passes over the [N, V] logits.

    Per row, -(1 - eps) log p_t - eps mean_v log p_v = lse - (1 - eps) x_t - eps mean(x), and its gradient
    is softmax(x) - (1 - eps) onehot(t) - eps / V. On a CPU, F.cross_entropy writes the log-softmax, and
    its backward fills, adds and reads [N, V] tensors several times more: ~9 % of a default BC update here
    (profiled: research/log.md, seventh session).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
        kept = labels != -100
        targets = labels.clamp_min(0).unsqueeze(1)
        lse = torch.logsumexp(logits, dim=-1)
        per_row = lse - (1.0 - eps) * logits.gather(1, targets).squeeze(1)
        if eps:
            per_row = per_row - eps * logits.mean(dim=-1)
        ctx.save_for_backward(logits, lse, targets, kept)
        ctx.eps = eps
        return per_row.masked_fill(~kept, 0.0).sum()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, lse, targets, kept = ctx.saved_tensors
        eps = ctx.eps
        scale = (grad_out * kept.to(logits.dtype)).unsqueeze(1)  # 0 on rows left out
        grad = torch.sub(logits, lse.unsqueeze(1)).exp_().mul_(scale)
        if eps:
            grad.sub_(scale * (eps / logits.shape[1]))
        grad.scatter_add_(1, targets, -(1.0 - eps) * scale)
        return grad, None, None


def smoothed_cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Summed label-smoothed cross-entropy of [..., V] logits against labels (-100 left out), in fp32."""
    return _SmoothedCrossEntropySum.apply(logits.flatten(0, -2).float(), labels.flatten(), float(label_smoothing))


# The one-pass cross-entropy above; False restores F.cross_entropy (bench/bc_bench.py's old path).
FUSED_CROSS_ENTROPY = True


class NLLLoss(SequenceLoss):
    """Behavioural cloning: plain (label-smoothed) NLL; the filter already chose the data."""

    name = "bc"

    def forward(self, b: LossBatch) -> torch.Tensor:
        if FUSED_CROSS_ENTROPY:
            return smoothed_cross_entropy_sum(b.logits, b.labels, b.label_smoothing)
        return F.cross_entropy(
            b.logits.flatten(0, 1).float(), b.labels.flatten(), label_smoothing=b.label_smoothing, reduction="sum"
        )


class GOLDLoss(SequenceLoss):
    """GOLD (Pang & He, ICLR 2021, "Text Generation by Learning from Demonstrations"), eq. 5 with the
    per-token approximation of its section 3.2: an off-policy policy gradient over the demonstrations

        grad J = sum_t  w_t * Q(s_t, y_t) * grad log pi(y_t | y_<t, x),   w_t = max(u, sg(pi(y_t | y_<t, x)))

    where the importance weight is approximated by the policy's own detached token probability,
    lower-bounded by u (the authors' `--iw-min`; 0.2 in their translation runs) and capped at 1. As in
    the ReST paper's ablation, the return Q of every token is the sequence reward R(x, y). With u = 1
    and R = 1 it is plain NLL. Label smoothing is not applied (the weights already reshape the target).
    """

    name = "gold"

    def __init__(self, weight_floor: float = 0.2):
        super().__init__()
        if not 0 < weight_floor <= 1:
            raise ValueError(f"improve.gold.weight_floor must lie in (0, 1], got {weight_floor}")
        self.weight_floor = weight_floor

    def forward(self, b: LossBatch) -> torch.Tensor:
        logp, mask = token_logprobs(b.logits, b.labels)
        weight = logp.detach().exp().clamp(min=self.weight_floor, max=1.0)
        return -(weight * b.rewards[:, None] * logp * mask).sum()


class BVMPOLoss(SequenceLoss):
    """BVMPO: V-MPO (Song et al., ICLR 2020, eqs. 1-4) with a behaviour-value baseline, as in the ReST
    paper's ablation.

    Advantage A = R(x, y) - V_b(x), where V_b(x) is the mean reward of the behaviour policy's samples of
    source x (the grow's own estimate of its value). Only the top half of the batch by advantage is used
    (V-MPO's E-step), weighted by psi_i = softmax_i(A_i / eta) over that half; the policy term is
    -sum_i psi_i log pi(y_i | x) (sequence log-likelihood, per token of the example). The temperature
    eta is learned through V-MPO's dual  L_eta = eta * eps_eta + eta * log mean_top exp(A / eta)  with
    eps_eta = 0.1, or fixed. The KL term lambda * KL(pi_b || pi) keeps the policy near the behaviour
    (grow) policy, lambda annealed geometrically from 1 to 1e-5 over training as in the ReST paper; it
    is estimated on the behaviour samples themselves (draws from pi_b), whose gradient is
    -E_b grad log pi(y | x): an NLL on the samples scaled by lambda. Original pairs enter the policy term
    through their own advantage but not the KL term (they are not draws from pi_b). With all-equal
    rewards every advantage is 0 and the weights are uniform over the top half.
    """

    name = "bvmpo"

    def __init__(
        self,
        eps_eta: float = 0.1,
        eta: float = 1.0,
        learn_eta: bool = True,
        top_fraction: float = 0.5,
        kl_start: float = 1.0,
        kl_end: float = 1e-5,
    ):
        super().__init__()
        self.eps_eta, self.top_fraction, self.kl_start, self.kl_end = eps_eta, top_fraction, kl_start, kl_end
        raw = torch.tensor(math.log(math.expm1(eta)))  # softplus^-1: eta > 0 always
        self.eta_raw = nn.Parameter(raw, requires_grad=learn_eta)

    @property
    def eta(self) -> torch.Tensor:
        return F.softplus(self.eta_raw) + 1e-4

    def kl_coefficient(self, progress: float) -> float:
        return self.kl_start * (self.kl_end / self.kl_start) ** min(max(progress, 0.0), 1.0)

    def forward(self, b: LossBatch) -> torch.Tensor:
        logp, mask = token_logprobs(b.logits, b.labels)
        seq_logp = logp.sum(-1)
        tokens = mask.sum(-1).clamp_min(1)
        adv = (b.rewards - b.baselines).float()
        k = max(1, math.ceil(self.top_fraction * len(adv)))
        top = torch.topk(adv, k).indices
        eta = self.eta
        psi = torch.softmax(adv[top] / eta.detach(), dim=0)
        # Scale by the batch's tokens so the summed loss, divided by the token count, is a weighted mean.
        policy = -(psi * seq_logp[top]).sum() * tokens.sum() / tokens[top].sum() * k / len(adv)
        dual = eta * self.eps_eta + eta * (torch.logsumexp(adv[top] / eta, 0) - math.log(k))
        kl = -(seq_logp * b.is_sample).sum()
        # The dual only moves eta (psi uses a detached eta); scaled so that, per token, it is V-MPO's L_eta.
        return policy + dual * tokens.sum() + self.kl_coefficient(b.progress) * kl


class OACLoss(SequenceLoss):
    """Offline actor-critic (Mathieu et al. 2021, "StarCraft II Unplugged", section 4.2) for sequences.

    A critic V(x) — a value head on the mean-pooled last encoder layer of the policy, whose gradient does
    not reach the encoder — regresses the sequence reward: L_V = c_V * (V(x) - R(x, y))^2. The actor takes
    the advantage A = R(x, y) - sg(V(x)) and an importance-clipped policy gradient
        -sum_t min(rho_t, rho_max) * A * log pi(y_t | y_<t, x),   rho_t = sg(pi(y_t | .) / pi_b(y_t | .))
    with pi_b the behaviour (grow) policy and rho_max = 1 (V-trace's clipping, which the paper uses). An
    example whose reward equals the critic's estimate moves the policy not at all; unlike NLL, a below-
    average output is pushed down.
    """

    name = "oac"
    needs_behaviour_logprobs = True

    def __init__(self, d_model: int, rho_max: float = 1.0, value_coef: float = 0.5):
        super().__init__()
        self.value_head = nn.Sequential(nn.Linear(d_model, d_model), nn.Tanh(), nn.Linear(d_model, 1))
        self.rho_max, self.value_coef = rho_max, value_coef

    def value(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).float()
        pooled = (states.detach().float() * m).sum(1) / m.sum(1).clamp_min(1.0)
        return torch.sigmoid(self.value_head(pooled).squeeze(-1))  # rewards lie in [0, 1]

    def forward(self, b: LossBatch) -> torch.Tensor:
        if b.behaviour_logprobs is None:
            raise ValueError("oac: needs the behaviour policy's token log-probabilities")
        logp, mask = token_logprobs(b.logits, b.labels)
        v = self.value(b.encoder_states, b.encoder_mask)
        adv = (b.rewards - v).detach()
        rho = (logp.detach() - b.behaviour_logprobs).exp().clamp(max=self.rho_max)
        actor = -(rho * adv[:, None] * logp * mask).sum()
        critic = self.value_coef * ((v - b.rewards) ** 2 * mask.sum(-1)).sum()
        return actor + critic


LOSSES = ("bc", "gold", "bvmpo", "oac")


def make_loss(name: str, d_model: int = 256, options: dict | None = None) -> SequenceLoss:
    """The loss `name` with the spec's options (improve.<name>)."""
    options = options or {}
    if name == "bc":
        return NLLLoss()
    if name == "gold":
        return GOLDLoss(**options)
    if name == "bvmpo":
        return BVMPOLoss(**options)
    if name == "oac":
        return OACLoss(d_model, **options)
    raise ValueError(f"improve.loss: '{name}' is not implemented (available: {list(LOSSES)})")
