"""The checks of a spec that need the installed system: its dataset in the corpus registry (language
pair and splits) and every reward name resolvable (built-in, an installed plugin, an importable
factory). The spec package stays a pure schema; the Dagster definitions and the CLI load specs
through here, so a bad name is refused with its file and field before anything runs.
"""

from __future__ import annotations

from pathlib import Path

from rest_pipeline.core.corpus.files import data_format, hub_address, is_hub
from rest_pipeline.core.corpus.registry import DATASETS
from rest_pipeline.core.corpus.validate import CorpusError
from rest_pipeline.core.policy.ct2 import CT2_FAMILIES
from rest_pipeline.core.rewards.base import check_reward_name
from rest_pipeline.spec import (
    DataFiles,
    DataSpec,
    ExperimentSpec,
    RewardSpec,
    SpecError,
    all_specs,
    find_spec,
    load_spec,
)


def data_problems(data: DataSpec) -> list[tuple[str, str]]:
    """(field, why) for each way `data` does not match the registry, or names files that are not there."""
    if data.files is not None:
        return files_problems(data.files)
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


def files_problems(files: DataFiles) -> list[tuple[str, str]]:
    problems = []
    for role in ("train", "valid", "test"):
        entry = getattr(files, role)
        named = [] if entry is None else [(f"data.files.{role}", entry)] if isinstance(entry, str) else [
            (f"data.files.{role}.source", entry.source), (f"data.files.{role}.target", entry.target)
        ]  # fmt: skip
        for where, value in named:
            if is_hub(value):
                try:
                    hub_address(value)
                except CorpusError as e:
                    problems.append((where, str(e)))
                continue
            if not Path(value).exists():
                problems.append((where, f"{value}: no such file or folder"))
            elif isinstance(entry, str):
                try:
                    data_format(Path(value), files.format)
                except CorpusError as e:
                    problems.append((where, str(e)))
    return problems


def policy_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """(field, why) for a pretrained folder whose family does not match the policy options or backends."""
    import json

    p = spec.policy
    config_file = Path(p.pretrained_path) / "config.json" if p.pretrained_path else None
    if config_file is None or not config_file.is_file():
        return []
    config = json.loads(config_file.read_text())
    kind, coded = config.get("model_type", "?"), config.get("model_type") in ("m2m_100", "mbart")
    problems = []
    if coded and not (p.source_lang_code and p.target_lang_code):
        missing = "policy.source_lang_code" if not p.source_lang_code else "policy.target_lang_code"
        problems.append((missing, f"a {kind} model translates between language codes (NLLB: deu_Latn -> eng_Latn, "
                                  "M2M100: de -> en, mBART: de_DE -> en_XX); set both"))  # fmt: skip
    if coded and p.source_lang_code and p.target_lang_code:
        from rest_pipeline.core.policy.family import language_code_id
        from rest_pipeline.core.policy.tokenizer import load_tokenizer

        tok = load_tokenizer(p.pretrained_path)
        for where, code in (
            ("policy.source_lang_code", p.source_lang_code),
            ("policy.target_lang_code", p.target_lang_code),
        ):
            try:
                language_code_id(tok, code, where)
            except ValueError as e:
                problems.append((where, str(e).split(": ", 1)[1]))
    if not coded and (p.source_lang_code or p.target_lang_code):
        problems.append(("policy.source_lang_code", f"a {kind} model has no language codes (M2M100/NLLB, mBART do)"))
    if config.get("is_encoder_decoder") and kind not in CT2_FAMILIES:
        for where in ("grow.backend", "evaluation.backend"):
            if (spec.grow if where.startswith("grow") else spec.evaluation).backend == "ctranslate2":
                families = ", ".join(CT2_FAMILIES)
                problems.append(
                    (where, f"CTranslate2 decodes {families} encoder-decoders here; a {kind} model uses hf")
                )
    return problems


def reward_problems(reward: RewardSpec) -> list[tuple[str, str]]:
    """(field, why) for each reward name that does not resolve."""
    named = [("reward.model", reward.model)] + [(f"reward.extra[{i}]", n) for i, n in enumerate(reward.extra)]
    return [
        (where, why)
        for where, name in named
        if (why := check_reward_name(reward.imports.get(name, name), also=("learned", "comet", "http")))
    ]


def check_spec(spec: ExperimentSpec, path: Path | str) -> ExperimentSpec:
    """`spec` unchanged, or a SpecError naming the file and every field that would fail later."""
    problems = data_problems(spec.data) + policy_problems(spec) + reward_problems(spec.reward)
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
