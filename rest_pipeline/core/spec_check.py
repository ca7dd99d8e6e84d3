"""The checks of a spec that need the installed system: its dataset in the corpus registry (language
pair and splits) and every reward name resolvable (built-in, an installed plugin, an importable
factory). The spec package stays a pure schema; the Dagster definitions and the CLI load specs
through here, so a bad name is refused with its file and field before anything runs.
"""

from __future__ import annotations

from pathlib import Path

from rest_pipeline.core.corpus.registry import DATASETS
from rest_pipeline.core.rewards.base import check_reward_name
from rest_pipeline.spec import DataSpec, ExperimentSpec, RewardSpec, SpecError, all_specs, find_spec, load_spec


def data_problems(data: DataSpec) -> list[tuple[str, str]]:
    """(field, why) for each way `data` does not match the registry."""
    ds = DATASETS.get(data.dataset)
    if ds is None:
        return [("data.dataset", f"unknown dataset '{data.dataset}'; known: {', '.join(sorted(DATASETS))}")]
    problems = []
    if (ds.source_lang, ds.target_lang) != (data.source_lang, data.target_lang):
        problems.append((
            "data.source_lang",
            f"{data.source_lang}->{data.target_lang}, but '{ds.name}' is {ds.source_lang}->{ds.target_lang}",
        ))  # fmt: skip
    for role in ("train", "valid", "test"):
        split = getattr(data, role)
        if split not in ds.splits:
            problems.append((f"data.{role}", f"'{ds.name}' has no split '{split}' ({', '.join(ds.splits)})"))
    return problems


def reward_problems(reward: RewardSpec) -> list[tuple[str, str]]:
    """(field, why) for each reward name that does not resolve."""
    named = [("reward.model", reward.model)] + [(f"reward.extra[{i}]", n) for i, n in enumerate(reward.extra)]
    return [(where, why) for where, name in named if (why := check_reward_name(name, also=("learned", "comet")))]


def check_spec(spec: ExperimentSpec, path: Path | str) -> ExperimentSpec:
    """`spec` unchanged, or a SpecError naming the file and every field that would fail later."""
    problems = data_problems(spec.data) + reward_problems(spec.reward)
    if problems:
        lines = [f"{path}: invalid experiment spec", *(f"  field '{f}': {why}" for f, why in problems)]
        raise SpecError("\n".join(lines))
    return spec


def load_checked_spec(name_or_path: str) -> ExperimentSpec:
    """A spec by name or path, validated and checked against this installation."""
    path = find_spec(name_or_path)
    return check_spec(load_spec(path), path)


def checked_specs(errors: list[SpecError] | None = None) -> list[ExperimentSpec]:
    """Every experiment that validates and passes `check_spec` (the others in `errors`)."""
    return all_specs(errors, check=check_spec)
