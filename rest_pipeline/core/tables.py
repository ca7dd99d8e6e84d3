"""Markdown tables for people: the report, the CLI and the UI's metadata all render through this."""

from __future__ import annotations

from collections.abc import Sequence


def md_table(rows: Sequence[dict], columns: Sequence[str] | None = None, max_chars: int | None = None) -> str:
    """A Markdown table of `rows` (dicts); cells are escaped and, if `max_chars` is set, shortened."""
    if not rows:
        return "(none)\n"
    cols = list(columns or rows[0].keys())

    def cell(v: object) -> str:
        text = "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")
        return text if max_chars is None or len(text) <= max_chars else text[: max_chars - 1] + "…"

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
