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


def _split_lines(path: Path) -> list[bytes]:
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
    src_raw, tgt_raw = _split_lines(source), _split_lines(target)
    if len(src_raw) != len(tgt_raw):
        raise CorpusError(f"misaligned corpus: {source} has {len(src_raw)} lines but {target} has {len(tgt_raw)}")
    if expected_lines is not None and len(src_raw) != expected_lines:
        raise CorpusError(f"{source}: expected {expected_lines} lines (registry), found {len(src_raw)}")

    out = ParallelLines([], [], [])

    def bad(reason: str, action: str, where: str, detail: str) -> None:
        if action == "reject":
            raise CorpusError(f"{where}: {detail} (data.lines.{reason}=reject; set it to 'skip' to drop such pairs)")
        out.skipped.setdefault(reason, []).append(where)

    for i, (s_b, t_b) in enumerate(zip(src_raw, tgt_raw, strict=True), start=1):
        texts: list[str] = []
        ok = True
        for path, raw in ((source, s_b), (target, t_b)):
            where = f"{path}:{i}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad("undecodable", policy.undecodable, where, f"invalid UTF-8 at byte {e.start}")
                ok = False
                break
            if not text.strip():
                bad("empty", policy.empty, where, "empty or whitespace-only line")
                ok = False
                break
            if len(text) > policy.max_chars:
                bad(
                    "overlong",
                    policy.overlong,
                    where,
                    f"line has {len(text)} characters (max_chars={policy.max_chars})",
                )
                ok = False
                break
            texts.append(text.strip())
        if not ok:
            continue
        out.line_numbers.append(i)
        out.sources.append(texts[0])
        out.targets.append(texts[1])
        if limit is not None and len(out.sources) >= limit:
            break
    return out
