"""Typed records in and out of JSON files: written atomically, validated on read, refused when written
by another schema version (with what to re-materialize), and re-rooted when a branch reads its parent's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from rest_pipeline.core.paths import atomic_path
from rest_pipeline.core.store.layout import ExperimentLayout
from rest_pipeline.core.store.records import (
    SCHEMA_VERSION,
    CorpusRecord,
    DecodingEval,
    Evaluation,
    Record,
    SliceRecord,
    StepRecord,
)

R = TypeVar("R", bound=Record)


class StaleRecordError(RuntimeError):
    """A record written by another version of rest-pipeline: re-materialize the asset that writes it."""


class RecordKeeper(ExperimentLayout):
    """Reads and writes typed records at the layout's paths (`_write`, `_read`, `_reusable`) and re-roots
    a parent's records for a branch (`_adopt`)."""

    # -- the generic API: one way to put, get and check every record type ---------------------------
    def put(self, record: Record) -> Path:
        """Write `record` atomically where its type and ADDRESS fields say."""
        return self._write(self.record_file(type(record), **self._address(type(record), record)), record)

    def get(self, cls: type[R], **address: object) -> R:
        """The record of type `cls` at `address`, validated (a branch reads what its parent holds)."""
        address = self._address(cls, None, **address)
        if self._parent_holds(cls, address):
            return self._adopt(self.parent.get(cls, **address))
        return self._read(self.record_file(cls, **address), cls, cls.WHAT.format(**address))

    def find(self, cls: type[R], **address: object) -> R | None:
        """Like `get`, or None when the record was never written."""
        try:
            return self.get(cls, **address)
        except FileNotFoundError:
            return None

    def reusable(self, cls: type[R], key: str | None = None, **address: object) -> R | None:
        """A current record to reuse (with this `key`, when records of the type carry one); a missing,
        stale or broken one is simply redone."""
        address = self._address(cls, None, **address)
        if self._parent_holds(cls, address):
            return self.parent.reusable(cls, key, **address)
        rec = self._reusable(self.record_file(cls, **address), cls)
        return rec if rec is not None and (key is None or getattr(rec, "key", None) == key) else None

    def exists(self, cls: type[Record], **address: object) -> bool:
        """Whether a current record of `cls` is there to read."""
        return self.reusable(cls, None, **address) is not None

    def _address(self, cls: type[Record], record: Record | None, **address: object) -> dict[str, object]:
        if record is not None:
            address = {k: getattr(record, k) for k in cls.ADDRESS}
        missing = [k for k in cls.ADDRESS if k not in address]
        if missing or set(address) - set(cls.ADDRESS):
            raise TypeError(f"{cls.__name__} is addressed by {cls.ADDRESS}, got {tuple(address)}")
        return {k: address[k] for k in cls.ADDRESS}

    def _parent_holds(self, cls: type[Record], address: dict[str, object]) -> bool:
        """Whether a branch reads this record from its parent (the store decides per type)."""
        return False

    def _write(self, path: Path, record: Record) -> Path:
        self.check_writable(path)
        with atomic_path(path) as tmp:
            tmp.write_text(record.model_dump_json(indent=1))
        return path

    def _read(self, path: Path, cls: type[R], what: str) -> R:
        """A record, validated; a record of another schema version is refused, never misread."""
        if not path.is_file():
            raise FileNotFoundError(f"{path}: {what} not materialized")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StaleRecordError(
                f"{path}: damaged, not JSON ({e}); `./scripts/rest main {self.experiment}` moves it aside and "
                f"re-makes {what}"
            ) from None
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != SCHEMA_VERSION:
            raise StaleRecordError(
                f"{path}: written by another rest-pipeline version (record schema {version}, this version "
                f"reads {SCHEMA_VERSION}); re-materialize {what} (`./scripts/rest main {self.experiment}` "
                "does: training resumes from its saved results, evaluations are recomputed)"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise StaleRecordError(f"{path}: not a valid {cls.__name__} record ({e.error_count()} errors): {e}") from e

    def _adopt(self, record: R) -> R:
        """A parent's record with its paths re-rooted to this folder (records hold relative paths)."""

        def move(p: str | None) -> str | None:
            return None if p is None else self.rel(self.parent.resolve(p))

        if isinstance(record, StepRecord):
            names = ("checkpoint", "trained_checkpoint", "parent_checkpoint", "grow_policy", "slice_path")
            return record.model_copy(update={n: move(getattr(record, n)) for n in names})
        if isinstance(record, Evaluation):
            splits = {k: v.model_copy(update={"hypotheses": move(v.hypotheses)}) for k, v in record.splits.items()}
            return record.model_copy(update={"checkpoint": move(record.checkpoint), "splits": splits})
        if isinstance(record, DecodingEval):
            rows = [r.model_copy(update={"hypotheses": move(r.hypotheses)}) for r in record.rows]
            return record.model_copy(update={"checkpoint": move(record.checkpoint), "rows": rows})
        if isinstance(record, SliceRecord):
            return record.model_copy(update={"path": move(record.path)})
        if isinstance(record, CorpusRecord):
            splits = {k: v.model_copy(update={"file": move(v.file)}) for k, v in record.splits.items()}
            return record.model_copy(update={"splits": splits})
        return record

    def _reusable(self, path: Path, cls: type[R]) -> R | None:
        """A record to reuse if it is there and current; a missing, stale or broken one is simply redone."""
        try:
            return self._read(path, cls, cls.__name__)
        except (FileNotFoundError, StaleRecordError, json.JSONDecodeError):
            return None
