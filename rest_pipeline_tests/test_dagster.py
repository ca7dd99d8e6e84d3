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
GROW_KEYS = [[f"grow_{g}", a] for g in (1, 2) for a in ("candidates", "rewards")]
IMPROVE_KEYS = [[f"grow_{g}", f"improve_{i}", a] for g in (1, 2) for i in (1, 2) for a in ("slice", "policy", "eval")]


def test_smoke_graph_materializes_in_a_real_instance(tmp_path, data_dir):
    spec = load_spec(find_spec("smoke"))
    storage = RestStorage(home=str(tmp_path / "home"), data_dir=str(data_dir))
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        results = materialize_experiment(spec, instance, {"storage": storage})
        assert all(r.success for r in results)
        # BC stage, then per grow: one run per shard and one run for its Improve steps.
        assert len(results) == 1 + spec.improve.grows * (spec.grow.shards + 1)
        result = results[0]
        for key in KEYS:
            event = instance.get_latest_materialization_event(dg.AssetKey(["smoke", key]))
            assert event is not None, key
        for key in GROW_KEYS:
            mats = instance.fetch_materializations(dg.AssetKey(["smoke", *key]), limit=10).records
            assert sorted(m.partition_key for m in mats) == ["0000", "0001"], key
        for key in [*IMPROVE_KEYS, ["base_policy_rewards"], ["best_of_n"], ["control"], ["report"]]:
            assert instance.get_latest_materialization_event(dg.AssetKey(["smoke", *key])) is not None, key
        reward_meta = instance.get_latest_materialization_event(
            dg.AssetKey(["smoke", "reward_model"])
        ).asset_materialization.metadata
        assert -1 <= reward_meta["kendall_tau"].value <= 1
        later = [c for r in results[1:] for c in r.get_asset_check_evaluations()]
        assert {c.check_name for c in later} == {
            "n_candidates_per_source",
            "rewards_valid",
            "no_reward_hacking",
            "lineage_complete",
            "slice_usable",
        }
        assert all(c.passed for c in later if c.check_name != "slice_usable")
        _assert_rest_chain(instance, tmp_path / "home" / "experiments" / "smoke", spec)
        _assert_threshold_change_stales_exactly_downstream(instance, spec)
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
    n = spec.improve.grows * spec.grow.max_sources * (spec.grow.samples_per_source + 1)
    counts = store.query("SELECT count(*) AS n, count(reward_learned) AS l, count(reward_chrf) AS c FROM scored")
    assert counts.n.item() == counts.l.item() == counts.c.item() == n
    dist = canned_query(store, "reward_distribution", "learned")
    assert set(dist.origin) == {"sample", "reference"}
    for _, per_grow in dist.groupby("grow"):  # references beat a 30-step policy in every grow
        assert (
            per_grow[per_grow.origin == "reference"]["mean"].item()
            > per_grow[per_grow.origin == "sample"]["mean"].item()
        )
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:  # last: it re-samples a shard
        _assert_rotation_resamples_shard_by_shard(instance, spec, storage)


def _assert_rest_chain(instance: dg.DagsterInstance, root: Path, spec) -> None:
    """Each Improve checkpoint's metadata and record agree with the asset graph's chain."""
    import json

    from rest_pipeline.core.base_policy import Layout
    from rest_pipeline.core.improve.step import lineage

    layout = Layout(root)
    chain = lineage(spec, layout, 2, 2)
    assert [(r.grow, r.step) for r in chain] == [(2, 2), (2, 1), (1, 2), (1, 1)]
    assert chain[-1].parent == "base"
    for rec in chain:
        assert rec.status in {"improved", "not_improved", "skipped"}
        if rec.status == "improved":
            assert rec.valid_reward > rec.parent_valid_reward and rec.checkpoint == rec.trained_checkpoint
        else:
            assert rec.checkpoint == rec.parent_checkpoint
        meta = instance.get_latest_materialization_event(
            dg.AssetKey(["smoke", f"grow_{rec.grow}", f"improve_{rec.step}", "policy"])
        ).asset_materialization.metadata
        assert meta["status"].value == rec.status and meta["parent"].value == rec.parent
        assert meta["path"].value == rec.checkpoint
    # Grow 2 sampled from the checkpoint grow 1 handed on.
    g2 = CandidateStore(layout.store).query(
        "SELECT DISTINCT policy FROM candidates WHERE grow = 2 AND origin = 'sample'"
    )
    assert g2.policy.tolist() == [f"grow_1/improve_2@{chain[2].checkpoint_hash}"]
    report = json.loads((layout.report / "report.json").read_text())
    assert [r["checkpoint"] for r in report["checkpoints"]] == ["BC", "G=1 I=1", "G=1 I=2", "G=2 I=1", "G=2 I=2"]
    assert set(report["best_of_n"]["bc"]["curve"]) == {"1", "2", "4"}
    curve = report["best_of_n"]["rest"]["curve"]
    assert curve["1"] <= curve["2"] <= curve["4"]
    # The control mirrors every step that trained on the final chain, on the originals only.
    trained = [f"grow_{r.grow}/improve_{r.step}" for r in reversed(chain) if r.trained_checkpoint]
    assert [s["mirrors"] for s in report["control"]["steps"]] == trained
    assert "## Control: the same steps on the original pairs only" in (layout.report / "report.md").read_text()
    against = {(r["final minus"], r["split"], r["metric"]) for r in report["significance"]}
    pairs = [("valid", "learned"), ("valid", "chrf"), ("test", "learned"), ("test", "chrf")]
    assert against == {(who, split, f"reward_{m}") for who in ("BC", "grow 1", "control") for split, m in pairs}
    assert [f["finding"] for f in report["findings"]] == [
        "valid reward rises with the Improve steps of grow 1",
        "the last grow adds to grow 1",
        "the final policy beats BC on test reward, test BLEU within 1 point",
        "Best-of-N: ReST at a small N reaches BC at a larger N",
    ]
    assert report["findings"][-1]["holds"] == report["best_of_n"]["rest_small_n_reaches_bc_larger_n"]
    assert "## The paper's findings, checked on this run" in (layout.report / "report.md").read_text()
    for png in ("reward_per_checkpoint", "bleu_per_checkpoint", "reward_histograms", "best_of_n"):
        assert (layout.report / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    # `rest lineage` (the store's lineage table) and Dagster's asset graph tell the same chain.
    from rest_pipeline.core.improve.lineage import store_chain
    from rest_pipeline.orchestration.lineage import dagster_chain

    table = store_chain(CandidateStore(layout.store), spec, 2, 2)
    graph_rows = dagster_chain(instance, spec, 2, 2)
    assert [(int(r.grow), int(r.step), r.parent, r.checkpoint, r.checkpoint_hash) for r in table.itertuples()] == [
        (r["grow"], r["step"], r["parent"], r["path"], r["data_version"]) for r in graph_rows
    ]
    eval_meta = instance.get_latest_materialization_event(
        dg.AssetKey(["smoke", "grow_2", "improve_2", "eval"])
    ).asset_materialization.metadata
    assert {"valid_reward_learned", "test_reward_chrf", "test_bleu", "distinct_samples_per_source"} <= set(eval_meta)


def _assert_rotation_resamples_shard_by_shard(instance: dg.DagsterInstance, spec, storage: RestStorage) -> None:
    """Turning rotate_sources on re-samples grow 2 one shard per run; each run's checks judge its own
    shard, not the shards still holding the old sources (what broke the first re-run of default)."""
    rotated = spec.model_copy(update={"grow": spec.grow.model_copy(update={"rotate_sources": True})})
    defs = build_definitions([rotated])
    store = CandidateStore(storage.layout(rotated).store)
    old_ids = set(store.read_candidates(2, 1).source_id)
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        instance=instance,
        resources={"storage": storage},
        selection=dg.AssetSelection.assets(dg.AssetKey(["smoke", "grow_2", "candidates"])),
        partition_key="0000",
    )
    assert result.success
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "n_candidates_per_source" and check.passed
    n = spec.grow.max_sources
    block = set(store.read_candidates(2, 0).source_id)
    assert block.isdisjoint(store.read_candidates(1, 0).source_id)  # grow 2 now samples the next block
    assert len(block) == n // spec.grow.shards
    assert set(store.read_candidates(2, 1).source_id) == old_ids  # the other shard waits for its own run


def _assert_threshold_change_stales_exactly_downstream(instance: dg.DagsterInstance, spec) -> None:
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    def statuses(s) -> dict[str, StaleStatus]:
        assets = build_definitions([s]).assets
        resolver = get_stale_status_resolver(instance, assets)
        keys = {
            "g1i1_slice": ["grow_1", "improve_1", "slice"],
            "g1i1_policy": ["grow_1", "improve_1", "policy"],
            "g1i2_slice": ["grow_1", "improve_2", "slice"],
            "g1i2_policy": ["grow_1", "improve_2", "policy"],
            "g1i2_eval": ["grow_1", "improve_2", "eval"],
            "base": ["base_policy"],
            "report": ["report"],
        }
        return {name: resolver.get_status(dg.AssetKey(["smoke", *k])) for name, k in keys.items()}

    before = statuses(spec)
    assert before["g1i1_slice"] == before["g1i1_policy"] == before["g1i2_slice"] == StaleStatus.FRESH, before
    raised = spec.model_copy(update={"improve": spec.improve.model_copy(update={"thresholds": [0.2, 0.45]})})
    after = statuses(raised)
    assert after["g1i1_slice"] == after["g1i1_policy"] == after["base"] == StaleStatus.FRESH, after
    assert after["g1i2_slice"] == StaleStatus.STALE, after  # the slice whose threshold changed, and no other


def test_asset_graph_lineage_and_groups():
    defs = build_definitions([load_spec(find_spec("smoke")), load_spec(find_spec("default"))])
    graph = defs.resolve_asset_graph()
    for exp in ("smoke", "default"):
        policy = dg.AssetKey([exp, "base_policy"])
        assert graph.get(policy).parent_keys == {dg.AssetKey([exp, "tokenizer"]), dg.AssetKey([exp, "corpus"])}
        assert graph.get(policy).group_name == exp
        assert graph.get(policy).code_version
    # The chain of checkpoints is the path through the graph.
    g2i1 = dg.AssetKey(["default", "grow_2", "improve_1", "policy"])
    assert dg.AssetKey(["default", "grow_1", "improve_3", "policy"]) in graph.get(g2i1).parent_keys
    assert dg.AssetKey(["default", "grow_2", "improve_1", "slice"]) in graph.get(g2i1).parent_keys
    g2 = graph.get(dg.AssetKey(["default", "grow_2", "candidates"])).parent_keys
    assert g2 == {dg.AssetKey(["default", "grow_1", "improve_3", k]) for k in ("policy", "eval")}


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


def test_a_new_spec_file_becomes_its_own_group(tmp_path, monkeypatch):
    """No Python to edit: a YAML in REST_EXPERIMENTS_DIR is picked up with its own keys and folder."""
    text = (ROOT / "rest_pipeline" / "experiments" / "smoke.yaml").read_text()
    (tmp_path / "mine.yaml").write_text(text.replace("seed: 7", "seed: 8"))
    monkeypatch.setenv("REST_EXPERIMENTS_DIR", str(tmp_path))
    defs = build_definitions()
    groups = {n.group_name for n in defs.resolve_asset_graph().asset_nodes}
    assert {"default", "smoke", "mine"} <= groups
    mine = defs.resolve_asset_graph().get(dg.AssetKey(["mine", "grow_2", "improve_1", "policy"]))
    assert dg.AssetKey(["mine", "grow_1", "improve_2", "policy"]) in mine.parent_keys
    assert {s.name for s in defs.sensors} >= {"smoke_rounds", "mine_rounds"}
    storage = RestStorage(home=str(tmp_path / "home"))
    assert storage.layout(load_spec(tmp_path / "mine.yaml")).root != storage.layout(load_spec(find_spec("smoke"))).root
