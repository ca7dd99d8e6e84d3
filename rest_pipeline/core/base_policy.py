"""The supervised half of ReST as plain functions: corpus -> tokenizer -> BC policy -> evaluation.

Each function reads and writes only through the experiment's `ExperimentStore`, so the Dagster
assets, the CLI and the tests all call the same code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import torch

from rest_pipeline.core.corpus.splits import SplitInfo, prepare_splits
from rest_pipeline.core.evaluation.checkpoint import evaluate_decodings
from rest_pipeline.core.paths import atomic_dir
from rest_pipeline.core.policy.model import build_policy
from rest_pipeline.core.policy.tokenizer import load_tokenizer, train_sentencepiece
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.records import CorpusRecord, DecodingEval, SplitRecord
from rest_pipeline.core.training.bc import BCResult, train_bc
from rest_pipeline.core.types import Log
from rest_pipeline.spec import ExperimentSpec


def build_corpus(spec: ExperimentSpec, store: ExperimentStore, mirror: Path | None = None) -> CorpusRecord:
    infos: dict[str, SplitInfo] = prepare_splits(spec.data, store.split_file, mirror)
    record = CorpusRecord(
        dataset=spec.data.dataset,
        splits={
            role: SplitRecord(
                role=i.role,
                name=i.name,
                file=store.rel(i.path),
                rows=i.rows,
                skipped=i.skipped,
                source_file=i.source_file.name,
                target_file=i.target_file.name,
            )
            for role, i in infos.items()
        },
    )
    store.write_corpus(record)
    return record


def build_tokenizer(spec: ExperimentSpec, store: ExperimentStore) -> Path:
    if spec.tokenizer.kind == "pretrained" or spec.policy.pretrained_path:
        if not spec.policy.pretrained_path:
            raise ValueError("tokenizer.kind is 'pretrained' but policy.pretrained_path is not set")
        tok = load_tokenizer(spec.policy.pretrained_path)
        with atomic_dir(store.tokenizer_dir) as tmp:
            tok.save_pretrained(tmp)
        return store.tokenizer_dir
    train = store.split("train")
    return train_sentencepiece(list(train.source) + list(train.target), spec.tokenizer, store.tokenizer_dir, spec.seed)


def train_base_policy(spec: ExperimentSpec, store: ExperimentStore, log: Log = print) -> BCResult:
    """BC-train the base policy (from scratch, or fine-tune a pretrained checkpoint); resumable."""
    torch.manual_seed(spec.seed)
    tokenizer = load_tokenizer(store.tokenizer_dir)
    model = build_policy(spec.policy, tokenizer, spec.tokenizer.max_length)
    train, valid = store.split("train"), store.split("valid")
    fingerprint = f"{spec.section_hash('data', 'tokenizer', 'policy', 'bc')}-{spec.seed}"
    result = train_bc(
        model,
        tokenizer,
        (list(train.source), list(train.target)),
        (list(valid.source), list(valid.target)),
        spec.bc,
        store.bc_work_dir,
        seed=spec.seed,
        max_length=spec.tokenizer.max_length,
        fingerprint=fingerprint,
        log=log,
        decode_backend=spec.evaluation.backend,
    )
    with atomic_dir(store.base_policy_dir) as tmp:
        shutil.copytree(result.best_dir, tmp, dirs_exist_ok=True)
    return result


def load_eval_splits(spec: ExperimentSpec, store: ExperimentStore) -> dict[str, pd.DataFrame]:
    return {s: store.split(s) for s in spec.evaluation.splits}


def evaluate_base_policy(spec: ExperimentSpec, store: ExperimentStore, log: Log = print) -> DecodingEval:
    return evaluate_decodings(
        store,
        store.base_policy_dir,
        load_eval_splits(spec, store),
        spec.evaluation,
        max_source_length=spec.tokenizer.max_length,
        log=log,
    )
