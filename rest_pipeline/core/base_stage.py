"""The supervised half of ReST as plain functions: corpus -> tokenizer -> BC policy -> evaluation.

Each function reads and writes only through the experiment's `ExperimentStore`, so the Dagster
assets, the CLI and the tests all call the same code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from rest_pipeline.core.corpus.fetch import sha256_of
from rest_pipeline.core.corpus.files import content_sha256, file_paths, local_entry
from rest_pipeline.core.corpus.splits import SplitInfo, prepare_splits
from rest_pipeline.core.evaluation.checkpoint import eval_splits, evaluate_decodings
from rest_pipeline.core.paths import atomic_dir
from rest_pipeline.core.policy.model import build_policy, weights_hash
from rest_pipeline.core.policy.tokenizer import load_tokenizer, train_sentencepiece
from rest_pipeline.core.store.experiment import ExperimentStore, StaleRecordError
from rest_pipeline.core.store.records import BCPolicyLink, CorpusRecord, DecodingEval, SplitRecord
from rest_pipeline.core.training.trainer import TrainResult, resolve_precision, train_policy
from rest_pipeline.core.types import Log
from rest_pipeline.spec import ExperimentSpec


def data_file_hashes(spec: ExperimentSpec) -> dict[str, str]:
    """sha256 of every file `data.files` names, by the path the spec gives (a hub file: its local copy)."""
    files = spec.data.files
    if files is None:
        return {}
    entries = [e for e in (files.train, files.valid, files.test) if e is not None]
    return {str(p): content_sha256(p) for e in entries for p in file_paths(local_entry(e))}


def changed_data_files(store: ExperimentStore, hashes: dict[str, str]) -> list[str]:
    """Lines naming each data file whose contents differ from when the experiment's corpus was built."""
    try:
        before = store.get(CorpusRecord).files
    except (FileNotFoundError, StaleRecordError):
        return []
    return [
        f"{path}: changed since the corpus was built (sha256 {before[path][:12]}… then, {sha[:12]}… now); the "
        "corpus is rebuilt from it, and everything made from the old contents (tokenizer, BC, grows, Improve "
        "steps, evaluations) is stale: each is re-made under its new content address, nothing old is mixed in"
        for path, sha in hashes.items()
        if path in before and before[path] != sha
    ]


def build_corpus(
    spec: ExperimentSpec, store: ExperimentStore, mirror: Path | None = None, log: Log = print
) -> CorpusRecord:
    hashes = data_file_hashes(spec)
    for line in changed_data_files(store, hashes):
        log(f"corpus: {line}")
    infos: dict[str, SplitInfo] = prepare_splits(spec.data, store.split_file, mirror, seed=spec.seed)
    record = CorpusRecord(
        dataset=spec.data.corpus_name,
        files=hashes,
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
    store.put(record)
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


def bc_key(spec: ExperimentSpec, store: ExperimentStore, precision: str) -> str:
    """Content address of a BC training: what decides its weights and nothing else. The corpus and
    tokenizer enter by their content, so two experiments on the same data share one BC."""
    payload = {
        "corpus": [sha256_of(store.split_file("train")), sha256_of(store.split_file("valid"))],
        "tokenizer": tokenizer_hash(store.tokenizer_dir),
        "sections": {k: spec.model_dump(mode="json")[k] for k in ("tokenizer", "policy", "bc")},
        # a pretrained starting point by its weights: the same folder name with other weights is another BC
        "pretrained": weights_hash(spec.policy.pretrained_path) if _local_dir(spec.policy.pretrained_path) else None,
        "validation_decoding": spec.evaluation.backend,
        "seed": spec.seed,
        "precision": precision,  # 'auto' resolves per machine: a bf16 BC is another model than an fp32 one
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _local_dir(path: str | None) -> bool:
    return bool(path) and Path(path).is_dir()


def tokenizer_hash(folder: Path) -> str:
    """A tokenizer folder by what it does: a SentencePiece model by its pieces and scores (its file also
    records the path it was trained from), other files by their bytes; the config (a path) left out."""
    import sentencepiece as spm

    h = hashlib.sha256()
    for p in sorted(q for q in folder.iterdir() if q.is_file() and q.name != "tokenizer_config.json"):
        h.update(p.name.encode())
        if p.suffix in (".spm", ".model"):
            sp = spm.SentencePieceProcessor(model_file=str(p))
            h.update(json.dumps([(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]).encode())
        else:
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def train_base_policy(spec: ExperimentSpec, store: ExperimentStore, log: Log = print) -> TrainResult:
    """BC-train the base policy (from scratch, or fine-tune a pretrained checkpoint), once per content
    address under `<home>/bc_policies/`: every experiment and branch asking for the same BC reuses it,
    one training at a time holds the lock, and a killed training resumes from its last save point."""
    from filelock import FileLock

    torch.manual_seed(spec.seed)
    tokenizer = load_tokenizer(store.tokenizer_dir)
    model = build_policy(spec.policy, tokenizer, spec.tokenizer.max_length)
    precision = resolve_precision(spec.bc.precision, next(model.parameters()).device)
    key = bc_key(spec, store, precision)
    work_dir = store.bc_policies_root / key
    store.bc_policies_root.mkdir(parents=True, exist_ok=True)
    train, valid = store.split("train"), store.split("valid")
    with FileLock(str(store.bc_policies_root / f".{key}.lock")):
        result = train_policy(
            model,
            tokenizer,
            (list(train.source), list(train.target)),
            (list(valid.source), list(valid.target)),
            spec.bc.model_copy(update={"precision": precision}),
            work_dir,
            seed=spec.seed,
            max_length=spec.tokenizer.max_length,
            fingerprint=key,
            log=log,
            decode_backend=spec.evaluation.backend,
        )
    with atomic_dir(store.base_policy_dir) as tmp:
        shutil.copytree(result.best_dir, tmp, dirs_exist_ok=True)
    store.link_bc_policy(
        BCPolicyLink(
            key=key,
            path=store.rel(work_dir),
            steps=result.steps,
            epochs=result.epochs,
            stopped_because=result.stopped_because,
            clock_cut=result.clock_cut,
            precision=result.precision,
            train_seconds=result.train_seconds,
            keep_best_by=result.keep_best_by,
            best_metric=round(result.best_metric, 4),
            plateau=result.plateau(spec.bc.patience or 3),  # the last patience window
            pretrained=spec.policy.pretrained_path,
            pretrained_hash=weights_hash(spec.policy.pretrained_path)
            if _local_dir(spec.policy.pretrained_path)
            else None,
        )
    )
    if result.clock_cut:
        log(f"bc: WARNING stopped by its time budget ({spec.bc.time_budget_minutes} min), not by its validation rule")
    return result


def evaluate_base_policy(spec: ExperimentSpec, store: ExperimentStore, log: Log = print) -> DecodingEval:
    return evaluate_decodings(
        store,
        store.base_policy_dir,
        eval_splits(spec, store),
        spec.evaluation,
        max_source_length=spec.tokenizer.max_length,
        log=log,
    )
