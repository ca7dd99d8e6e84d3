"""Ratings as they arrive: one immutable Parquet file per rated item, written atomically.

Closing the browser or killing the server loses at most the item being rated; a rater who comes
back resumes at the first item they have not rated. Each rater's submissions go through a file lock,
so a double submit (two tabs, a retried request) is refused instead of stored twice, while two
raters write side by side without waiting on each other.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock

from rest_pipeline.core.human.rounds import round_items
from rest_pipeline.core.paths import atomic_path
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.side_records import RatingRound

PAGE_VERSION = "rate-v1"
SCALE = range(0, 7)  # the paper's 0-6 side-by-side scale
LABELS = "ABCDEFGH"
RATER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
SCHEMA = pa.schema(
    [
        ("round", pa.string()),
        ("rater", pa.string()),
        ("item", pa.int32()),
        ("system", pa.string()),
        ("score", pa.int8()),
        ("time", pa.timestamp("ms", tz="UTC")),
        ("comment", pa.string()),
        ("page_version", pa.string()),
        ("submission", pa.string()),
    ]
)


class RatingError(ValueError):
    """A rating the store refuses; `status` is the HTTP status the page gets."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ItemView:
    """What a rater sees of an item: no system names, only labels in the item's own order."""

    index: int
    source: str
    translations: list[tuple[str, str]]  # (label, text)


class RatingBook:
    """The ratings of one round: what is there, what comes next for a rater, and appending more."""

    def __init__(self, store: ExperimentStore, record: RatingRound):
        self.store, self.round = store, record
        self.items = round_items(store, record)
        self.dir = store.ratings_dir(record.round_id)

    def _order(self, item: int) -> list[str]:
        """The item's systems in display order (label A is the first)."""
        return [self.round.systems[i] for i in json.loads(self.items.order.iat[item])]

    def view(self, item: int) -> ItemView:
        row = self.items.iloc[item]
        order = json.loads(row.order)
        return ItemView(item, row.source, [(LABELS[k], row[f"hyp_{i}"]) for k, i in enumerate(order)])

    @staticmethod
    def check_rater(rater: str) -> str:
        if not RATER.match(rater or ""):
            raise RatingError(f"rater name '{rater}' must be 1-40 letters, digits, '.', '_' or '-'")
        return rater

    def rated(self, rater: str) -> set[int]:
        folder = self.dir / f"rater={self.check_rater(rater)}"
        return {int(p.name.split("-", 1)[0]) for p in folder.glob("*.parquet")}

    def next_item(self, rater: str, after: int = -1) -> int | None:
        """The first item this rater has not rated, after `after` (skipped ones come round again)."""
        done = self.rated(rater)
        todo = [i for i in range(self.round.items) if i not in done]
        if not todo:
            return None
        later = [i for i in todo if i > after]
        return later[0] if later else todo[0]

    def rate(self, rater: str, item: int, scores: dict[str, object], comment: str = "") -> pd.DataFrame:
        """Store one item's ratings (label -> 0..6), all systems at once; the rows stored."""
        rater = self.check_rater(rater)
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < self.round.items:
            raise RatingError(
                f"unknown item {item!r}: round {self.round.round_id} has items 0-{self.round.items - 1}", 404
            )
        order = self._order(item)
        labels = LABELS[: len(order)]
        if set(scores) != set(labels):
            raise RatingError(f"item {item} needs a score for each of {', '.join(labels)}, got {sorted(scores)}")
        for label, score in scores.items():
            if isinstance(score, bool) or not isinstance(score, int) or score not in SCALE:
                raise RatingError(f"score for {label} must be an integer from 0 to 6, got {score!r}")
        if not isinstance(comment, str) or len(comment) > 2000:
            raise RatingError("comment must be text of at most 2000 characters")
        folder = self.dir / f"rater={rater}"
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / ".lock")):
            if item in self.rated(rater):
                raise RatingError(f"item {item} is already rated by {rater}: nothing stored twice", 409)
            submission = uuid.uuid4().hex
            now = datetime.now(timezone.utc)
            rows = pa.table(
                {
                    "round": [self.round.round_id] * len(order),
                    "rater": [rater] * len(order),
                    "item": [item] * len(order),
                    "system": order,
                    "score": [scores[label] for label in labels],
                    "time": [now] * len(order),
                    "comment": [comment] * len(order),
                    "page_version": [PAGE_VERSION] * len(order),
                    "submission": [submission] * len(order),
                },
                schema=SCHEMA,
            )
            with atomic_path(folder / f"{item:05d}-{submission}.parquet") as tmp:
                pq.write_table(rows, tmp)
        return rows.to_pandas()


def all_ratings(store: ExperimentStore) -> pd.DataFrame:
    """Every rating of the experiment, all rounds (the `ratings` view reads the same files)."""
    files = sorted(store.human_dir.glob("ratings/round=*/rater=*/*.parquet"))
    if not files:
        return SCHEMA.empty_table().to_pandas()
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
