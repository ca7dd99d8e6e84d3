"""A user's own parallel corpus from files: TSV, JSONL, Parquet, Hugging Face `datasets` folders written
by save_to_disk, and plain parallel text. Every pair goes through the same line policy as the registry's
corpora (validate.add_pair), and every defect names the file and line (or row) it was found at.

A hub dataset file is named `hf://datasets/<org>/<name>@<revision>/<file>` and fetched once into the
Hugging Face cache at that revision (where the machine is online). A `datasets` folder is read with
pyarrow from the layout save_to_disk writes (state.json listing Arrow stream files; dataset_dict.json
and one folder per split for a DatasetDict), so the `datasets` package, whose releases conflict with
this environment's pins, is not needed to read one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rest_pipeline.core.corpus.fetch import sha256_of
from rest_pipeline.core.corpus.validate import CorpusError, ParallelLines, add_pair, read_parallel, split_lines
from rest_pipeline.spec import DataFiles, LinePolicy, TextPair

SUFFIXES = {".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
HF_SPLIT_NAMES = {"valid": ("valid", "validation", "dev"), "test": ("test",), "train": ("train",)}


def data_format(path: Path, wanted: str) -> str:
    """The format of one data file: `wanted` unless 'auto', then by suffix (a folder: save_to_disk)."""
    if wanted != "auto":
        return wanted
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return "hf_disk"
        raise CorpusError(f"{path}: a folder, but not one written by datasets' save_to_disk (no state.json)")
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise CorpusError(
            f"{path}: cannot tell the format from the suffix '{path.suffix}'; name it .tsv/.jsonl/.parquet, "
            "set data.files.format, or give {source, target} plain text files"
        )
    return fmt


HUB_PREFIX = "hf://datasets/"


def is_hub(entry: object) -> bool:
    return isinstance(entry, str) and entry.startswith(HUB_PREFIX)


def hub_address(entry: str) -> tuple[str, str, str]:
    """(repo id, revision, file in the repo) of `hf://datasets/<org>/<name>@<revision>/<file>`; the revision
    is required, so the same spec reads the same bytes."""
    rest = entry[len(HUB_PREFIX) :]
    repo, at, tail = rest.partition("@")
    revision, slash, filename = tail.partition("/")
    if not at or not revision or not slash or not filename or repo.count("/") != 1:
        raise CorpusError(
            f"{entry}: a hub dataset file is hf://datasets/<org>/<name>@<revision>/<file in the repo> "
            "(the revision, a commit or tag, is required)"
        )
    return repo, revision, filename


def fetch_hub_file(entry: str) -> Path:
    """A hub dataset file at its pinned revision, from the local Hugging Face cache or downloaded into it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, revision, filename = hub_address(entry)
    try:
        return Path(hf_hub_download(repo, filename, repo_type="dataset", revision=revision))
    except LocalEntryNotFoundError:
        raise CorpusError(
            f"{entry}: not in the local Hugging Face cache, and this machine is offline (HF_HUB_OFFLINE); "
            "run once where online with HF_HUB_OFFLINE=0, or save the file and point data.files at it"
        ) from None
    except Exception as e:  # noqa: BLE001 - the hub's errors (404, revision not found, network) named as they are
        raise CorpusError(f"{entry}: could not be fetched from the hub ({type(e).__name__}: {e})") from None


def local_entry(entry: str | TextPair) -> str | TextPair:
    """The entry with a hub file replaced by its local copy."""
    return str(fetch_hub_file(entry)) if is_hub(entry) else entry


def file_paths(entry: str | TextPair) -> list[Path]:
    """The files one split entry reads (two for a plain text pair)."""
    return [Path(entry)] if isinstance(entry, str) else [Path(entry.source), Path(entry.target)]


def read_files(files: DataFiles, role: str, entry: str | TextPair, policy: LinePolicy, limit: int | None):
    """The clean pairs of one split entry, with each pair's 1-based line (row) number in its file."""
    entry = local_entry(entry)
    if isinstance(entry, TextPair):
        return read_parallel(Path(entry.source), Path(entry.target), policy, limit=limit)
    path = Path(entry)
    fmt = data_format(path, files.format)
    if fmt == "text":
        raise CorpusError(f"data.files.{role}: format 'text' needs a {{source, target}} pair of files, got {path}")
    reader = {"tsv": _read_tsv, "jsonl": _read_jsonl, "parquet": _read_parquet, "hf_disk": _read_hf_disk}[fmt]
    out = ParallelLines([], [], [])
    for number, (where, src), (where_t, tgt) in reader(path, files, role):
        add_pair(out, policy, number, (where, src), (where_t, tgt))
        if limit is not None and len(out.sources) >= limit:
            break
    return out


def content_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents, in name order)."""
    if path.is_file():
        return sha256_of(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path)}\x1f{sha256_of(f)}\x1e".encode())
    return h.hexdigest()


def _text(value: object, where: str, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise CorpusError(f"{where}: field '{field}' is {type(value).__name__}, not text")


def _read_tsv(path: Path, files: DataFiles, role: str):
    """Two columns per line, or a header line naming source_field and target_field among its columns."""
    lines = split_lines(path)
    if not lines:
        raise CorpusError(f"{path}: empty file")
    try:
        head = next(csv.reader(io.StringIO(lines[0].decode("utf-8")), delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError:
        head = []
    if files.source_field in head and files.target_field in head:
        cols, start, width = (head.index(files.source_field), head.index(files.target_field)), 2, len(head)
    else:
        cols, start, width = (0, 1), 1, 2
    for i, raw in enumerate(lines[start - 1 :], start=start):
        where = f"{path}:{i}"
        parts = raw.split(b"\t")
        if len(parts) != width:
            raise CorpusError(
                f"{where}: {len(parts)} tab-separated columns, expected {width} "
                f"({'the header' if start == 2 else 'source<TAB>target'}); a ragged or misaligned line"
            )
        yield i, (where, parts[cols[0]]), (where, parts[cols[1]])


def _read_jsonl(path: Path, files: DataFiles, role: str):
    for i, raw in enumerate(split_lines(path), start=1):
        where = f"{path}:{i}"
        if not raw.strip():
            yield i, (where, None), (where, None)
            continue
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorpusError(f"{where}: not a JSON object ({e})") from None
        if not isinstance(row, dict):
            raise CorpusError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for field in (files.source_field, files.target_field):
            if field not in row:
                raise CorpusError(f"{where}: no field '{field}' (data.files.source_field/target_field)")
        yield (
            i,
            (where, _text(row[files.source_field], where, files.source_field)),
            (where, _text(row[files.target_field], where, files.target_field)),
        )


def _columns(table: pa.Table, path: Path, files: DataFiles):
    """The source and target columns of a table, by the spec's field names."""
    names = table.column_names
    if files.source_field in names and files.target_field in names:
        return table.column(files.source_field).to_pylist(), table.column(files.target_field).to_pylist()
    missing = [f for f in (files.source_field, files.target_field) if f not in names]
    raise CorpusError(f"{path}: no field '{missing[0]}' (columns: {', '.join(names)}; data.files.source_field)")


def _rows(path: Path, label: str, sources: list, targets: list, fields: tuple[str, str]):
    for i, (s, t) in enumerate(zip(sources, targets, strict=True), start=1):
        where = f"{label} row {i}"
        yield i, (where, _text(s, where, fields[0])), (where, _text(t, where, fields[1]))


def _read_parquet(path: Path, files: DataFiles, role: str):
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise CorpusError(f"{path}: not a readable Parquet file ({e})") from None
    yield from _rows(path, str(path), *_columns(table, path, files), (files.source_field, files.target_field))


def _read_hf_disk(path: Path, files: DataFiles, role: str):
    """A Dataset folder, or a DatasetDict folder whose split for `role` is read (train; valid/validation/dev;
    test)."""
    folder = path
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        name = next((n for n in HF_SPLIT_NAMES[role] if n in splits), None)
        if name is None:
            raise CorpusError(f"{path}: a DatasetDict without a '{role}' split (it has {', '.join(splits)})")
        folder = path / name
    try:
        state = json.loads((folder / "state.json").read_text())
        parts = [folder / f["filename"] for f in state["_data_files"]]
        tables = []
        for part in parts:
            with pa.memory_map(str(part)) as source:
                tables.append(pa.ipc.open_stream(source).read_all())
    except (OSError, KeyError, json.JSONDecodeError, pa.ArrowInvalid) as e:
        raise CorpusError(f"{folder}: not a readable save_to_disk folder ({e})") from None
    table = pa.concat_tables(tables) if tables else pa.table({})
    yield from _rows(folder, str(folder), *_columns(table, folder, files), (files.source_field, files.target_field))
