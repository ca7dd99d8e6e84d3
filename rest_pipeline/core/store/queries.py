"""Named queries over the candidate tables' views (`candidates`, `scores`, `scored`, `slices`): the one
place the code writes SQL against them (people write theirs through `rest query`). Each reads the
tables once, without the store's step records.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from rest_pipeline.core.paths import is_remote
from rest_pipeline.core.store.candidates import CandidateTables
from rest_pipeline.core.store.location import connect_for

# What a connection that reads a whole grow may hold in memory before DuckDB spills to disk: a
# paper-sized grow (16M candidates) is sliced within a few GB (bench/scale_bench.py).
GROW_MEMORY_LIMIT = "2GB"


class MissingScores(ValueError):
    """The store holds no scores of a reward that a query needs."""


def _run(tables: CandidateTables, sql: str, params: list | None = None) -> pd.DataFrame:
    return tables.views().execute(sql, params or []).df()


def scored_rewards(tables: CandidateTables) -> set[str]:
    """The rewards the store holds scores of (the `reward_<name>` columns of `scored`)."""
    cols = _run(tables, "SELECT * FROM scored LIMIT 0").columns
    return {c[len("reward_") :] for c in cols if c.startswith("reward_")}


def _reward_column(tables: CandidateTables, reward: str) -> str:
    if not reward.isidentifier():
        raise MissingScores(f"reward name '{reward}' cannot be used as a column")
    if reward not in scored_rewards(tables):
        raise MissingScores(f"{tables.tables_root}: no '{reward}' scores in the store; materialize the grow's rewards")
    return f"reward_{reward}"


def grow_rewards(
    tables: CandidateTables, reward: str, grow: int | None = None, independent: str | None = None
) -> pd.DataFrame:
    """D_g with one reward (all grows when `grow` is None): candidate_id, grow, source_id, source,
    hypothesis, origin, reward, and `independent` (a second reward) when asked."""
    cols = f"{_reward_column(tables, reward)} AS reward"
    if independent:
        cols += f", {_reward_column(tables, independent)} AS independent"
    where = "" if grow is None else f"WHERE grow = {int(grow)}"
    return _run(
        tables,
        f"SELECT candidate_id, grow, source_id, source, hypothesis, origin, {cols} FROM scored {where} "
        "ORDER BY candidate_id",
    )


def grow_table(tables: CandidateTables, reward: str, grow: int) -> duckdb.DuckDBPyConnection:
    """D_g with one reward read once into table `dg` of a new connection (candidate_id, source_id, source,
    hypothesis, origin, reward; NULL reward where a candidate has no score), which spills to a folder
    of the store past GROW_MEMORY_LIMIT instead of holding the grow in Python objects."""
    column = _reward_column(tables, reward)
    con = tables.views()
    if not is_remote(tables.tables_root):
        con.execute("SET temp_directory = ?", [str(tables.tables_root / ".duckdb_tmp")])
    con.execute(f"SET memory_limit = '{GROW_MEMORY_LIMIT}'")
    con.execute("SET preserve_insertion_order = false")
    con.execute(
        "CREATE TEMP TABLE dg AS SELECT c.candidate_id, c.source_id, c.source, c.hypothesis, c.origin, s.reward "
        "FROM candidates c LEFT JOIN (SELECT candidate_id, max(score) AS reward FROM scores "
        "WHERE reward = ? AND grow = ? GROUP BY candidate_id) s USING (candidate_id) WHERE c.grow = ?",
        [column[len("reward_") :], int(grow), int(grow)],
    )
    return con


def slice_extremes(tables: CandidateTables, grow: int, step: int, k: int = 4) -> pd.DataFrame:
    """The `k` best rows of a slice and the `k` worst the filter kept (source, hypothesis, origin, reward),
    read from its file by DuckDB whatever the slice's size."""
    path = tables.slice_dir(grow, step) / "part.parquet"  # type: ignore[attr-defined]
    con = connect_for([path])
    con.read_parquet(str(path)).create_view("kept")
    cols = "source, hypothesis, origin, reward"
    return con.execute(
        f"(SELECT {cols} FROM kept ORDER BY reward DESC, candidate_id LIMIT {int(k)}) UNION ALL "
        f"(SELECT {cols} FROM kept WHERE kept_by = 'filter' ORDER BY reward, candidate_id LIMIT {int(k)})"
    ).df()


def reference_pairs(tables: CandidateTables, grow: int) -> pd.DataFrame:
    """The original (source, reference) pairs grow `grow` holds, in candidate order."""
    return _run(
        tables,
        "SELECT source, hypothesis AS reference FROM candidates WHERE grow = ? AND origin = 'reference' "
        "ORDER BY candidate_id",
        [int(grow)],
    )


def grow_sampler(tables: CandidateTables, grow: int) -> str | None:
    """The sampler signature grow `grow`'s samples were drawn with (None when it holds no sample)."""
    df = _run(tables, "SELECT any_value(decoding) AS d FROM candidates WHERE grow = ? AND origin = 'sample'", [grow])
    return None if df.empty or pd.isna(df.d.iloc[0]) else str(df.d.iloc[0])


def samples_and_new_pairs(tables: CandidateTables) -> pd.DataFrame:
    """Per grow: samples drawn, and distinct (source, output) pairs first seen in it (reward calls)."""
    return _run(
        tables,
        "WITH firsts AS (SELECT pair_hash, min(grow) AS grow FROM candidates GROUP BY pair_hash) "
        "SELECT g.grow, g.samples, coalesce(f.new_pairs, 0) AS new_pairs FROM "
        "(SELECT grow, count(*) FILTER (WHERE origin = 'sample') AS samples FROM candidates GROUP BY grow) g "
        "LEFT JOIN (SELECT grow, count(*) AS new_pairs FROM firsts GROUP BY grow) f USING (grow) ORDER BY g.grow",
    )


def grow_sizes(tables: CandidateTables, up_to_grow: int | None = None) -> pd.DataFrame:
    """Per grow: candidates, sources and the share of samples among the candidates."""
    where = "" if up_to_grow is None else f"WHERE grow <= {int(up_to_grow)}"
    return _run(
        tables,
        "SELECT grow, count(*) AS candidates, count(DISTINCT source_id) AS sources, "
        f"avg(CASE WHEN origin = 'sample' THEN 1 ELSE 0 END) AS sample_share FROM candidates {where} "
        "GROUP BY grow ORDER BY grow",
    )


def source_candidates(tables: CandidateTables, needle: str) -> tuple[str, str, pd.DataFrame] | None:
    """Every candidate of the first source whose id is `needle` or whose text contains it, with its
    rewards and the slices that kept it: (source_id, source text, rows), or None."""
    con = tables.views()
    has_slices = "slices" in {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    kept = (
        ", (SELECT string_agg(DISTINCT 'g' || s.grow || 'i' || s.step, ' ' ORDER BY 'g' || s.grow || 'i' || s.step) "
        "FROM slices s WHERE s.candidate_id = c.candidate_id) AS kept_in"
        if has_slices
        else ""
    )
    df = con.execute(
        f"SELECT c.* EXCLUDE (experiment, source, reference, pair_hash, policy, decoding, shard){kept} "
        "FROM scored c WHERE c.source_id = ? OR c.source ILIKE ? ORDER BY grow, origin, candidate_id",
        [needle, f"%{needle}%"],
    ).df()
    if df.empty:
        return None
    sid = df.source_id.iloc[0]
    text = con.execute("SELECT any_value(source) FROM candidates WHERE source_id = ?", [sid]).fetchone()[0]
    return sid, text, df


CANNED: dict[str, str] = {
    "reward_distribution": (
        "SELECT grow, origin, count(*) AS n, avg({r}) AS mean, quantile_cont({r}, 0.1) AS p10, "
        "median({r}) AS p50, quantile_cont({r}, 0.9) AS p90 FROM scored GROUP BY ALL ORDER BY ALL"
    ),
    "yield_per_threshold": (
        "SELECT grow, t AS threshold, avg(CASE WHEN {r} > t THEN 1 ELSE 0 END) AS kept_fraction, "
        "count(DISTINCT CASE WHEN {r} > t THEN source_id END) AS sources_covered "
        "FROM scored, (SELECT unnest([0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]) AS t) "
        "WHERE origin = 'sample' GROUP BY ALL ORDER BY ALL"
    ),
    "top_k_per_source": (
        "SELECT * FROM (SELECT source_id, grow, hypothesis, {r}, "
        "row_number() OVER (PARTITION BY grow, source_id ORDER BY {r} DESC) AS rank FROM scored "
        "WHERE origin = 'sample') WHERE rank <= 3 ORDER BY grow, source_id, rank LIMIT 300"
    ),
    "duplicate_rate": (
        "SELECT grow, count(*) AS samples, count(DISTINCT pair_hash) AS distinct_pairs, "
        "1 - count(DISTINCT pair_hash) / count(*) AS duplicate_rate FROM candidates "
        "WHERE origin = 'sample' GROUP BY grow ORDER BY grow"
    ),
    "distinct_per_source": (
        "SELECT grow, avg(d) AS mean_distinct, min(d) AS min_distinct, max(d) AS max_distinct FROM "
        "(SELECT grow, source_id, count(DISTINCT hypothesis) AS d FROM candidates WHERE origin = 'sample' "
        "GROUP BY ALL) GROUP BY grow ORDER BY grow"
    ),
}


def canned_query(store: CandidateTables, name: str, reward: str) -> pd.DataFrame:
    if name not in CANNED:
        raise KeyError(f"unknown canned query '{name}'; known: {', '.join(CANNED)}")
    return _run(store, CANNED[name].format(r=f"reward_{reward}"))
