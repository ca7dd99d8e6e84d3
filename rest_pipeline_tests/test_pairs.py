"""Training pairs streamed from a slice's Parquet a row group at a time: the same pairs whatever the
chunking, a seeded chunk order per epoch, learning, and an exact resume across chunks."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from rest_pipeline.core.training.pairs import SlicePairs, TrainingPairs
from rest_pipeline.core.training.trainer import train_policy
from rest_pipeline.spec import BCSpec
from rest_pipeline_tests.synthetic import pairs, tiny_model, tokenizer_dir

SPEC = BCSpec(
    max_tokens=200,
    epochs=100,
    max_steps=120,
    lr=5e-3,
    warmup_steps=20,
    validate_every_steps=60,
    validate_pairs=20,
    save_every_steps=10,
    average_last=1,
    label_smoothing=0.0,
)


def slice_file(path: Path, n: int, row_group: int) -> Path:
    src, tgt = pairs(n, seed=1)
    table = pa.table(
        {
            "source": src,
            "hypothesis": tgt,
            "reward": [0.5 + (i % 7) / 20 for i in range(n)],
            "origin": ["sample" if i % 3 else "reference" for i in range(n)],
            "source_mean_reward": [0.6] * n,
        }
    )
    pq.write_table(table, path, row_group_size=row_group)
    return path


def test_a_slice_is_the_same_pairs_however_it_is_chunked(tmp_path):
    one = SlicePairs(slice_file(tmp_path / "one.parquet", 300, 1000))
    five = SlicePairs(slice_file(tmp_path / "five.parquet", 300, 64))
    assert len(one) == len(five) == 300
    assert len(list(five.chunks(seed=1, epoch=0))) == 5
    assert one.content_hash() == five.content_hash() == five.in_memory().content_hash()
    assert one.content_hash(with_signals=False) != one.content_hash()
    held = five.in_memory()
    assert held.signals.is_sample[:3] == [False, True, True] and held.signals.baselines[0] == pytest.approx(0.6)
    # Chunk order: a pure function of (seed, epoch), different from epoch to epoch.
    first = [c.sources[0] for c in five.chunks(seed=1, epoch=0)]
    assert first == [c.sources[0] for c in five.chunks(seed=1, epoch=0)]
    assert any(first != [c.sources[0] for c in five.chunks(seed=1, epoch=e)] for e in range(1, 4))
    changed = TrainingPairs(held.texts[0], held.texts[1][:-1] + ["x"], held.signals)
    assert changed.content_hash() != held.content_hash()


def run(work: Path, tok: Path, data, stop_at: int | None = None):
    torch.set_num_threads(1)
    model, tk = tiny_model(tok)

    def log(message: str) -> None:
        if stop_at is not None and f"step {stop_at}/" in message:
            raise KeyboardInterrupt  # a Ctrl-C between two resume points

    return train_policy(model, tk, data, pairs(20, seed=2), SPEC, work, seed=5, max_length=32, fingerprint="f", log=log)


def test_a_streamed_slice_trains_and_resumes_exactly_across_chunks(tmp_path):
    tok = tokenizer_dir(tmp_path)
    path = slice_file(tmp_path / "slice.parquet", 300, 64)
    ref = run(tmp_path / "ref", tok, SlicePairs(path))
    assert ref.steps == SPEC.max_steps
    assert ref.history[-1]["valid_loss"] < ref.history[0]["valid_loss"]  # it learns from the chunks
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", tok, SlicePairs(path), stop_at=100)
    assert torch.load(tmp_path / "cut" / "last" / "trainer_state.pt", weights_only=True)["step"] == 90
    resumed = run(tmp_path / "cut", tok, SlicePairs(path))
    assert resumed.steps == SPEC.max_steps
    a = load_file(str(tmp_path / "ref" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
