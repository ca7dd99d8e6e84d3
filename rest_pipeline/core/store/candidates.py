"""The candidate tables of an experiment: immutable Parquet files + DuckDB views over them.

`CandidateTables` is the table half of `ExperimentStore` (which owns every path): candidates
and scores per grow and shard in hive-style folders (so DuckDB sees `grow`/`shard` columns),
and a content-hash score cache shared by all grows. Every file is written to a temp name and
renamed, so readers never see half a file and a killed run leaves either the whole shard or
nothing. Parallel shards never write the same file, so no locking is needed; DuckDB only reads
(`:memory:` connections with views).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rest_pipeline.core.paths import atomic_path
from rest_pipeline.core.store.location import TablePath, connect_for, glob, read_table

CANDIDATE_SCHEMA = pa.schema(
    [
        ("experiment", pa.string()),
        ("source_id", pa.string()),
        ("candidate_id", pa.string()),
        ("source", pa.string()),
        ("hypothesis", pa.string()),
        ("reference", pa.string()),
        ("origin", pa.string()),  # 'sample' | 'reference'
        ("policy", pa.string()),  # checkpoint id that produced the sample
        ("decoding", pa.string()),
        ("pair_hash", pa.string()),  # sha256(source, hypothesis): identical pairs share it
    ]
)


def pair_hash(source: str, hypothesis: str) -> str:
    return hashlib.sha256(f"{source}\x1f{hypothesis}".encode()).hexdigest()[:24]


class CandidateTables:
    """Writes, scoring and DuckDB views over the candidate tables; paths come from the store."""

    tables_root: TablePath

    def candidates_file(self, grow: int, shard: int) -> Path:
        raise NotImplementedError

    def scores_file(self, reward: str, grow: int, shard: int) -> Path:
        raise NotImplementedError

    def cache_dir(self, reward: str) -> Path:
        raise NotImplementedError

    def candidate_files(self) -> list[Path]:
        """Every candidates Parquet the views read (a branch adds its parent's)."""
        return glob(self.tables_root, "candidates/grow=*/shard=*/*.parquet")

    def score_files(self) -> list[Path]:
        return glob(self.tables_root, "scores/reward=*/grow=*/shard=*/*.parquet")

    def check_writable(self, path: Path) -> None:
        """Refuse a write this store does not own (a branch never writes its parent)."""

    # -- writes ------------------------------------------------------------------------------
    def write_candidates(
        self,
        *,
        experiment: str,
        grow: int,
        shard: int,
        source_ids: Sequence[str],
        sources: Sequence[str],
        references: Sequence[str],
        samples: Sequence[Sequence[str]],
        policy: str,
        decoding: str,
        include_references: bool = True,
    ) -> pd.DataFrame:
        """Write one shard atomically: N samples per source plus the reference pair (origin='reference')."""
        rows: dict[str, list[str]] = {f.name: [] for f in CANDIDATE_SCHEMA}
        for sid, src, ref, hyps in zip(source_ids, sources, references, samples, strict=True):
            items = [(f"{sid}#g{grow}#s{k:03d}", h, "sample", policy, decoding) for k, h in enumerate(hyps)]
            if include_references:
                items.append((f"{sid}#g{grow}#ref", ref, "reference", "", ""))
            for cid, hyp, origin, pol, dec in items:
                rows["experiment"].append(experiment)
                rows["source_id"].append(sid)
                rows["candidate_id"].append(cid)
                rows["source"].append(src)
                rows["hypothesis"].append(hyp)
                rows["reference"].append(ref)
                rows["origin"].append(origin)
                rows["policy"].append(pol)
                rows["decoding"].append(dec)
                rows["pair_hash"].append(pair_hash(src, hyp))
        table = pa.table(rows, schema=CANDIDATE_SCHEMA)
        path = self.candidates_file(grow, shard)
        self.check_writable(path)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return table.to_pandas()

    def has_candidates(self, grow: int, shard: int) -> bool:
        return self.candidates_file(grow, shard).is_file()

    def read_candidates(self, grow: int, shard: int) -> pd.DataFrame:
        path = self.candidates_file(grow, shard)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: candidates of grow {grow} shard {shard} not materialized")
        return read_table(path)

    # -- queries -----------------------------------------------------------------------------
    def views(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with views `candidates`, `scores`, `scored` and `slices`.
        Paths reach DuckDB as values (relations), never pasted into SQL."""
        candidates, scores = self.candidate_files(), self.score_files()
        slices = glob(self.tables_root, "slices/grow=*/improve=*/*.parquet")
        con = connect_for([*candidates, *scores, *slices])
        if candidates:
            con.read_parquet([str(p) for p in candidates], hive_partitioning=True).create_view("candidates")
        else:
            con.execute(
                "CREATE VIEW candidates AS SELECT NULL::VARCHAR AS candidate_id, NULL::BIGINT AS grow, "
                "NULL::VARCHAR AS source_id, NULL::VARCHAR AS origin, NULL::VARCHAR AS hypothesis, "
                "NULL::VARCHAR AS source WHERE false"
            )
        rewards = sorted({p.parent.parent.parent.name.split("=", 1)[1] for p in scores})
        if rewards:
            con.read_parquet([str(p) for p in scores], hive_partitioning=True).create_view("score_files")
            con.execute(
                "CREATE VIEW scores AS SELECT candidate_id, reward, score, reward_version, grow FROM score_files"
            )
            cols = ", ".join(
                f"max(score) FILTER (WHERE reward = '{r}') AS reward_{r}" for r in rewards if r.isidentifier()
            )
            con.execute(
                f"CREATE VIEW scored AS SELECT c.*, s.* EXCLUDE (candidate_id) FROM candidates c LEFT JOIN "
                f"(SELECT candidate_id, {cols} FROM scores GROUP BY candidate_id) s USING (candidate_id)"
            )
        else:
            con.execute("CREATE VIEW scored AS SELECT * FROM candidates")
        if slices:
            rel = con.read_parquet([str(p) for p in slices], hive_partitioning=True, union_by_name=True)
            rel.create_view("slice_files")
            con.execute("CREATE VIEW slices AS SELECT * EXCLUDE (improve) FROM slice_files")
        return con

    def connect(self) -> duckdb.DuckDBPyConnection:
        """The views a person queries (`rest query`); the store adds its records to them."""
        return self.views()

    def query(self, sql: str) -> pd.DataFrame:
        """SQL over `connect()`'s views, for people and tests; the code asks core/store/queries.py."""
        return self.connect().execute(sql).df()


def lock_down(con: duckdb.DuckDBPyConnection, readable: Sequence[Path]) -> duckdb.DuckDBPyConnection:
    """Make a connection safe for SQL from users: files only under `readable` (the views keep working),
    no other file access, no extension installs or loads, and a configuration nobody can change back.
    DuckDB's spill folder is always readable, so it moves inside the first readable folder (by default
    it is `.tmp/` of the working directory, which would open that folder to the query)."""
    con.execute("SET temp_directory = ?", [f"{readable[0]}/.duckdb_tmp"])
    con.execute("SET allowed_directories = ?", [[f"{d}/" for d in readable]])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


class QueryError(ValueError):
    """SQL from a user that is not exactly one read-only statement."""


def read_only_statement(sql: str) -> str:
    """The one SELECT statement in `sql` (DuckDB's own parser decides), or a QueryError saying why not."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"not valid SQL: {e}") from None
    if len(statements) != 1:
        raise QueryError(f"exactly one statement is allowed, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryError(
            f"only read-only queries (SELECT, FROM, WITH, DESCRIBE, SHOW, SUMMARIZE) are allowed, got {kind.name}"
        )
    return statements[0].query
