"""The chain of an Improve checkpoint back to the BC policy, read from the candidate store's
lineage table (so it works without Dagster) and rendered for people."""

from __future__ import annotations

import re

import pandas as pd

from rest_pipeline.core.store.candidates import CandidateStore
from rest_pipeline.spec import ExperimentSpec

COLUMNS = [
    "grow",
    "step",
    "status",
    "parent",
    "checkpoint_hash",
    "checkpoint",
    "parent_hash",
    "slice_rule",
    "slice_parameter",
    "slice_kept",
    "slice_kept_fraction",
    "slice_path",
    "grow_policy",
    "grow_decoding",
    "reward_model",
    "reward_version",
    "corpus_hash",
    "loss",
    "lr",
    "parent_valid_reward",
    "valid_reward",
    "skip_reason",
]


def parse_checkpoint(name: str) -> tuple[int, int] | None:
    """'grow_2/improve_3' -> (2, 3); '' or 'final' -> None (the experiment's last checkpoint)."""
    if name in ("", "final"):
        return None
    m = re.fullmatch(r"grow_(\d+)/improve_(\d+)", name.strip("/"))
    if not m:
        raise ValueError(f"checkpoint '{name}': expected grow_<g>/improve_<i> or 'final'")
    return int(m.group(1)), int(m.group(2))


def store_chain(store: CandidateStore, spec: ExperimentSpec, grow: int, step: int) -> pd.DataFrame:
    """Rows of the lineage table from (grow, step) back to grow 1 step 1, newest first."""
    from rest_pipeline.core.improve.step import parent_of

    con = store.connect()
    names = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    if "lineage" not in names:
        raise FileNotFoundError(f"{store.root}: no lineage table yet (no Improve step materialized)")
    table = con.execute("SELECT * FROM lineage").df()
    rows = []
    while grow > 0:
        hit = table[(table.grow == grow) & (table.step == step)]
        if hit.empty:
            raise FileNotFoundError(f"{store.root}: no lineage row for grow_{grow}/improve_{step}")
        rows.append(hit.iloc[0])
        grow, step = parent_of(spec, grow, step)
    return pd.DataFrame(rows)[[c for c in COLUMNS if c in table.columns]].reset_index(drop=True)


def render(chain: pd.DataFrame, base_checkpoint: str, base_hash: str) -> str:
    lines = []
    for r in chain.itertuples():
        lines.append(f"grow_{r.grow}/improve_{r.step}  [{r.status}]  checkpoint {r.checkpoint_hash}  {r.checkpoint}")
        if isinstance(r.skip_reason, str) and r.skip_reason:
            lines.append(f"    skipped: {r.skip_reason}")
        lines.append(
            f"    slice: {r.slice_rule} {r.slice_parameter:g} -> {r.slice_kept} pairs "
            f"({r.slice_kept_fraction:.1%} of samples)  {r.slice_path}"
        )
        lines.append(f"    parent: {r.parent} ({r.parent_hash}); fine-tuning loss {r.loss}, lr {r.lr:.2e}")
        lines.append(f"    validation reward: parent {r.parent_valid_reward} -> {r.valid_reward}")
        lines.append(f"    grow {r.grow}: sampled by {r.grow_policy} with {r.grow_decoding}")
        lines.append(f"    reward: {r.reward_model} ({r.reward_version}); corpus {r.corpus_hash}")
    lines.append(f"base (BC policy)  checkpoint {base_hash}  {base_checkpoint}")
    return "\n".join(lines)
