"""Build the reward models an experiment names, from built-ins, COMET folders or import paths."""

from __future__ import annotations

from pathlib import Path

from rest_pipeline.core.rewards.base import RewardError, RewardModel, load_reward
from rest_pipeline.spec import ExperimentSpec


def reward_names(spec: ExperimentSpec) -> list[str]:
    return list(dict.fromkeys([spec.reward.model, *spec.reward.extra]))


def make_reward(name: str, spec: ExperimentSpec, learned_dir: Path) -> RewardModel:
    from rest_pipeline.core.rewards.learned import comet_reward

    if name == "learned":
        if not (learned_dir / "checkpoints" / "model.ckpt").is_file():
            raise RewardError(f"{learned_dir}: the learned reward model is not trained yet (asset reward_model)")
        return comet_reward(learned_dir, name="learned")
    if name == "comet":
        if not spec.reward.comet_path:
            raise RewardError("reward.comet_path must name a local COMET checkpoint folder for reward 'comet'")
        return comet_reward(Path(spec.reward.comet_path), name="comet")
    if name == "http":
        from rest_pipeline.core.rewards.http import HttpReward

        if spec.reward.http is None:
            raise RewardError("reward 'http' needs reward.http: {url: http://host:port, ...}")
        return HttpReward(spec.reward.http)
    model = load_reward(spec.reward.imports.get(name, name))
    if model.name != name:  # the spec's name is the reward's name in the store (a plugin may call itself otherwise)
        try:
            model.name = name
        except AttributeError as e:
            raise RewardError(f"reward '{name}': its model's name '{model.name}' cannot be set to the spec's") from e
    return model


def make_rewards(spec: ExperimentSpec, learned_dir: Path) -> list[RewardModel]:
    return [make_reward(n, spec, learned_dir) for n in reward_names(spec)]


def independent_reward(spec: ExperimentSpec) -> str | None:
    """The first reward scored beside the training reward: the reward-hacking guard's witness."""
    others = [r for r in reward_names(spec) if r != spec.reward.model]
    return others[0] if others else None
