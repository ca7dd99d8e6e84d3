"""`rest verify` reads every artifact through; the check before each `rest main` reads files above a size
by their structure only, so a multi-GB checkpoint does not cost a full read per run."""

import os

from rest_pipeline.core import verify
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline_tests.synthetic import pairs


def test_quick_mode_checks_big_files_by_structure_and_full_mode_reads_them_through(tmp_path, monkeypatch):
    store = ExperimentStore(tmp_path / "exp")
    src, ref = pairs(400, seed=2)
    store.write_candidates(
        experiment="t", grow=1, shard=0, source_ids=[f"s{i}" for i in range(400)], sources=src, references=ref,
        samples=[[r, r + " x", r.upper()] for r in ref], policy="p", decoding="d",
    )  # fmt: skip
    path = store.candidates_file(1, 0)
    data = bytearray(path.read_bytes())
    middle = len(data) // 3
    data[middle : middle + 256] = os.urandom(256)  # inside the data pages; the footer stays whole
    path.write_bytes(bytes(data))
    assert [d.path for d in verify.verify_store(store)] == [path]
    assert [d.path for d in verify.verify_store(store, quick=True)] == [path]  # small: read through anyway
    monkeypatch.setattr(verify, "QUICK_LIMIT", 1024)  # as if the shard were an LLM-sized file
    assert verify.verify_store(store, quick=True) == []
    assert [d.path for d in verify.verify_store(store)] == [path]
    path.write_bytes(bytes(data[: len(data) // 2]))  # a truncated one: its footer is gone, found either way
    assert [d.path for d in verify.verify_store(store, quick=True)] == [path]
