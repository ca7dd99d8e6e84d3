"""Improve's filter: which candidates of a grow clear this step's bar.

Three rules from the paper's ablation, all evaluated by DuckDB over the candidate store:
a global threshold, a per-source percentile, and a per-source interpolated bar
tau_s = gamma * max_s + (1 - gamma) * mean_s, per-source statistics taken over the samples.
The original pairs can be mixed back in whatever their reward, and repeated outputs of a
source collapsed to one row. A slice is persisted by the store as Parquet (queryable beside the
candidates) with a `SliceRecord` of what was kept.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.queries import MissingScores, grow_rewards
from rest_pipeline.core.store.records import SliceRecord
from rest_pipeline.spec import ExperimentSpec


class FilterError(ValueError):
    """The store does not hold what a slice needs (missing scores, unknown rule)."""


def _bar_expression(rule: str, parameter: float) -> str:
    """The bar a row must clear, as SQL over `dg` joined with the per-source sample statistics `st`."""
    if rule == "threshold":
        return repr(float(parameter))
    if rule == "percentile":
        return "st.p_bar"
    if rule == "interpolated":
        g = float(parameter)
        return f"{g!r} * st.max_r + {1 - g!r} * st.mean_r"
    raise FilterError(f"improve.filter: unknown rule '{rule}' (threshold, percentile, interpolated)")


def read_grow(store: ExperimentStore, grow: int, reward: str) -> pd.DataFrame:
    """D_g with its training reward, read once per step; every candidate must have a score."""
    try:
        dg = grow_rewards(store, reward, grow)
    except MissingScores as e:
        raise FilterError(f"{e} (grow_{grow}/rewards)") from None
    if dg.empty:
        raise FilterError(f"{store.tables_root}: grow {grow} has no candidates")
    missing = int(dg.reward.isna().sum())
    if missing:
        raise FilterError(f"{store.tables_root}: {missing} candidates of grow {grow} have no '{reward}' score")
    return dg


def select(dg: pd.DataFrame, rule: str, parameter: float, mix_originals: bool, *, dedupe: bool = False) -> pd.DataFrame:
    """The rows of D_g that clear the bar (`kept_by`='filter') plus, if asked, the originals ('original').
    SQL over the rows in hand (an in-memory connection), not over the store."""
    con = duckdb.connect()
    con.register("dg", dg.drop(columns=["grow"], errors="ignore"))
    bar = _bar_expression(rule, parameter)
    q = min(max(float(parameter) / 100.0, 0.0), 1.0) if rule == "percentile" else 0.5
    # Per-source bars come from the samples alone: the reference (whose reward against itself is
    # near the top of the scale) would otherwise set the max and the upper percentiles, and keep
    # almost no sample of the sources it dominates.
    mixed = "WHEN dg.origin = 'reference' THEN 'original' " if mix_originals else ""
    # One row per distinct (source, output): a translation sampled k times is not k times the evidence;
    # the reference wins a tie with an identical sample.
    distinct = (
        "QUALIFY row_number() OVER (PARTITION BY source_id, hypothesis ORDER BY origin, candidate_id) = 1 "
        if dedupe
        else ""
    )
    return con.execute(
        "WITH st AS (SELECT source_id, max(reward) AS max_r, avg(reward) AS mean_r, "
        f"quantile_cont(reward, {q!r}) AS p_bar FROM dg WHERE origin = 'sample' GROUP BY source_id), "
        # source_mean_reward: the behaviour (grow) policy's value estimate of the source (a loss baseline).
        f"marked AS (SELECT dg.*, CASE WHEN dg.reward >= {bar} THEN 'filter' {mixed}END AS kept_by, "
        "st.mean_r AS source_mean_reward "
        "FROM dg LEFT JOIN st USING (source_id)) "
        f"SELECT * FROM marked WHERE kept_by IS NOT NULL {distinct}ORDER BY candidate_id"
    ).df()


def build_slice(
    store: ExperimentStore,
    grow: int,
    step: int,
    reward: str,
    rule: str,
    parameter: float,
    *,
    mix_originals: bool = True,
    require_above_mean: bool = False,
    dedupe: bool = False,
) -> SliceRecord:
    """Select, persist (atomically) and summarise the training slice of Improve step `step` of `grow`."""
    dg = read_grow(store, grow, reward)
    rows = select(dg, rule, parameter, mix_originals, dedupe=dedupe)
    mean = float(dg.reward.mean())
    skip = None
    if require_above_mean and rule == "threshold" and parameter <= mean:
        skip = (
            f"threshold {parameter} is not above the mean reward of D_g ({mean:.3f}); "
            "the paper starts the schedule above it"
        )
    filtered = rows[(rows.kept_by == "filter") & (rows.origin == "sample")]
    if skip is None and filtered.empty:
        # References alone would make the step the originals-only control, not a ReST step.
        skip = f"empty slice: no sample of grow {grow} has {reward} reward clearing {rule} {parameter}"
    if skip is not None:
        rows = rows.iloc[0:0]
        filtered = rows
    samples = int((dg.origin == "sample").sum())
    kept_samples = int((filtered.origin == "sample").sum())
    record = SliceRecord(
        grow=grow,
        step=step,
        rule=rule,
        parameter=float(parameter),
        reward=reward,
        candidates=len(dg),
        mean_reward=round(mean, 5),
        kept=len(rows),
        kept_samples=kept_samples,
        kept_fraction=round(kept_samples / samples, 5) if samples else 0.0,
        kept_originals=int((rows.origin == "reference").sum()),
        mean_reward_kept=round(float(rows.reward.mean()), 5) if len(rows) else None,
        sources=int(dg.source_id.nunique()),
        sources_covered=int(filtered.source_id.nunique()),
        skip_reason=skip,
        path="",
    )
    return store.write_slice(record, rows)


def slice_for_step(spec: ExperimentSpec, store: ExperimentStore, grow: int, step: int) -> SliceRecord:
    """The slice Improve step (grow, step) trains on, as the spec's filter defines it."""
    if store.parent is not None:
        store.verify_parent()  # a branch refuses to train on a parent that changed under it
    imp = spec.improve
    return build_slice(
        store,
        grow,
        step,
        spec.reward.model,
        imp.filter.kind,
        imp.filter.values[step - 1],
        mix_originals=imp.mix_originals,
        require_above_mean=getattr(imp.filter, "first_above_mean", False),
        dedupe=imp.dedupe,
    )
