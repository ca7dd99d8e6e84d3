"""Walk an experiment's store and check every artifact by its format: Parquet tables read through,
records parsed and validated as their type, checkpoints' weight files opened (and hashed where a record
holds their hash), resume points and the reward model's checkpoint checked as zip archives.

`repair` moves each damaged artifact aside, under `<experiment>/damaged/<time>/` (kept for inspection),
with what must be re-made beside it: a checkpoint takes its whole training folder (the next run trains
it again from the start, deterministically), a shared BC or reward model its whole content-addressed
folder. What was moved is then simply missing, and `rest main` re-makes it and what depends on it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from pydantic import ValidationError
from safetensors import safe_open

from rest_pipeline.core.policy.model import weight_files, weights_hash
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.records import (
    SCHEMA_VERSION,
    BestOfN,
    ControlRecord,
    CorpusRecord,
    DecodingEval,
    Evaluation,
    Record,
    Report,
    SliceRecord,
    StepRecord,
)


@dataclass(frozen=True)
class Damage:
    path: Path  # the damaged file
    why: str
    moves: Path  # what repair moves aside (the file, or the folder that must be re-made with it)


def _record_type(store: ExperimentStore, path: Path) -> type[Record] | None:
    """The record type of a JSON file, by the names the store's layout gives its records."""
    if path in (store._control_file(), store._decoding_eval_file()):
        return ControlRecord if path == store._control_file() else DecodingEval
    by_name = {
        store._corpus_file().name: CorpusRecord,
        store._step_file(1, 1).name: StepRecord,
        store._slice_file(1, 1).name: SliceRecord,
        store._best_of_n_file().name: BestOfN,
        store._report_file().name: Report,
        store._evaluation_file("base").name: Evaluation,
    }
    return by_name.get(path.name) if path.is_relative_to(store.root) else None


def _check_json(store: ExperimentStore, path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"not JSON ({e})"
    cls = _record_type(store, path)
    if cls is None:
        return None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        return f"not a {cls.__name__} record of this version (schema {SCHEMA_VERSION})"
    try:
        cls.model_validate(data)
    except ValidationError as e:
        return f"not a valid {cls.__name__} record ({e.error_count()} errors)"
    return None


# `rest main` checks every artifact before it runs; a file above this size it checks by its structure only
# (a Parquet footer, a zip's directory), so a multi-GB LLM checkpoint does not cost a full read each run.
# `rest verify` reads everything.
QUICK_LIMIT = 256 << 20


def _check_parquet(path: Path, quick: bool) -> str | None:
    try:
        file = pq.ParquetFile(path)
        if not (quick and path.stat().st_size > QUICK_LIMIT):
            for _ in file.iter_batches(batch_size=65_536):
                pass
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file; each is damage
        return f"not a readable Parquet file ({type(e).__name__}: {str(e)[:120]})"
    return None


def _check_safetensors(path: Path) -> str | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                f.get_slice(name)
    except Exception as e:  # noqa: BLE001 - a header or size mismatch, whatever the library calls it
        return f"not a readable safetensors file ({type(e).__name__}: {str(e)[:120]})"
    return None


def _check_zip(path: Path, quick: bool) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            bad = None if quick and path.stat().st_size > QUICK_LIMIT else z.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        return f"not a readable checkpoint archive ({e})"
    return f"archive member {bad} is corrupt" if bad else None


def _training_folder(path: Path) -> Path:
    """What must be re-made with a damaged checkpoint file: its training folder (best/, last/, history)."""
    for parent in path.parents:
        if parent.name in ("best", "last", "snapshots"):
            return parent.parent
        if parent.name == "base" and parent.parent.name == "policies":
            return parent
    return path.parent


def _roots(store: ExperimentStore) -> list[tuple[Path, bool]]:
    """(folder, shared): the experiment's own, and the content-addressed BC and reward model it links to."""
    roots = [(store.root, False)]
    link = store.bc_policy_link() if (store.root / "bc_policy.json").is_file() else None
    if link is not None:
        roots.append((Path(os.path.normpath(store.resolve(link.path))), True))
    reward = store.reward_model_dir
    if reward.is_dir() and store.root not in reward.parents:
        roots.append((reward, True))
    return roots


def verify_store(store: ExperimentStore, quick: bool = False) -> list[Damage]:
    """Every damaged artifact of the experiment (and of the shared models it uses); [] when all is well.
    `quick` (before each `rest main`): files over QUICK_LIMIT by their structure, weights not re-hashed."""
    found: list[Damage] = []
    for root, shared in _roots(store):
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).parts
            # damaged/: already moved aside; dot-names: a write in progress (atomic_path) or DuckDB's spill
            if not path.is_file() or rel[:1] == ("damaged",) or any(p.startswith(".") for p in rel):
                continue
            why = None
            if path.suffix == ".json":
                why = _check_json(store, path)
            elif path.suffix == ".parquet":
                why = _check_parquet(path, quick)
            elif path.suffix == ".safetensors":
                why = _check_safetensors(path)
            elif path.suffix in (".pt", ".ckpt"):
                why = _check_zip(path, quick)
            if why is None:
                continue
            if shared:
                moves = root
            elif path.suffix in (".safetensors", ".pt"):
                moves = _training_folder(path)
            elif path.name == "history.json":
                moves = path.parent  # a training's result: train again
            else:
                moves = path
            found.append(Damage(path, why, moves))
    found += _hash_mismatches(store, {d.moves for d in found}, quick)
    return found


def _hash_mismatches(store: ExperimentStore, moving: set[Path], quick: bool = False) -> list[Damage]:
    """Checkpoints whose weights no longer hash to what their step record says (a silently changed file)."""
    out = []
    for path in sorted(store.root.glob("policies/grow_*/improve_*/step.json")):
        try:
            step = StepRecord.model_validate_json(path.read_text())
        except (ValidationError, ValueError):
            continue
        if not step.trained_checkpoint or step.status != "improved":
            continue
        ckpt = store.resolve(step.checkpoint)
        if any(m == ckpt or m in ckpt.parents for m in moving):
            continue
        if not ckpt.is_dir():
            out.append(Damage(ckpt, f"missing, though {path} names it", ckpt.parent))
            continue
        if quick and sum(f.stat().st_size for f in weight_files(ckpt)) > QUICK_LIMIT:
            continue  # an LLM's gigabytes are re-hashed by `rest verify`, not before every run
        if weights_hash(ckpt) != step.checkpoint_hash:
            out.append(Damage(ckpt, f"weights do not hash to {step.checkpoint_hash} (its step record)", ckpt.parent))
    return out


def repair(store: ExperimentStore, damage: list[Damage]) -> list[tuple[Path, Path]]:
    """Move each damaged artifact (with what must be re-made beside it) under damaged/<time>/; returns
    (from, to) pairs. Nothing is deleted."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    moved: list[tuple[Path, Path]] = []
    home = store.root.parent.parent  # <home>/experiments/<name>
    for d in damage:
        src = d.moves
        if not src.exists() or any(src == m or m in src.parents for m, _ in moved):
            continue
        base = store.root if store.root in src.parents else home
        dest = store.root / "damaged" / stamp / src.relative_to(base)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dest))
        moved.append((src, dest))
    return moved
