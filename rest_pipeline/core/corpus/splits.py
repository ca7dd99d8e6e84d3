"""Turn a registered dataset into validated Parquet splits with stable source ids."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rest_pipeline.core.corpus.fetch import fetch
from rest_pipeline.core.corpus.registry import get_dataset
from rest_pipeline.core.corpus.validate import read_parallel
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


def prepare_splits(
    data: DataSpec, split_file: Callable[[str], Path], mirror: Path | None = None
) -> dict[str, SplitInfo]:
    """Every role's split, each written where `split_file(role)` says (the store decides). All are read and
    validated before any is written: a bad test split leaves no train split of the new spec behind."""
    read = {role: _read_split(data, role, split_file(role), mirror) for role in ROLES}
    for table, info in read.values():
        with atomic_path(info.path) as tmp:
            pq.write_table(table, tmp)
    return {role: info for role, (_, info) in read.items()}
