"""Read a parallel corpus line by line and refuse (or count) every bad pair, by file and line.

The policy for each defect comes from the spec (`data.lines`): `reject` stops with an
error naming the file and 1-based line number, `skip` drops the pair and counts it so the
asset metadata shows exactly how much was dropped and why. Nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rest_pipeline.spec import LinePolicy


class CorpusError(ValueError):
    """A corpus file is malformed under the spec's line policy."""


@dataclass
class ParallelLines:
    line_numbers: list[int]  # 1-based, into the original files
    sources: list[str]
    targets: list[str]
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> ["file:line", ...]

    @property
    def skipped_counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.skipped.items()}


def split_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final newline ends the last line; it does not start a new one
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


def read_parallel(
    source: Path,
    target: Path,
    policy: LinePolicy,
    expected_lines: int | None = None,
    limit: int | None = None,
) -> ParallelLines:
    src_raw, tgt_raw = split_lines(source), split_lines(target)
    if len(src_raw) != len(tgt_raw):
        raise CorpusError(f"misaligned corpus: {source} has {len(src_raw)} lines but {target} has {len(tgt_raw)}")
    if expected_lines is not None and len(src_raw) != expected_lines:
        raise CorpusError(f"{source}: expected {expected_lines} lines (registry), found {len(src_raw)}")

    out = ParallelLines([], [], [])
    for i, (s_b, t_b) in enumerate(zip(src_raw, tgt_raw, strict=True), start=1):
        add_pair(out, policy, i, (f"{source}:{i}", s_b), (f"{target}:{i}", t_b))
        if limit is not None and len(out.sources) >= limit:
            break
    return out


def add_pair(
    out: ParallelLines,
    policy: LinePolicy,
    number: int,
    source: tuple[str, bytes | str | None],
    target: tuple[str, bytes | str | None],
) -> bool:
    """Check one pair (each side: where it was read, its raw bytes or text) under the line policy and keep
    it in `out` if it is clean; `reject` raises naming the place, `skip` counts it."""

    def bad(reason: str, action: str, where: str, detail: str) -> None:
        if action == "reject":
            raise CorpusError(f"{where}: {detail} (data.lines.{reason}=reject; set it to 'skip' to drop such pairs)")
        out.skipped.setdefault(reason, []).append(where)

    texts: list[str] = []
    for where, raw in (source, target):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad("undecodable", policy.undecodable, where, f"invalid UTF-8 at byte {e.start}")
                return False
        if raw is None or not raw.strip():
            bad("empty", policy.empty, where, "empty or whitespace-only line")
            return False
        if len(raw) > policy.max_chars:
            bad("overlong", policy.overlong, where, f"line has {len(raw)} characters (max_chars={policy.max_chars})")
            return False
        texts.append(raw.strip())
    out.line_numbers.append(number)
    out.sources.append(texts[0])
    out.targets.append(texts[1])
    return True
