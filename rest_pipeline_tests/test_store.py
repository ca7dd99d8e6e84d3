"""Candidate store on real Parquet + DuckDB: atomic shards, cached scoring, canned queries."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rest_pipeline.core.rewards.base import BleuReward, ChrFReward, RewardError, load_reward
from rest_pipeline.core.rewards.scoring import score_candidates
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.queries import CANNED, canned_query


class CountingChrF(ChrFReward):
    """The real chrF, counting how many inputs it was asked to score."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def score(self, sources, hypotheses, references):
        self.calls += len(hypotheses)
        return super().score(sources, hypotheses, references)


def _write(store, grow=1, shard=0):
    return store.write_candidates(
        experiment="t",
        grow=grow,
        shard=shard,
        source_ids=["s1", "s2"],
        sources=["ein hund", "eine katze"],
        references=["a dog", "a cat"],
        samples=[["a dog", "a dog", "one dog"], ["a cat", "the cat", "cat cat"]],
        policy="ckpt",
        decoding="hf:n=3",
    )


def test_write_is_complete_and_atomic(tmp_path):
    store = ExperimentStore(tmp_path)
    df = _write(store)
    assert len(df) == 2 * 3 + 2
    assert set(df.origin) == {"sample", "reference"}
    assert df.candidate_id.is_unique
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_scoring_dedups_and_caches_across_grows(tmp_path):
    store = ExperimentStore(tmp_path)
    _write(store, grow=1)
    model = CountingChrF()
    rep = score_candidates(store, model, 1, 0)
    # 8 candidates, but "a dog" appears 3x for s1 (2 samples + reference) and "a cat" 2x for s2.
    assert rep.candidates == 8 and rep.unique_inputs == 5 and model.calls == 5
    rep2 = score_candidates(store, model, 1, 0)  # re-materialization: nothing new to score
    assert rep2.newly_scored == 0 and model.calls == 5
    _write(store, grow=2)  # the same pairs again in a later grow: served from the cache
    assert score_candidates(store, model, 2, 0).newly_scored == 0 and model.calls == 5
    scores = pd.read_parquet(store.scores_file("chrf", 1, 0))
    ref_score = scores[scores.candidate_id == "s1#g1#ref"].score.item()
    assert ref_score == pytest.approx(1.0)


def test_views_and_canned_queries(tmp_path):
    store = ExperimentStore(tmp_path)
    _write(store, grow=1, shard=0)
    store.write_candidates(
        experiment="t",
        grow=1,
        shard=1,
        source_ids=["s3"],
        sources=["ein baum"],
        references=["a tree"],
        samples=[["a tree", "a bush", "tree"]],
        policy="c",
        decoding="d",
    )
    for shard in (0, 1):
        score_candidates(store, ChrFReward(), 1, shard)
        score_candidates(store, BleuReward(), 1, shard)
    n = store.query("SELECT count(*) AS n, count(reward_chrf) AS c, count(reward_bleu) AS b FROM scored")
    assert n.n.item() == n.c.item() == n.b.item() == 12
    assert set(store.query("SELECT DISTINCT shard FROM candidates").shard.astype(int)) == {0, 1}
    for q in CANNED:
        assert not canned_query(store, q, "chrf").empty, q
    dup = canned_query(store, "duplicate_rate", "chrf")
    assert dup.samples.item() == 9 and dup.distinct_pairs.item() == 8
    top = canned_query(store, "top_k_per_source", "chrf")
    assert top[top.source_id == "s3"].iloc[0].hypothesis == "a tree"


def test_bad_scores_never_reach_the_store(tmp_path):
    store = ExperimentStore(tmp_path)
    _write(store)

    class NaNReward(ChrFReward):
        name = "broken"

        def score(self, sources, hypotheses, references):
            return np.full(len(hypotheses), np.nan)

    with pytest.raises(RewardError, match="NaN"):
        score_candidates(store, NaNReward(), 1, 0)
    assert not store.scores_file("broken", 1, 0).exists()
    assert not list(store.cache_dir("broken").glob("*.parquet")) if store.cache_dir("broken").exists() else True


def test_reward_sanity_reference_beats_corruption():
    for model in (ChrFReward(), BleuReward()):
        ref = "two dogs are playing in the snow"
        good, bad, empty = model.score([""] * 3, [ref, "two cats sleep on a sofa", ""], [ref] * 3)
        assert good > bad >= empty
        assert empty < 0.05


def test_load_reward_by_import_path_and_errors():
    assert load_reward("rest_pipeline.core.rewards.base:ChrFReward").name == "chrf"
    with pytest.raises(RewardError, match="unknown reward model"):
        load_reward("nonsense")
    with pytest.raises(RewardError, match="could not be imported"):
        load_reward("no.such.module:thing")


def test_user_sql_is_exactly_one_read_only_statement_on_a_locked_connection(tmp_path):
    """Every bypass found by hand is refused, and a folder name with an apostrophe breaks nothing."""
    import duckdb

    from rest_pipeline.core.store.candidates import QueryError

    store = ExperimentStore(tmp_path / "it's mine" / "exp")
    _write(store)
    shard = store.candidates_file(1, 0)
    before = shard.read_bytes()
    assert store.user_query("SELECT count(*) AS n FROM candidates").n.item() == 8
    assert store.user_query("FROM candidates SELECT DISTINCT origin ORDER BY origin").origin.tolist() == [
        "reference",
        "sample",
    ]
    bypasses = [
        f"SELECT 1; COPY (SELECT 1 AS x) TO '{shard}' (FORMAT parquet)",
        f"COPY (SELECT 1 AS x) TO '{tmp_path}/copied.parquet' (FORMAT parquet)",
        f"SELECT 1; ATTACH '{tmp_path}/new.duckdb' AS db; CREATE TABLE db.t AS SELECT 1",
        "FROM (SELECT 1); INSTALL httpfs",
        "INSTALL httpfs",
        "SET enable_external_access = true",
        "",
    ]
    for sql in bypasses:
        with pytest.raises(QueryError):
            store.user_query(sql)
    outside = tmp_path / "secret.csv"
    outside.write_text("a\n1\n")
    with pytest.raises(duckdb.Error, match="Permission|disabled"):
        store.user_query(f"SELECT * FROM read_csv('{outside}')")
    assert shard.read_bytes() == before
    assert not (tmp_path / "copied.parquet").exists() and not (tmp_path / "new.duckdb").exists()


def test_user_sql_reads_only_the_experiments_folders_not_duckdbs_spill_folder(tmp_path, monkeypatch):
    """DuckDB's temp folder is readable whatever allowed_directories say: it lives inside the experiment."""
    import duckdb

    store = ExperimentStore(tmp_path / "exp")
    _write(store)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.txt").write_text("SECRET")
    with pytest.raises(duckdb.Error, match="Permission|disabled"):
        store.user_query("SELECT content FROM read_text('.tmp/*')")
    con = store.connect(read_only=True)
    temp = con.execute("SELECT current_setting('temp_directory')").fetchone()[0]
    allowed = con.execute("SELECT current_setting('allowed_directories')").fetchone()[0]
    assert Path(temp).parent == store.root and store.root in [Path(d) for d in allowed]
    assert all(Path(d) == store.root or store.root in Path(d).parents for d in allowed), allowed
