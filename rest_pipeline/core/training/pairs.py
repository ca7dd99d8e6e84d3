"""What a trainer trains on: (source, target) pairs with per-pair signals, held in memory or streamed
from a slice's Parquet file in chunks of row groups.

A paper-sized grow (160k sources x 100 samples) keeps millions of pairs; tokenized as Python lists
they would need many GB. So the trainer asks for *chunks*: an in-memory set is one chunk (the batches
are exactly those of the whole set), a Parquet slice is read one row group at a time in a seeded
order per epoch, tokenized and batched within the chunk, so memory is bounded by the chunk size
whatever the slice's size.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch

from rest_pipeline.core.paths import is_remote
from rest_pipeline.core.policy.family import Batch, Forward
from rest_pipeline.core.training.losses import LossBatch


@dataclass
class ExampleSignals:
    """What an Improve loss knows of each training pair besides its text."""

    rewards: list[float]  # R(x, y) under the training reward model
    baselines: list[float]  # mean reward of the behaviour policy's samples of the same source
    is_sample: list[bool]  # drawn from the behaviour (grow) policy; False for original pairs
    behaviour_logprobs: list[list[float]] | None = None  # per target token, for losses that need them

    @classmethod
    def plain(cls, n: int) -> ExampleSignals:
        return cls([1.0] * n, [0.0] * n, [False] * n)

    def batch(self, idx: Sequence[int], out: Forward, b: Batch, progress: float, smoothing: float) -> LossBatch:
        device = out.logits.device

        def pick(values: list, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([values[i] for i in idx], dtype=dtype, device=device)

        labels = b.labels.to(device)
        behaviour = None
        if self.behaviour_logprobs is not None:
            behaviour = torch.zeros(labels.shape, dtype=torch.float32)
            for row, i in enumerate(idx):
                lp = self.behaviour_logprobs[i][: labels.shape[1]]
                behaviour[row, : len(lp)] = torch.tensor(lp)
            behaviour = behaviour.to(device)
        return LossBatch(
            logits=out.logits,
            labels=labels,
            rewards=pick(self.rewards, torch.float32),
            baselines=pick(self.baselines, torch.float32),
            is_sample=pick(self.is_sample, torch.float32),
            encoder_states=out.states,
            encoder_mask=out.states_mask,
            progress=progress,
            label_smoothing=smoothing,
            behaviour_logprobs=behaviour,
        )


@dataclass
class Chunk:
    """Pairs the trainer tokenizes and batches together; `signals` are indexed like the pairs."""

    sources: list[str]
    targets: list[str]
    signals: ExampleSignals


def _hash_update(h: hashlib._Hash, chunk: Chunk, with_signals: bool) -> None:
    """Pair by pair, so the hash does not depend on how the pairs are cut into chunks."""
    sig = chunk.signals
    for i, (s, t) in enumerate(zip(chunk.sources, chunk.targets, strict=True)):
        h.update(f"{s}\x1f{t}".encode())
        if with_signals:
            h.update(f"\x1f{sig.rewards[i]:.6f}\x1f{sig.baselines[i]:.6f}\x1f{int(sig.is_sample[i])}".encode())
        h.update(b"\x1e")


class TrainingPairs:
    """Pairs in memory: one chunk, in the order given."""

    def __init__(self, sources: Sequence[str], targets: Sequence[str], signals: ExampleSignals | None = None):
        if len(sources) != len(targets):
            raise ValueError(f"training pairs: {len(sources)} sources for {len(targets)} targets")
        signals = signals or ExampleSignals.plain(len(sources))
        if len(signals.rewards) != len(sources):
            raise ValueError(f"training pairs: {len(signals.rewards)} example signals for {len(sources)} pairs")
        self._chunk = Chunk(list(sources), list(targets), signals)

    def __len__(self) -> int:
        return len(self._chunk.sources)

    def chunks(self, seed: int, epoch: int) -> Iterator[Chunk]:
        yield self._chunk

    def in_memory(self) -> TrainingPairs:
        return self

    @property
    def signals(self) -> ExampleSignals:
        return self._chunk.signals

    @property
    def texts(self) -> tuple[list[str], list[str]]:
        return self._chunk.sources, self._chunk.targets

    def content_hash(self, with_signals: bool = True) -> str:
        """sha256 of the pairs (and their signals): the same data gives the same hash however it is held."""
        h = hashlib.sha256()
        _hash_update(h, self._chunk, with_signals)
        return h.hexdigest()[:16]


class SlicePairs:
    """An Improve slice streamed from its Parquet file (columns source, hypothesis, reward, origin,
    source_mean_reward): one row group per chunk, the row groups visited in a seeded order per epoch."""

    def __init__(self, path: Path):
        self.path = path
        self._file = pq.ParquetFile(path.open("rb") if is_remote(path) else path)
        self._rows = self._file.metadata.num_rows

    def __len__(self) -> int:
        return self._rows

    def _read(self, group: int) -> Chunk:
        t = self._file.read_row_group(group, columns=["source", "hypothesis", "reward", "origin", "source_mean_reward"])
        d = t.to_pydict()
        signals = ExampleSignals(
            rewards=[float(r) for r in d["reward"]],
            baselines=[float(v) if v is not None else 0.0 for v in d["source_mean_reward"]],
            is_sample=[o == "sample" for o in d["origin"]],
        )
        return Chunk(d["source"], d["hypothesis"], signals)

    def chunks(self, seed: int, epoch: int) -> Iterator[Chunk]:
        groups = list(range(self._file.num_row_groups))
        if len(groups) > 1:
            random.Random(seed * 7_919 + epoch).shuffle(groups)
        for g in groups:
            yield self._read(g)

    def in_memory(self) -> TrainingPairs:
        """Every pair at once (for losses that score all pairs under the behaviour policy first)."""
        parts = [self._read(g) for g in range(self._file.num_row_groups)]
        signals = ExampleSignals(
            [r for p in parts for r in p.signals.rewards],
            [b for p in parts for b in p.signals.baselines],
            [s for p in parts for s in p.signals.is_sample],
        )
        return TrainingPairs([s for p in parts for s in p.sources], [t for p in parts for t in p.targets], signals)

    def content_hash(self, with_signals: bool = True) -> str:
        h = hashlib.sha256()
        for g in range(self._file.num_row_groups):
            _hash_update(h, self._read(g), with_signals)
        return h.hexdigest()[:16]


Pairs = TrainingPairs | SlicePairs
