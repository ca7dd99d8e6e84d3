"""The supervised half of ReST as plain functions: corpus -> tokenizer -> BC policy -> evaluation.

Each function reads and writes only inside the experiment's folder (see `Layout`), so the
Dagster assets, the CLI and the tests all call the same code.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from rest_pipeline.core.corpus.splits import SplitInfo, load_split, prepare_splits
from rest_pipeline.core.evaluation.evaluate import EvalRow, evaluate_checkpoint
from rest_pipeline.core.paths import atomic_dir, experiment_dir
from rest_pipeline.core.policy.model import build_marian, load_policy, pick_device
from rest_pipeline.core.policy.tokenizer import load_tokenizer, train_sentencepiece
from rest_pipeline.core.training.bc import BCResult, train_bc
from rest_pipeline.spec import ExperimentSpec

Log = Callable[[str], None]


@dataclass(frozen=True)
class Layout:
    """Folder layout of one experiment; several experiments never share a path."""

    root: Path

    @classmethod
    def of(cls, spec: ExperimentSpec) -> Layout:
        return cls(experiment_dir(spec.name))

    @property
    def corpus(self) -> Path:
        return self.root / "corpus"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def bc_work(self) -> Path:
        return self.root / "policies" / "base_training"

    @property
    def base_policy(self) -> Path:
        return self.root / "policies" / "base"

    @property
    def base_eval(self) -> Path:
        return self.root / "evaluations" / "base"

    @property
    def reward_model(self) -> Path:
        return self.root / "reward_model"

    @property
    def store(self) -> Path:
        return self.root / "store"

    def improve_dir(self, grow: int, step: int) -> Path:
        """One Improve step: training/ (resume point, best/ checkpoint) and step.json (its lineage)."""
        return self.root / "policies" / f"grow_{grow}" / f"improve_{step}"

    def eval_dir(self, grow: int, step: int) -> Path:
        """Evaluation of a checkpoint; grow 0 step 0 is the BC policy."""
        if grow == 0:
            return self.root / "evaluations" / "base_rewards"
        return self.root / "evaluations" / f"grow_{grow}" / f"improve_{step}"

    @property
    def best_of_n(self) -> Path:
        return self.root / "evaluations" / "best_of_n"

    @property
    def report(self) -> Path:
        return self.root / "report"


def build_corpus(spec: ExperimentSpec, layout: Layout, mirror: Path | None = None) -> dict[str, SplitInfo]:
    return prepare_splits(spec.data, layout.corpus, mirror)


def build_tokenizer(spec: ExperimentSpec, layout: Layout) -> Path:
    if spec.tokenizer.kind == "pretrained" or spec.policy.kind == "pretrained":
        if not spec.policy.pretrained_path:
            raise ValueError("tokenizer.kind is 'pretrained' but policy.pretrained_path is not set")
        tok = load_tokenizer(spec.policy.pretrained_path)
        with atomic_dir(layout.tokenizer) as tmp:
            tok.save_pretrained(tmp)
        return layout.tokenizer
    train = load_split(layout.corpus, "train")
    return train_sentencepiece(list(train.source) + list(train.target), spec.tokenizer, layout.tokenizer, spec.seed)


def train_base_policy(spec: ExperimentSpec, layout: Layout, log: Log = print) -> BCResult:
    """BC-train the base policy (from scratch, or fine-tune a pretrained checkpoint); resumable."""
    torch.manual_seed(spec.seed)
    tokenizer = load_tokenizer(layout.tokenizer)
    if spec.policy.kind == "pretrained":
        model = load_policy(spec.policy.pretrained_path)
    else:
        model = build_marian(spec.policy, tokenizer, spec.tokenizer.max_length).to(pick_device())
    train, valid = load_split(layout.corpus, "train"), load_split(layout.corpus, "valid")
    fingerprint = f"{spec.section_hash('data', 'tokenizer', 'policy', 'bc')}-{spec.seed}"
    result = train_bc(
        model,
        tokenizer,
        (list(train.source), list(train.target)),
        (list(valid.source), list(valid.target)),
        spec.bc,
        layout.bc_work,
        seed=spec.seed,
        max_length=spec.tokenizer.max_length,
        fingerprint=fingerprint,
        log=log,
    )
    with atomic_dir(layout.base_policy) as tmp:
        shutil.copytree(result.best_dir, tmp, dirs_exist_ok=True)
    return result


def load_eval_splits(spec: ExperimentSpec, layout: Layout) -> dict[str, pd.DataFrame]:
    return {s: load_split(layout.corpus, s) for s in spec.evaluation.splits}


def evaluate_base_policy(spec: ExperimentSpec, layout: Layout, log: Log = print) -> list[EvalRow]:
    return evaluate_checkpoint(
        layout.base_policy,
        load_eval_splits(spec, layout),
        spec.evaluation,
        layout.base_eval,
        max_source_length=spec.tokenizer.max_length,
        log=log,
    )
