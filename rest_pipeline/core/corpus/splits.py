"""Turn a registered dataset or the user's own files into validated Parquet splits with stable source ids."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rest_pipeline.core.corpus.fetch import fetch
from rest_pipeline.core.corpus.files import file_paths, read_files
from rest_pipeline.core.corpus.registry import get_dataset
from rest_pipeline.core.corpus.validate import CorpusError, ParallelLines, read_parallel
from rest_pipeline.core.paths import atomic_path
from rest_pipeline.spec import DataSpec

ROLES = ("train", "valid", "test")

SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("line", pa.int32()),
        ("source", pa.string()),
        ("target", pa.string()),
    ]
)


@dataclass(frozen=True)
class SplitInfo:
    role: str
    name: str
    path: Path
    rows: int
    skipped: dict[str, int]
    source_file: Path
    target_file: Path


def source_id(dataset: str, split: str, line: int) -> str:
    """Stable across runs: the verified file and line number identify the pair."""
    return f"{dataset}/{split}/{line:07d}"


def prepare_split(data: DataSpec, role: str, path: Path, mirror: Path | None = None) -> SplitInfo:
    """Validate one split of the registered dataset and write it atomically to `path` (Parquet)."""
    table, info = _read_split(data, role, path, mirror)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return info


def _read_split(data: DataSpec, role: str, path: Path, mirror: Path | None) -> tuple[pa.Table, SplitInfo]:
    ds = get_dataset(data.dataset)
    if (ds.source_lang, ds.target_lang) != (data.source_lang, data.target_lang):
        raise ValueError(
            f"data.source_lang/target_lang are {data.source_lang}->{data.target_lang} but dataset "
            f"'{ds.name}' is {ds.source_lang}->{ds.target_lang}"
        )
    split_name = getattr(data, role)
    if split_name not in ds.splits:
        raise ValueError(f"data.{role}: dataset '{ds.name}' has no split '{split_name}'; it has {', '.join(ds.splits)}")
    split = ds.splits[split_name]
    src_path, tgt_path = fetch(split.source, mirror=mirror), fetch(split.target, mirror=mirror)
    limit = data.max_train_pairs if role == "train" else data.max_eval_pairs
    lines = read_parallel(src_path, tgt_path, data.lines, expected_lines=split.source.lines, limit=limit)
    table = pa.table(
        {
            "source_id": [source_id(ds.name, split_name, n) for n in lines.line_numbers],
            "line": lines.line_numbers,
            "source": lines.sources,
            "target": lines.targets,
        },
        schema=SCHEMA,
    )
    return table, SplitInfo(role, split_name, path, table.num_rows, lines.skipped_counts, src_path, tgt_path)


def _table(ids: list[str], lines: ParallelLines) -> pa.Table:
    return pa.table(
        {"source_id": ids, "line": lines.line_numbers, "source": lines.sources, "target": lines.targets}, schema=SCHEMA
    )


def _pick(lines: ParallelLines, rows: list[int], skipped: dict | None = None) -> ParallelLines:
    return ParallelLines(
        [lines.line_numbers[i] for i in rows],
        [lines.sources[i] for i in rows],
        [lines.targets[i] for i in rows],
        skipped or {},
    )


def _read_user_splits(data: DataSpec, split_file: Callable[[str], Path], seed: int) -> dict:
    """The user's files: each given split read; a missing valid/test carved out of train (seeded, recorded)."""
    files = data.files
    assert files is not None
    read: dict[str, tuple[ParallelLines, SplitInfo]] = {}
    for role in ROLES:
        entry = getattr(files, role)
        if entry is None:
            continue
        paths = file_paths(entry)
        limit = None if role == "train" else data.max_eval_pairs  # train is cut after any carve-out
        lines = read_files(files, role, entry, data.lines, limit)
        if not lines.sources:
            raise CorpusError(f"data.files.{role}: {paths[0]} holds no usable pair")
        info = SplitInfo(role, paths[0].name, split_file(role), 0, lines.skipped_counts, paths[0], paths[-1])
        read[role] = (lines, info)
    train, train_info = read["train"]
    missing = [r for r in ROLES if r not in read]
    order = list(range(len(train.sources)))
    random.Random(seed).shuffle(order)
    need = files.carve_pairs * len(missing)
    if missing and len(order) <= need:
        raise CorpusError(
            f"data.files.train: {len(order)} pairs cannot give {need} pairs to carve out for "
            f"{' and '.join(missing)} (data.files.carve_pairs) and leave any to train on"
        )
    carved: set[int] = set()
    for k, role in enumerate(missing):
        rows = sorted(order[k * files.carve_pairs : (k + 1) * files.carve_pairs])
        carved.update(rows)
        name = f"carved from train (seed {seed}, {files.carve_pairs} pairs)"
        info = replace(train_info, role=role, name=name, path=split_file(role), skipped={})
        read[role] = (_pick(train, rows[: data.max_eval_pairs]), info)
    keep = [i for i in range(len(train.sources)) if i not in carved][: data.max_train_pairs]
    read["train"] = (_pick(train, keep, train.skipped), train_info)
    out = {}
    for role, (lines, info) in read.items():
        ids = [f"{info.source_file.name}/{n:07d}" for n in lines.line_numbers]
        out[role] = (_table(ids, lines), replace(info, rows=len(lines.sources)))
    return out


def prepare_splits(
    data: DataSpec, split_file: Callable[[str], Path], mirror: Path | None = None, seed: int = 0
) -> dict[str, SplitInfo]:
    """Every role's split, each written where `split_file(role)` says (the store decides). All are read and
    validated before any is written: a bad test split leaves no train split of the new spec behind."""
    if data.files is not None:
        read = _read_user_splits(data, split_file, seed)
    else:
        read = {role: _read_split(data, role, split_file(role), mirror) for role in ROLES}
    for table, info in read.values():
        with atomic_path(info.path) as tmp:
            pq.write_table(table, tmp)
    return {role: info for role, (_, info) in read.items()}
