"""Small helpers that turn core results into Dagster metadata a person wants to look at."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dagster as dg


def md_table(rows: Sequence[dict], columns: Sequence[str] | None = None, max_chars: int = 120) -> dg.MetadataValue:
    """A Markdown table (the UI renders it; no extra dependency needed)."""
    if not rows:
        return dg.MetadataValue.md("_empty_")
    cols = list(columns or rows[0].keys())

    def cell(v: object) -> str:
        text = str(v).replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return dg.MetadataValue.md("\n".join(lines))


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
