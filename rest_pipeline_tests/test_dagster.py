"""The Dagster layer on a real instance: the whole smoke graph, checks, metadata, lineage."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
from transformers import AutoModelForSeq2SeqLM

from rest_pipeline.core.store.candidates import CandidateStore, canned_query
from rest_pipeline.orchestration.definitions import build_definitions
from rest_pipeline.orchestration.headless import materialize_experiment
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import find_spec, load_spec

ROOT = Path(__file__).resolve().parent.parent
KEYS = ["corpus", "tokenizer", "base_policy", "base_policy_eval", "reward_model"]
GROW_KEYS = [["grow_1", "candidates"], ["grow_1", "rewards"]]


def test_smoke_graph_materializes_in_a_real_instance(tmp_path, data_dir):
    spec = load_spec(find_spec("smoke"))
    storage = RestStorage(home=str(tmp_path / "home"), data_dir=str(data_dir))
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        results = materialize_experiment(spec, instance, {"storage": storage})
        assert all(r.success for r in results)
        assert len(results) == 1 + spec.grow.shards  # unpartitioned run + one run per shard
        result = results[0]
        for key in KEYS:
            event = instance.get_latest_materialization_event(dg.AssetKey(["smoke", key]))
            assert event is not None, key
        for key in GROW_KEYS:
            mats = instance.fetch_materializations(dg.AssetKey(["smoke", *key]), limit=10).records
            assert sorted(m.partition_key for m in mats) == ["0000", "0001"], key
        reward_meta = instance.get_latest_materialization_event(
            dg.AssetKey(["smoke", "reward_model"])
        ).asset_materialization.metadata
        assert -1 <= reward_meta["kendall_tau"].value <= 1
        grow_checks = [c for r in results[1:] for c in r.get_asset_check_evaluations()]
        assert {c.check_name for c in grow_checks} == {"n_candidates_per_source", "rewards_valid"}
        assert all(c.passed for c in grow_checks)
        meta = instance.get_latest_materialization_event(
            dg.AssetKey(["smoke", "base_policy_eval"])
        ).asset_materialization.metadata
        assert {"valid_greedy_bleu", "test_beam_bleu", "test_beam_chrf", "scores"} <= set(meta)
        policy_meta = instance.get_latest_materialization_event(
            dg.AssetKey(["smoke", "base_policy"])
        ).asset_materialization.metadata
        ckpt = Path(policy_meta["path"].value)
        assert ckpt == tmp_path / "home" / "experiments" / "smoke" / "policies" / "base"
        assert policy_meta["parameters"].value > 0
        corpus_meta = instance.get_latest_materialization_event(
            dg.AssetKey(["smoke", "corpus"])
        ).asset_materialization.metadata
        assert corpus_meta["train_pairs"].value == spec.data.max_train_pairs
        checks = result.get_asset_check_evaluations()
        assert {c.check_name for c in checks} == {"splits_clean", "loads_with_transformers"}
        assert all(c.passed for c in checks)
    assert type(AutoModelForSeq2SeqLM.from_pretrained(str(ckpt))).__name__ == "MarianMTModel"
    # Each experiment keeps to its own folder.
    assert sorted(p.name for p in (tmp_path / "home" / "experiments").iterdir()) == ["smoke"]
    # The store answers the canned queries over what Grow wrote.
    store = CandidateStore(tmp_path / "home" / "experiments" / "smoke" / "store")
    n = spec.grow.max_sources * (spec.grow.samples_per_source + 1)
    counts = store.query("SELECT count(*) AS n, count(reward_learned) AS l, count(reward_chrf) AS c FROM scored")
    assert counts.n.item() == counts.l.item() == counts.c.item() == n
    dist = canned_query(store, "reward_distribution", "learned")
    assert set(dist.origin) == {"sample", "reference"}
    ref_mean = dist[dist.origin == "reference"]["mean"].item()
    assert ref_mean > dist[dist.origin == "sample"]["mean"].item()  # references beat a 30-step policy


def test_asset_graph_lineage_and_groups():
    defs = build_definitions([load_spec(find_spec("smoke")), load_spec(find_spec("default"))])
    graph = defs.resolve_asset_graph()
    for exp in ("smoke", "default"):
        policy = dg.AssetKey([exp, "base_policy"])
        assert graph.get(policy).parent_keys == {dg.AssetKey([exp, "tokenizer"]), dg.AssetKey([exp, "corpus"])}
        assert graph.get(policy).group_name == exp
        assert graph.get(policy).code_version


def test_definitions_validate_cli():
    env = dict(os.environ, DAGSTER_HOME="")
    env.pop("DAGSTER_HOME")
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr


def test_cli_rejects_bad_spec_with_field_and_file(tmp_path):
    bad = tmp_path / "oops.yaml"
    bad.write_text(
        "data: {dataset: multi30k_de_en, source_lang: de, target_lang: en, train: train, valid: val, "
        "test: test_2016_flickr}\nbc: {epochs: -1}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "rest_pipeline.cli", "check-spec", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "bc.epochs" in proc.stderr
