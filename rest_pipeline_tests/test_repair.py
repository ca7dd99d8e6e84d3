"""Damaged artifacts, as a user meets them, on one smoke run: a write that fails part-way (a file-size limit
on the process), then tables, records, checkpoints and the reward model truncated, garbled or deleted.
Commands that do not read a damaged file keep working; those that do name it; `rest main` names each one,
moves it aside and re-makes it, and its report equals the undamaged run's. Real processes, a real store."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline_tests.test_reliability import _assert_store_whole, _env

ROOT = Path(__file__).resolve().parent.parent


def rest(env: dict, *args: str, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    def limited() -> None:  # writes past the limit fail with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        [sys.executable, "-m", "rest_pipeline.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        preexec_fn=limited if limit_bytes else None, timeout=1200,
    )  # fmt: skip


def truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def garble(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = os.urandom(64)
    path.write_bytes(bytes(data))
    return path


def report(store: ExperimentStore) -> dict:
    return json.loads((store.report_dir / "report.json").read_text())


@pytest.mark.slow
def test_damaged_artifacts_are_named_moved_aside_and_re_made_to_the_same_report(tmp_path, data_dir):
    env = _env(tmp_path / "home", data_dir)
    store = ExperimentStore(tmp_path / "home" / "experiments" / "smoke")

    # A write that fails part-way (the reward model's checkpoint is the first file over 4 MB): the run
    # fails, what was written before stays readable, and the next run completes.
    cut = rest(env, "main", "smoke", limit_bytes=4 << 20)
    assert cut.returncode != 0
    assert rest(env, "verify", "smoke").returncode == 0  # nothing half-written is left where it is read
    whole = rest(env, "main", "smoke")
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    _assert_store_whole(store)
    reference = report(store)

    # A damaged record never blocks a command that does not read it; one that reads it names it.
    step_record = store.improve_dir(1, 1) / "step.json"
    step_record.write_text("garbage {")
    counted = rest(env, "query", "select count(*) AS n from candidates", "--experiment", "smoke")
    assert counted.returncode == 0 and "Traceback" not in counted.stderr, counted.stderr
    lineage = rest(env, "lineage", "smoke/grow_1/improve_1")
    assert lineage.returncode == 2 and str(step_record) in lineage.stderr and "Traceback" not in lineage.stderr
    # Tables and records, truncated, garbled, emptied.
    damaged = [
        step_record,
        truncate(store.candidates_file(1, 0)),
        garble(store.scores_file("learned", 2, 1)),
        truncate(store.slice_dir(1, 1) / "part.parquet"),
        store.slice_dir(2, 1) / "slice.json",
        store.corpus_dir / "corpus.json",
        store.eval_dir("base") / "summary.json",
    ]
    damaged[4].write_text("{}")
    damaged[5].write_bytes(b"\xff\xfe not json")
    damaged[6].write_text("[1, 2")
    dup = rest(env, "query", "duplicate_rate", "--experiment", "smoke")  # reads the truncated shard
    assert dup.returncode == 2 and "Traceback" not in dup.stderr and str(damaged[1]) in dup.stderr
    assert "rest verify smoke" in dup.stderr
    found = rest(env, "verify", "smoke")
    assert found.returncode == 1 and all(str(p) in found.stdout for p in damaged), found.stdout
    again = rest(env, "main", "smoke")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for path in damaged:
        assert f"rest: {path}: " in again.stdout and "moved aside to" in again.stdout, (path, again.stdout[-3000:])
    assert report(store) == reference
    assert len(list((store.root / "damaged").rglob("*.parquet"))) == 3  # kept for inspection

    # Models: an Improve checkpoint's weights truncated, another's folder deleted, the reward model garbled.
    link = json.loads((store.root / "reward_model.json").read_text())
    reward_ckpt = store.resolve(link["path"]) / "checkpoints" / "model.ckpt"
    truncate(store.improve_dir(1, 1) / "training" / "best" / "model.safetensors")
    shutil.rmtree(store.improve_dir(2, 1) / "training" / "best")
    garble(reward_ckpt)
    models = rest(env, "main", "smoke")
    assert models.returncode == 0, models.stdout[-3000:] + models.stderr[-3000:]
    assert "model.safetensors: not a readable safetensors file" in models.stdout
    assert "model.ckpt: " in models.stdout and "moved aside" in models.stdout
    assert report(store) == reference
    assert rest(env, "verify", "smoke").returncode == 0
    _assert_store_whole(store)
