"""The branch point: what a branch reads from its parent, pinned by content hash when the branch is made
and checked before every step, so a branch never trains on a parent that changed under it."""

from __future__ import annotations

import hashlib

from rest_pipeline.core.store.keeper import RecordKeeper
from rest_pipeline.core.store.layout import BASE, BranchError, _grow_of
from rest_pipeline.core.store.records import BranchRecord


class BranchPins(RecordKeeper):
    """Pin and verify the parent's files a branch reads (a no-op role for a store without a parent)."""

    def parent_fingerprint(self) -> dict[str, str]:
        """Content hashes of everything a branch reads from its parent, by path relative to the branch."""
        if self.parent is None:
            raise BranchError(f"{self.root}: not a branch")
        p = self.parent
        files = [p.split_file(r) for r in ("train", "valid", "test")]
        files += sorted(f for f in p.tokenizer_dir.glob("*") if f.is_file())
        files += [p.base_policy_dir / "model.safetensors", p._evaluation_file(BASE)]
        files += sorted(f for f in (p.reward_model_dir / "checkpoints").glob("*.ckpt"))
        files += [f for f in p.candidate_files() + p.score_files() if _grow_of(f) <= self.branch_grow]
        files += [p._step_file(g, i) for g, i in p._step_names() if g < self.branch_grow]
        missing = [self.rel(f) for f in files if not f.is_file()]
        if missing:
            raise BranchError(
                f"{self.experiment} branches from {p.experiment} at grow_{self.branch_grow}, but the parent does "
                f"not hold {', '.join(missing[:5])}: materialize it first "
                f"(`./scripts/rest main {p.experiment} --until grow_{self.branch_grow}/rewards`)"
            )
        return {self.rel(f): hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in files}

    def pin_parent(self) -> BranchRecord:
        """Record what the branch reads from its parent; an existing pin must still hold."""
        if self._branch_file().is_file():
            return self.verify_parent()
        record = BranchRecord(
            parent=self.parent.experiment if self.parent else "",
            at_grow=self.branch_grow,
            hashes=self.parent_fingerprint(),
        )
        self._write(self._branch_file(), record)
        return record

    def verify_parent(self) -> BranchRecord:
        """The branch's pin, after checking that the parent still holds exactly what was pinned."""
        pin = self._read(self._branch_file(), BranchRecord, f"the branch point of {self.experiment} (branch_point)")
        now = self.parent_fingerprint()
        changed = sorted(k for k in pin.hashes.keys() & now.keys() if pin.hashes[k] != now[k])
        gone, new = sorted(pin.hashes.keys() - now.keys()), sorted(now.keys() - pin.hashes.keys())
        if changed or gone or new:
            parts = [f"changed: {', '.join(changed)}" if changed else "", f"gone: {', '.join(gone)}" if gone else ""]
            parts.append(f"new: {', '.join(new)}" if new else "")
            raise BranchError(
                f"{self.experiment}: its parent {pin.parent} changed since the branch was made at "
                f"grow_{pin.at_grow} ({'; '.join(x for x in parts if x)}). The branch's results no longer follow "
                f"from the parent; delete {self.root} to branch again from the parent as it is now"
            )
        return pin
