"""Reward models behind one protocol: a batch of (source, hypothesis, reference) -> scores in [0, 1].

Each model declares whether it needs a reference and how its raw score was normalised, so
the candidate store can record both and a score cache can key on exactly the inputs that
matter (a reference-free model's score does not depend on the reference).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

import numpy as np


class RewardError(ValueError):
    """A reward model is missing, misconfigured, or produced an invalid score."""


@runtime_checkable
class RewardModel(Protocol):
    name: str
    version: str  # changes whenever scores could change (weights, normalisation, settings)
    needs_reference: bool
    normalisation: str

    def score(
        self, sources: Sequence[str], hypotheses: Sequence[str], references: Sequence[str] | None
    ) -> np.ndarray: ...


def cache_key(model: RewardModel, source: str, hypothesis: str, reference: str | None) -> str:
    """Content hash of the inputs a model's score depends on, plus the model's version."""
    parts = [model.name, model.version, source, hypothesis]
    if model.needs_reference:
        parts.append(reference or "")
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def check_scores(model: RewardModel, scores: np.ndarray, n: int) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (n,):
        raise RewardError(f"reward '{model.name}' returned shape {scores.shape} for {n} inputs")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise RewardError(f"reward '{model.name}' returned NaN/inf for {bad.size} inputs (first at index {bad[0]})")
    out = np.flatnonzero((scores < 0) | (scores > 1))
    if out.size:
        raise RewardError(
            f"reward '{model.name}' returned {out.size} scores outside [0, 1] (e.g. {scores[out[0]]:.4f}); "
            f"its normalisation '{model.normalisation}' is wrong"
        )
    return scores


class _SentenceMetricReward:
    """A sacrebleu sentence metric / 100 as a reward. Needs the reference."""

    name: str
    normalisation: str
    needs_reference = True

    def __init__(self) -> None:
        import sacrebleu

        self.version = f"sacrebleu-{sacrebleu.__version__}"
        self._metric = self._make_metric(sacrebleu.metrics)

    def _make_metric(self, metrics):  # pragma: no cover - overridden
        raise NotImplementedError

    def score(self, sources, hypotheses, references) -> np.ndarray:
        if references is None:
            raise RewardError(f"reward '{self.name}' needs references")
        raw = [self._metric.sentence_score(h, [r]).score for h, r in zip(hypotheses, references, strict=True)]
        return np.clip(np.array(raw) / 100.0, 0.0, 1.0)  # sacrebleu can return 100.00000000000004


class ChrFReward(_SentenceMetricReward):
    """Sentence-level chrF / 100."""

    name = "chrf"
    normalisation = "chrF/100"

    def _make_metric(self, metrics):
        return metrics.CHRF()


class BleuReward(_SentenceMetricReward):
    """Sentence-level BLEU / 100 with exponential smoothing and effective order."""

    name = "bleu"
    normalisation = "BLEU/100 (smooth=exp, effective_order)"

    def _make_metric(self, metrics):
        return metrics.BLEU(effective_order=True)


BUILTIN = {"chrf": ChrFReward, "bleu": BleuReward}
# Third-party packages register scorers under this entry-point group (name -> factory).
ENTRY_POINT_GROUP = "rest_pipeline.rewards"


def check_reward_name(name: str, also: Sequence[str] = ()) -> str | None:
    """Why `name` cannot be a reward model, or None if it can (checked without building the model)."""
    if name in BUILTIN or name in also:
        return None
    plugins = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if name in plugins:
        return None
    if ":" in name:
        module_name, attr = name.split(":", 1)
        if not module_name or module_name.startswith("."):
            return f"reward model '{name}': give the module's absolute import path ('package.module:factory')"
        try:
            getattr(importlib.import_module(module_name), attr)
        except Exception as e:  # noqa: BLE001 - any failure of a user's module is that module's error, named
            return f"reward model '{name}' could not be imported: {type(e).__name__}: {e}"
        return None
    return (
        f"unknown reward model '{name}': use one of {sorted({*BUILTIN, *also})}, an installed "
        f"'{ENTRY_POINT_GROUP}' entry point ({', '.join(sorted(plugins)) or 'none installed'}), "
        "or 'package.module:factory'"
    )


def load_reward(name: str, **kwargs: object) -> RewardModel:
    """A built-in reward, an installed entry point, or a user factory by import path `package.module:attr`."""
    if name in BUILTIN:
        return BUILTIN[name](**kwargs)
    plugins = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if name in plugins:
        factory = plugins[name].load()
    elif ":" in name:
        module_name, attr = name.split(":", 1)
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise RewardError(f"reward model '{name}' could not be imported: {e}") from e
    else:
        raise RewardError(
            f"unknown reward model '{name}': use one of {sorted(BUILTIN)}, an installed "
            f"'{ENTRY_POINT_GROUP}' entry point ({', '.join(sorted(plugins)) or 'none installed'}), "
            "or 'package.module:factory'"
        )
    model = factory(**kwargs)
    if not isinstance(model, RewardModel):
        raise RewardError(f"'{name}' did not return a reward model (needs name, version, needs_reference, score)")
    return model
