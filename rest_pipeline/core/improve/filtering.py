"""Improve's filter: which candidates of a grow clear this step's bar.

Three rules from the paper's ablation, all evaluated by DuckDB over the candidate store:
a global threshold, a per-source percentile, and a per-source interpolated bar
tau_s = gamma * max_s + (1 - gamma) * mean_s, per-source statistics taken over the samples.
The original pairs can be mixed back in whatever their reward, and repeated outputs of a
source collapsed to one row. A slice goes from DuckDB straight to Parquet (queryable beside the
candidates, streamed to the trainer chunk by chunk) with a `SliceRecord` of what was kept, its
statistics counted in SQL: a paper-sized grow never enters Python objects (bench/scale_bench.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.queries import MissingScores, grow_table
from rest_pipeline.core.store.records import SliceRecord
from rest_pipeline.spec import ExperimentSpec


class FilterError(ValueError):
    """The store does not hold what a slice needs (missing scores, unknown rule)."""


# Cheap detectors of the damage families a reward can be blind to (core/rewards/probes.py), as SQL over a
# slice's rows: a blind spot of the reward shows as a growing share of the slice's samples.
DETECTORS = {
    "repeat": "length(hypothesis) % 2 = 1 AND length(hypothesis) > 2 AND "
    "left(hypothesis, (length(hypothesis) - 1) // 2) = right(hypothesis, (length(hypothesis) - 1) // 2) AND "
    "substr(hypothesis, (length(hypothesis) + 1) // 2, 1) = ' '",
    "copy_source": "trim(hypothesis) = trim(source)",
    "truncated": "length(trim(hypothesis)) > 0 AND length(hypothesis) < 0.5 * length(source)",
    "empty": "length(trim(hypothesis)) = 0",
}


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


@dataclass
class GrowRows:
    """D_g with its training reward, read once per step into DuckDB table `dg` (never into pandas),
    with the statistics the slice record needs."""

    con: duckdb.DuckDBPyConnection
    grow: int
    candidates: int
    samples: int
    sources: int
    mean_reward: float


def read_grow(store: ExperimentStore, grow: int, reward: str) -> GrowRows:
    """D_g with its training reward; every candidate must have a score."""
    try:
        con = grow_table(store, reward, grow)
    except MissingScores as e:
        raise FilterError(f"{e} (grow_{grow}/rewards)") from None
    n, missing, samples, sources, mean = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE reward IS NULL), count(*) FILTER (WHERE origin = 'sample'), "
        "count(DISTINCT source_id), avg(reward) FROM dg"
    ).fetchall()[0]
    if n == 0:
        raise FilterError(f"{store.tables_root}: grow {grow} has no candidates")
    if missing:
        raise FilterError(f"{store.tables_root}: {missing} candidates of grow {grow} have no '{reward}' score")
    return GrowRows(con, grow, int(n), int(samples), int(sources), float(mean))


def select(
    dg: GrowRows, rule: str, parameter: float, mix_originals: bool, *, dedupe: bool = False
) -> duckdb.DuckDBPyRelation:
    """The rows of D_g that clear the bar (`kept_by`='filter') plus, if asked, the originals ('original'),
    as a lazy relation: nothing is computed until it is written or fetched."""
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
    return dg.con.sql(
        "WITH st AS (SELECT source_id, max(reward) AS max_r, avg(reward) AS mean_r, "
        f"quantile_cont(reward, {q!r}) AS p_bar FROM dg WHERE origin = 'sample' GROUP BY source_id), "
        # source_mean_reward: the behaviour (grow) policy's value estimate of the source (a loss baseline).
        f"marked AS (SELECT dg.*, CASE WHEN dg.reward >= {bar} THEN 'filter' {mixed}END AS kept_by, "
        "st.mean_r AS source_mean_reward "
        "FROM dg LEFT JOIN st USING (source_id)) "
        f"SELECT * FROM marked WHERE kept_by IS NOT NULL {distinct}ORDER BY candidate_id"
    )


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
    """Select, persist (atomically, DuckDB straight to Parquet) and summarise the training slice of
    Improve step `step` of `grow`."""
    dg = read_grow(store, grow, reward)
    skip = None
    if require_above_mean and rule == "threshold" and parameter <= dg.mean_reward:
        skip = (
            f"threshold {parameter} is not above the mean reward of D_g ({dg.mean_reward:.3f}); "
            "the paper starts the schedule above it"
        )
    select(dg, rule, parameter, mix_originals, dedupe=dedupe).create("kept")
    kept, kept_samples, originals, mean_kept, covered = dg.con.execute(
        "SELECT count(*), count(*) FILTER (WHERE kept_by = 'filter' AND origin = 'sample'), "
        "count(*) FILTER (WHERE origin = 'reference'), avg(reward), "
        "count(DISTINCT source_id) FILTER (WHERE kept_by = 'filter' AND origin = 'sample') FROM kept"
    ).fetchall()[0]
    if skip is None and kept_samples == 0:
        # References alone would make the step the originals-only control, not a ReST step.
        skip = f"empty slice: no sample of grow {grow} has {reward} reward clearing {rule} {parameter}"
    detected = dg.con.execute(
        "SELECT "
        + ", ".join(f"count(*) FILTER (WHERE origin = 'sample' AND {sql})" for sql in DETECTORS.values())
        + " FROM kept"
    ).fetchall()[0]
    if skip is not None:
        kept = kept_samples = originals = covered = 0
        detected = [0] * len(DETECTORS)
    record = SliceRecord(
        grow=grow,
        step=step,
        rule=rule,
        parameter=float(parameter),
        reward=reward,
        candidates=dg.candidates,
        mean_reward=round(dg.mean_reward, 5),
        kept=kept,
        kept_samples=kept_samples,
        kept_fraction=round(kept_samples / dg.samples, 5) if dg.samples else 0.0,
        kept_originals=originals,
        mean_reward_kept=round(mean_kept, 5) if kept else None,
        sources=dg.sources,
        sources_covered=covered,
        skip_reason=skip,
        path="",
        detected=dict(zip(DETECTORS, map(int, detected), strict=True)),
    )
    rows = dg.con.sql("SELECT * FROM kept ORDER BY candidate_id")
    return store.write_slice(record, rows.limit(0) if skip is not None else rows)


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
