"""Small helpers that turn core results into Dagster metadata a person wants to look at."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from rest_pipeline.core import tables


def md_table(rows: Sequence[dict], columns: Sequence[str] | None = None, max_chars: int = 120) -> dg.MetadataValue:
    """A Markdown table the UI renders (the same renderer as the report's)."""
    return dg.MetadataValue.md(tables.md_table(rows, columns, max_chars) if rows else "_empty_")


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def histogram_md(values_by_label: dict[str, Sequence[float]], title: str, bins: int = 20) -> dg.MetadataValue:
    """A small PNG histogram embedded in Markdown (the UI renders data URIs)."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6), dpi=90)
    for label, values in values_by_label.items():
        ax.hist(list(values), bins=bins, range=(0, 1), alpha=0.6, label=label)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("reward")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{data})")
