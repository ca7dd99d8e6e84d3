"""The shape of the ReST loop a spec asks for: which checkpoint is whose parent, which steps exist,
which policy samples each grow, and each step's seed and learning rate. Pure functions of the
spec (no disk), so the asset graph and the core agree on the chain by construction."""

from __future__ import annotations

from rest_pipeline.spec import ExperimentSpec, ImproveSpec


def parent_of(spec: ExperimentSpec, grow: int, step: int) -> tuple[int, int]:
    """(grow, step) of the parent checkpoint; (0, 0) is the BC policy."""
    if step > 1:
        return grow, step - 1
    return (grow - 1, spec.improve.steps) if grow > 1 else (0, 0)


def sampler_of(spec: ExperimentSpec, grow: int) -> tuple[int, int]:
    """Grow 1 samples from the BC policy; grow g > 1 from the last checkpoint of grow g-1."""
    return parent_of(spec, grow, 1)


def final_step(spec: ExperimentSpec) -> tuple[int, int]:
    """The step whose checkpoint the loop hands on at the end."""
    return spec.improve.grows, spec.improve.steps


def all_steps(spec: ExperimentSpec) -> list[tuple[int, int]]:
    """Every Improve step, in the order the loop runs them."""
    return [(g, i) for g in range(1, spec.improve.grows + 1) for i in range(1, spec.improve.steps + 1)]


def own_steps(spec: ExperimentSpec) -> list[tuple[int, int]]:
    """The steps this experiment trains itself: all of them, or a branch's from its branch grow on."""
    first = spec.branch.grow if spec.branch else 1
    return [(g, i) for g, i in all_steps(spec) if g >= first]


def own_grows(spec: ExperimentSpec) -> list[int]:
    """The grows this experiment samples itself: all, or a branch's after its branch grow."""
    last_reused = spec.branch.grow if spec.branch else 0
    return list(range(last_reused + 1, spec.improve.grows + 1))


def step_number(imp: ImproveSpec, grow: int, step: int) -> int:
    """Improve steps so far, across grows (1, 2, ...): seeds each step."""
    return (grow - 1) * imp.steps + step


def step_lr(imp: ImproveSpec, grow: int, step: int) -> float:
    """Lower with each step of a grow (the paper), restarting at each grow scaled by grow_lr_decay."""
    return imp.train.lr * imp.grow_lr_decay ** (grow - 1) * imp.lr_decay ** (step - 1)
