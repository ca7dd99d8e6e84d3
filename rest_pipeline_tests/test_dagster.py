"""The Dagster layer on a real instance: the whole smoke graph, checks, metadata, lineage."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from transformers import AutoModelForSeq2SeqLM

from rest_pipeline.core.improve.chain import all_steps
from rest_pipeline.core.store.experiment import ExperimentStore, StaleRecordError, policy_name
from rest_pipeline.core.store.queries import canned_query
from rest_pipeline.core.store.records import (
    BestOfN,
    ControlRecord,
    CorpusRecord,
    DecodingEval,
    Evaluation,
    Report,
    SliceRecord,
    StepRecord,
)
from rest_pipeline.core.store.side_records import OnlineRL
from rest_pipeline.orchestration.definitions import build_definitions
from rest_pipeline.orchestration.headless import materialize_experiment
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import find_spec, load_spec

ROOT = Path(__file__).resolve().parent.parent
KEYS = ["corpus", "tokenizer", "base_policy", "base_policy_eval", "reward_model"]
GROW_KEYS = [[f"grow_{g}", a] for g in (1, 2) for a in ("candidates", "rewards")]
IMPROVE_KEYS = [[f"grow_{g}", f"improve_{i}", a] for g in (1, 2) for i in (1, 2) for a in ("slice", "policy", "eval")]


@pytest.mark.slow
def test_smoke_graph_materializes_in_a_real_instance(tmp_path, data_dir, monkeypatch):
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
        _assert_rest_chain(instance, ExperimentStore(tmp_path / "home" / "experiments" / "smoke"), spec)
        _assert_slice_detectors_count_by_hand(ExperimentStore(tmp_path / "home" / "experiments" / "smoke"), spec)
        report_md = (tmp_path / "home" / "experiments" / "smoke" / "report" / "report.md").read_text()
        assert "## Reward models under test" in report_md and "## What the slices kept that looks damaged" in report_md
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
        # The first stage holds the PPO baseline too (it needs BC and the reward model only).
        names = {c.check_name for c in checks}
        probes = {"rewards_not_fooled", "not_fooled"}  # BC's rewards' page, and the learned reward's own page
        assert names == {"splits_clean", "loads_with_transformers", "no_reward_hacking", *probes}
        assert all(c.passed for c in checks if c.check_name not in ("no_reward_hacking", *probes))
        on_its_page = next(c for c in checks if c.check_name == "not_fooled")
        assert on_its_page.asset_key == dg.AssetKey(["smoke", "reward_model"]) and "verdict" in on_its_page.metadata
        fooled = next(c for c in checks if c.check_name == "rewards_not_fooled")
        assert fooled.severity == dg.AssetCheckSeverity.WARN and "learned" in " ".join(fooled.metadata)
        _assert_online_rl(instance, ExperimentStore(tmp_path / "home" / "experiments" / "smoke"), spec)
    assert type(AutoModelForSeq2SeqLM.from_pretrained(str(ckpt))).__name__ == "MarianMTModel"
    # Each experiment keeps to its own folder.
    assert sorted(p.name for p in (tmp_path / "home" / "experiments").iterdir()) == ["smoke"]
    # The store answers the canned queries over what Grow wrote.
    store = ExperimentStore(tmp_path / "home" / "experiments" / "smoke")
    _assert_every_artifact_reads_back_typed(store, spec, tmp_path / "moved" / "smoke")
    n = spec.improve.grows * spec.grow.max_sources * (spec.grow.sampling.n + 1)
    counts = store.query("SELECT count(*) AS n, count(reward_learned) AS l, count(reward_chrf) AS c FROM scored")
    assert counts.n.item() == counts.l.item() == counts.c.item() == n
    dist = canned_query(store, "reward_distribution", "learned")
    assert set(dist.origin) == {"sample", "reference"}
    for _, per_grow in dist.groupby("grow"):  # references beat a 30-step policy in every grow
        assert (
            per_grow[per_grow.origin == "reference"]["mean"].item()
            > per_grow[per_grow.origin == "sample"]["mean"].item()
        )
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        _assert_a_branch_reuses_its_parents_grow(tmp_path, instance, spec, storage, monkeypatch)
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:  # last: it re-samples a shard
        _assert_rotation_resamples_shard_by_shard(instance, spec, storage)
    _assert_served_learned_reward(tmp_path / "home", data_dir, spec)


def _assert_served_learned_reward(home: Path, data_dir: Path, spec) -> None:
    """`rest serve-reward learned --experiment smoke` serves the experiment's own learned reward: over
    HTTP the same scores as in the process."""
    from rest_pipeline.core.rewards.factory import make_reward
    from rest_pipeline.core.rewards.http import HttpReward
    from rest_pipeline.spec import HttpRewardSpec

    env = {**os.environ, "REST_HOME": str(home), "REST_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "rest_pipeline.cli", "serve-reward", "learned", "--experiment", "smoke", "--port", "0"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not lines or ("serving reward" not in lines[-1] and lines[-1]):  # COMET prints first
            lines.append(proc.stdout.readline())
        line = lines[-1]
        assert "serving reward 'learned'" in line, "".join(lines) + proc.stdout.read()
        store = ExperimentStore(home / "experiments" / "smoke")
        valid = store.split("valid").head(12)
        src, ref = valid["source"].tolist(), valid["target"].tolist()
        hyp = [r if i % 2 else " ".join(r.split()[::-1]) for i, r in enumerate(ref)]
        local = make_reward("learned", spec, store.reward_model_dir).score(src, hyp, ref)
        served = HttpReward(HttpRewardSpec(url=line.split(" on ")[-1].strip(), batch_size=5)).score(src, hyp, ref)
        # Batches of 5 served against the local batching: other padded shapes, other float rounding (1.1e-5 on an
        # AVX2 EPYC's MKL, under 1e-6 on an AMX Xeon); a wrong model or text would be off by far more.
        np.testing.assert_allclose(served, local, atol=1e-4)
        assert len(set(np.round(local, 4))) > 6  # real scores, not one clipped value
    finally:
        proc.kill()
        proc.wait()


def _assert_online_rl(instance: dg.DagsterInstance, store: ExperimentStore, spec) -> None:
    """PPO's checkpoints at its compute marks are evaluated like Improve ones, with lineage and compute;
    the report sets them against ReST's checkpoints at equal compute."""
    record = store.get(OnlineRL)
    assert [m.name for m in record.marks] == ["ppo/c00000016", "ppo/c00000032"]
    for m in record.marks:
        assert m.parent == "base" and m.reward_version and m.compute.candidates in (16, 32)
        ev = store.get(Evaluation, policy=m.name)
        assert set(ev.splits) == {"valid", "test"} and ev.diversity is not None
        assert (store.resolve(m.checkpoint) / "model.safetensors").is_file()
    assert record.history[0]["kl_to_bc"] == 0.0
    assert record.phase_seconds["iterations"] == record.iterations and record.phase_seconds["update"] > 0
    meta = instance.get_latest_materialization_event(dg.AssetKey(["smoke", "online_rl"])).asset_materialization
    assert meta.metadata["candidates"].value == 32
    markdown = store.report_markdown.read_text()
    assert "## ReST against online RL (PPO) at equal compute" in markdown
    samples = spec.grow.max_sources * spec.grow.sampling.n * spec.improve.grows
    assert f"- candidates: PPO's budget ended at 32, below ReST's {samples}; no match" in markdown
    assert (store.report_dir / "rest_vs_ppo_compute.png").read_bytes()[:4] == b"\x89PNG"
    from rest_pipeline.core.online_rl.rest_compute import rest_compute

    rest = rest_compute(store)
    assert list(rest) == ["grow_1/improve_1", "grow_1/improve_2", "grow_2/improve_1", "grow_2/improve_2"]
    samples = spec.grow.max_sources * spec.grow.sampling.n
    assert [c.candidates for c in rest.values()] == [samples, samples, 2 * samples, 2 * samples]
    tokens = [c.target_tokens for c in rest.values()]
    assert all(b >= a for a, b in zip(tokens, tokens[1:], strict=False)) and tokens[0] > 0
    assert all(0 < c.reward_calls <= c.candidates + 2 * spec.grow.max_sources for c in rest.values())
    # ReST's seconds: its grows' sampling and scoring, its steps' training and the validations they ran.
    first = store.get(StepRecord, grow=1, step=1)
    validations = [r["validation_seconds"] for r in first.history if "metric" in r]
    assert validations and all(v > 0 for v in validations)
    grow_1 = sum(c.seconds for c in store.shard_costs(1))
    assert rest["grow_1/improve_1"].seconds == pytest.approx(first.train_seconds + sum(validations) + grow_1, abs=0.1)


def _assert_slice_detectors_count_by_hand(store: ExperimentStore, spec) -> None:
    """Each smoke slice's counts of damaged-looking samples equal a count in Python over its rows."""

    def repeats(h: str) -> bool:
        half = (len(h) - 1) // 2
        return len(h) > 2 and len(h) % 2 == 1 and h[:half] == h[-half:] and h[half] == " "

    for g, i in all_steps(spec):
        record = store.get(SliceRecord, grow=g, step=i)
        if record.skip_reason:
            continue
        rows = store.slice_rows(g, i)
        samples = rows[rows.origin == "sample"]
        hand = {
            "repeat": sum(repeats(h) for h in samples.hypothesis),
            "copy_source": sum(h.strip() == s.strip() for h, s in zip(samples.hypothesis, samples.source, strict=True)),
            "truncated": sum(
                0 < len(h.strip()) and len(h) < 0.5 * len(s)
                for h, s in zip(samples.hypothesis, samples.source, strict=True)
            ),  # fmt: skip
            "empty": sum(not h.strip() for h in samples.hypothesis),
        }
        assert record.detected == hand, (g, i)


def _assert_rest_chain(instance: dg.DagsterInstance, store: ExperimentStore, spec) -> None:
    """Each Improve checkpoint's metadata and record agree with the asset graph's chain."""
    chain = store.lineage(2, 2)
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
        assert meta["path"].value == str(store.resolve(rec.checkpoint))
    # Grow 2 sampled from the checkpoint grow 1 handed on.
    g2 = store.query("SELECT DISTINCT policy FROM candidates WHERE grow = 2 AND origin = 'sample'")
    assert g2.policy.tolist() == [f"grow_1/improve_2@{chain[2].checkpoint_hash}"]
    report = store.get(Report)
    assert [r["checkpoint"] for r in report.checkpoints] == ["BC", "G=1 I=1", "G=1 I=2", "G=2 I=1", "G=2 I=2"]
    assert set(report.best_of_n.curves["bc"].curve) == {1, 2, 4}
    curve = report.best_of_n.curves["rest"].curve
    assert curve[1] <= curve[2] <= curve[4]
    # The control mirrors every step that trained on the final chain, on the originals only.
    trained = [r.name for r in reversed(chain) if r.trained_checkpoint]
    assert [s.mirrors for s in report.control.steps] == trained
    markdown = store.report_markdown.read_text()
    assert "## Control: the same steps on the original pairs only" in markdown
    against = {(r["final minus"], r["split"], r["metric"]) for r in report.significance}
    metrics = ["reward_learned", "reward_chrf", "bleu"]
    assert against == {
        (who, split, m) for who in ("BC", "grow 1", "control") for split in ("valid", "test") for m in metrics
    }
    # The BLEU delta is the corpus scores' difference (the rows' BLEU are rounded to 2 decimals).
    (bleu,) = [r for r in report.significance if (r["final minus"], r["split"], r["metric"]) == ("BC", "test", "bleu")]
    assert bleu["delta"] == pytest.approx(
        report.checkpoints[-1]["test_bleu"] - report.checkpoints[0]["test_bleu"], abs=0.02
    )
    assert [f.finding for f in report.findings] == [
        "ReST's samples add to training longer: the final policy beats the originals-only control on test",
        "valid reward rises with successive Improve steps",
        "the last grow adds to grow 1",
        "the final policy beats BC on test reward, test BLEU within 1 point",
        "Best-of-N: ReST at a small N reaches BC at a larger N",
    ]
    assert report.findings[-1].holds == report.best_of_n.rest_small_n_reaches_bc_larger_n
    # The control's finding reads the final-minus-control rows of the significance table (test split).
    test_rows = [r for r in report.significance if r["final minus"] == "control" and r["split"] == "test"]
    assert {r["metric"] for r in test_rows} == {"reward_learned", "reward_chrf", "bleu"}
    assert report.findings[0].evidence.count("test ") == 3
    # The header says what ran, from the spec and the records (no fixed text).
    assert "Policy: `marian_scratch`" in markdown and "stopped by max_steps" in markdown
    assert len(report.reward_agreement) == spec.improve.grows
    assert "## The paper's findings, checked on this run" in markdown
    # Each grow's stored samples as Best-of-k, straight from the candidate store.
    per_grow = store.query("SELECT grow, count(DISTINCT source_id) AS n FROM candidates WHERE origin = 'sample' "
                           "GROUP BY grow ORDER BY grow")  # fmt: skip
    assert [(r["grow"], r["sources"]) for r in report.grow_samples] == list(zip(per_grow.grow, per_grow.n, strict=True))
    for r in report.grow_samples:
        ks = [r[f"best_of_{k}"] for k in (1, 2, 4) if f"best_of_{k}" in r]
        assert ks == sorted(ks) and len(ks) >= 2
    assert report.grow_samples[0]["at_grow1_k"] == 1
    for png in ("reward_per_checkpoint", "bleu_per_checkpoint", "reward_histograms", "best_of_n"):
        assert (store.report_dir / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    # `rest lineage` (the store's step records and the `lineage` view built from them) and Dagster's
    # asset graph tell the same chain.
    from rest_pipeline.orchestration.lineage import dagster_chain

    graph_rows = dagster_chain(instance, spec, 2, 2)
    assert [(r.grow, r.step, r.parent, str(store.resolve(r.checkpoint)), r.checkpoint_hash) for r in chain] == [
        (r["grow"], r["step"], r["parent"], r["path"], r["data_version"]) for r in graph_rows
    ]
    view = store.query("SELECT grow, step, parent, checkpoint_hash FROM lineage ORDER BY grow DESC, step DESC")
    assert list(view.itertuples(index=False, name=None)) == [
        (r.grow, r.step, r.parent, r.checkpoint_hash) for r in chain
    ]
    eval_meta = instance.get_latest_materialization_event(
        dg.AssetKey(["smoke", "grow_2", "improve_2", "eval"])
    ).asset_materialization.metadata
    assert {"valid_reward_learned", "test_reward_chrf", "test_bleu", "distinct_samples_per_source"} <= set(eval_meta)


def _assert_every_artifact_reads_back_typed(store: ExperimentStore, spec, moved: Path) -> None:
    """Every artifact of the smoke run reads back through the store's typed records, from any folder."""
    import shutil

    corpus = store.get(CorpusRecord)
    assert corpus.splits["train"].rows == len(store.split("train")) == spec.data.max_train_pairs
    assert [r.decoding for r in store.get(DecodingEval).rows if r.split == "test"] == spec.evaluation.decoding
    assert -1 <= store.reward_model().kendall_tau <= 1
    for g in range(1, spec.improve.grows + 1):
        for shard in range(spec.grow.shards):
            assert store.has_candidates(g, shard) and len(store.read_candidates(g, shard))
    for g, i in all_steps(spec):
        name = policy_name(g, i)
        sl, step, ev = (
            store.get(SliceRecord, grow=g, step=i),
            store.get(StepRecord, grow=g, step=i),
            store.get(Evaluation, policy=name),
        )
        assert (sl.grow, sl.step, step.name, ev.policy) == (g, i, name, name)
        assert step.slice_path == sl.path and len(store.slice_rows(g, i)) == sl.kept
        assert set(ev.splits) == set(spec.evaluation.splits) and ev.decoding.name == "greedy"
        assert (ev.inherited_from is None) == (step.status == "improved")
    assert store.get(Evaluation, policy="base").policy == "base"
    assert store.get(Evaluation, policy="final") == store.get(Evaluation, policy="grow_2/improve_2")
    assert (
        store.policy("final")
        == store.policy("grow_2/improve_2")
        == store.resolve(store.get(StepRecord, grow=2, step=2).checkpoint)
    )
    assert store.get(BestOfN).ns == spec.improve.best_of_n
    assert store.find(ControlRecord) is not None and store.get(Evaluation, policy="control").policy == "control"
    assert store.get(Report).best_of_n == store.get(BestOfN)
    # No record holds an absolute path of this machine: the folder can move and still be read.
    for path in store.root.rglob("*.json"):
        assert str(store.root) not in path.read_text(), path
    shutil.copytree(store.root, moved)
    there = ExperimentStore(moved)
    assert there.lineage(2, 2) == store.lineage(2, 2)
    assert there.policy("final") == moved / store.get(StepRecord, grow=2, step=2).checkpoint
    assert (there.policy("final") / "model.safetensors").is_file()
    assert there.get(Report) == store.get(Report)
    # A record written by an older version is refused with what to re-run, never misread.
    old = there.eval_dir("grow_1/improve_1") / "summary.json"
    old.write_text('{"key": "x", "checkpoint": "/somewhere/else", "splits": {}}')
    try:
        there.get(Evaluation, policy="grow_1/improve_1")
        raise AssertionError("an old record was read")
    except StaleRecordError as e:
        assert "the evaluation of policy grow_1/improve_1" in str(e) and "./scripts/rest main smoke" in str(e)


def _assert_a_branch_reuses_its_parents_grow(tmp_path, instance, parent_spec, storage, monkeypatch) -> None:
    """A branch of smoke at grow 1 trains its own steps (with another loss) on smoke's grow 1, read in place:
    nothing is re-sampled, re-scored or written under the parent; its lineage crosses into the parent's
    assets; and it refuses to run once the parent's grow changed."""
    import hashlib

    from rest_pipeline.core.improve.filtering import slice_for_step
    from rest_pipeline.core.store.experiment import BranchError
    from rest_pipeline.orchestration.lineage import dagster_chain

    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "smoke_gold.yaml").write_text(
        "branch: {from: smoke, at: grow_1}\nimprove: {grows: 1, loss: gold, control: false}\n"
    )
    monkeypatch.setenv("REST_EXPERIMENTS_DIR", str(specs))
    branch = load_spec(find_spec("smoke_gold"))
    parent = storage.store(parent_spec)

    def snapshot() -> dict[str, str]:
        return {
            str(p.relative_to(parent.root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in parent.root.rglob("*")
            if p.is_file()
        }

    before = snapshot()
    results = materialize_experiment(branch, instance, {"storage": storage})
    assert all(r.success for r in results)
    assert snapshot() == before  # not one byte written under the parent
    store = storage.store(branch)
    assert store.parent.root == parent.root and not (store.root / "store" / "candidates").exists()
    assert not (store.root / "store" / "cache").exists()  # nothing re-scored either
    n = "SELECT count(*) AS n FROM candidates WHERE grow = 1"
    assert store.query(n).n.item() == parent.query(n).n.item() == parent_spec.grow.max_sources * 4
    chain = store.lineage(1, 2)
    assert [r.name for r in chain] == ["grow_1/improve_2", "grow_1/improve_1"] and chain[-1].parent == "base"
    assert {r.loss for r in chain} == {"gold"} and chain[-1].parent_checkpoint == "../smoke/policies/base"
    assert store.policy("base") == parent.policy("base")
    assert (
        store.get(Evaluation, policy="base").splits["test"].rewards
        == parent.get(Evaluation, policy="base").splits["test"].rewards
    )
    assert store.resolve(store.get(Evaluation, policy="base").checkpoint).resolve() == parent.base_policy_dir
    graph = build_definitions([parent_spec, branch]).resolve_asset_graph()
    point = graph.get(dg.AssetKey(["smoke_gold", "branch_point"])).parent_keys
    assert {dg.AssetKey(["smoke", "grow_1", "rewards"]), dg.AssetKey(["smoke", "base_policy"])} <= point
    assert graph.get(dg.AssetKey(["smoke_gold", "branch_point"])).group_name == "smoke_gold"
    rows = dagster_chain(instance, branch, 1, 2)
    assert [r["asset"] for r in rows] == ["smoke_gold/grow_1/improve_2/policy", "smoke_gold/grow_1/improve_1/policy"]
    assert store.get(Report).findings  # the branch's own report
    # The loss-ablation table: the branch against its parent's final checkpoint, from the CLI.
    from rest_pipeline.cli import main

    monkeypatch.setenv("REST_HOME", storage.home)
    assert main(["compare", "smoke", "smoke_gold"]) == 0
    rows = json.loads((Path(storage.home) / "comparisons" / "smoke-smoke_gold.json").read_text())
    assert [(r["experiment"], r["loss"], r["final"]) for r in rows] == [
        ("smoke", "bc", "grow_2/improve_2"),
        ("smoke_gold", "gold", "grow_1/improve_2"),
    ]
    assert rows[1]["test_learned"] == store.get(Evaluation, policy="final").splits["test"].reward("learned")
    assert rows[1]["test_learned_minus_smoke"].count("[") == 1 and "test_learned_minus_smoke" not in rows[0]
    bleu_delta = float(rows[1]["test_bleu_minus_smoke"].split()[0])  # the corpus-score difference, with its interval
    assert bleu_delta == pytest.approx(rows[1]["test_bleu"] - rows[0]["test_bleu"], abs=0.02)
    # The parent's grow 1 changes under the branch: the branch refuses to go on, naming the file.
    shard = parent.candidates_file(1, 0)
    original = shard.read_bytes()
    parent.write_candidates(
        experiment="smoke", grow=1, shard=0, source_ids=["x"], sources=["s"], references=["r"], samples=[["h"]],
        policy="p", decoding="d",
    )  # fmt: skip
    try:
        slice_for_step(branch, store, 1, 1)
        raise AssertionError("a branch trained on a changed parent")
    except BranchError as e:
        assert "changed: ../smoke/store/candidates/grow=1/shard=0000/part.parquet" in str(e)
    finally:
        shard.write_bytes(original)
    try:
        store.write_candidates(
            experiment="smoke_gold", grow=1, shard=0, source_ids=["x"], sources=["s"], references=["r"],
            samples=[["h"]], policy="p", decoding="d",
        )  # fmt: skip
        raise AssertionError("a branch wrote its parent's grow")
    except BranchError as e:
        assert "never writes its parent" in str(e)
    assert snapshot() == before


def _assert_rotation_resamples_shard_by_shard(instance: dg.DagsterInstance, spec, storage: RestStorage) -> None:
    """Turning rotate_sources on re-samples grow 2 one shard per run; each run's checks judge its own
    shard, not the shards still holding the old sources (what broke the first re-run of default)."""
    rotated = spec.model_copy(update={"grow": spec.grow.model_copy(update={"rotate_sources": True})})
    defs = build_definitions([rotated])
    store = storage.store(rotated)
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
    raised_filter = spec.improve.filter.model_copy(update={"values": [0.2, 0.45]})
    raised = spec.model_copy(update={"improve": spec.improve.model_copy(update={"filter": raised_filter})})
    after = statuses(raised)
    assert after["g1i1_slice"] == after["g1i1_policy"] == after["base"] == StaleStatus.FRESH, after
    assert after["g1i2_slice"] == StaleStatus.STALE, after  # the slice whose threshold changed, and no other


def test_asset_graph_lineage_and_groups():
    paper = load_spec(find_spec("paper"))  # the paper's schedule: two grows of three steps
    defs = build_definitions([load_spec(find_spec("smoke")), paper])
    graph = defs.resolve_asset_graph()
    for exp in ("smoke", "paper"):
        policy = dg.AssetKey([exp, "base_policy"])
        assert graph.get(policy).parent_keys == {dg.AssetKey([exp, "tokenizer"]), dg.AssetKey([exp, "corpus"])}
        assert graph.get(policy).group_name == exp
        assert graph.get(policy).code_version
    # The chain of checkpoints is the path through the graph.
    last = f"improve_{paper.improve.steps}"  # grow 1's last step hands its policy on
    g2i1 = dg.AssetKey(["paper", "grow_2", "improve_1", "policy"])
    assert dg.AssetKey(["paper", "grow_1", last, "policy"]) in graph.get(g2i1).parent_keys
    assert dg.AssetKey(["paper", "grow_2", "improve_1", "slice"]) in graph.get(g2i1).parent_keys
    g2 = graph.get(dg.AssetKey(["paper", "grow_2", "candidates"])).parent_keys
    assert g2 == {dg.AssetKey(["paper", "grow_1", last, k]) for k in ("policy", "eval")}


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
    text = (ROOT / "rest_pipeline" / "specs" / "smoke.yaml").read_text()
    (tmp_path / "mine.yaml").write_text(text.replace("seed: 7", "seed: 8"))
    monkeypatch.setenv("REST_EXPERIMENTS_DIR", str(tmp_path))
    defs = build_definitions()
    groups = {n.group_name for n in defs.resolve_asset_graph().asset_nodes}
    assert {"default", "smoke", "mine"} <= groups
    mine = defs.resolve_asset_graph().get(dg.AssetKey(["mine", "grow_2", "improve_1", "policy"]))
    assert dg.AssetKey(["mine", "grow_1", "improve_2", "policy"]) in mine.parent_keys
    assert {s.name for s in defs.sensors} >= {"smoke_rounds", "mine_rounds"}
    storage = RestStorage(home=str(tmp_path / "home"))
    assert storage.store(load_spec(tmp_path / "mine.yaml")).root != storage.store(load_spec(find_spec("smoke"))).root


@pytest.mark.slow
def test_llm_smoke_graph_materializes_with_a_causal_lm_and_lora_lineage(tmp_path, data_dir, monkeypatch):
    """The whole graph with a decoder-only policy (prompted tiny Llama, LoRA Improve steps) in a real
    instance: every asset, the checks, and lineage as for Marian, adapters named by parent and hash."""
    from transformers import AutoModelForCausalLM

    from rest_pipeline.core.policy.model import LINEAGE_FILE, adapter_parent, weights_hash
    from rest_pipeline.orchestration.lineage import dagster_chain

    spec = load_spec(find_spec("llm_smoke"))
    storage = RestStorage(home=str(tmp_path / "home"), data_dir=str(data_dir))
    store = ExperimentStore(tmp_path / "home" / "experiments" / "llm_smoke")
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        results = materialize_experiment(spec, instance, {"storage": storage})
        assert all(r.success for r in results)
        for key in [*KEYS, ["base_policy_rewards"], ["best_of_n"], ["control"], ["report"], ["online_rl"]]:
            key = [key] if isinstance(key, str) else key
            assert instance.get_latest_materialization_event(dg.AssetKey(["llm_smoke", *key])) is not None, key
        for key in GROW_KEYS:
            mats = instance.fetch_materializations(dg.AssetKey(["llm_smoke", *key]), limit=10).records
            assert sorted(m.partition_key for m in mats) == ["0000", "0001"], key
        for key in IMPROVE_KEYS:
            assert instance.get_latest_materialization_event(dg.AssetKey(["llm_smoke", *key])) is not None, key
        checks = {c.check_name: c for r in results for c in r.get_asset_check_evaluations()}
        assert checks["loads_with_transformers"].passed and checks["lineage_complete"].passed
        assert checks["loads_with_transformers"].metadata["class"].text == "LlamaForCausalLM"
        chain = store.lineage(2, 2)
        assert [(r.grow, r.step) for r in chain] == [(2, 2), (2, 1), (1, 2), (1, 1)]
        graph_rows = dagster_chain(instance, spec, 2, 2)
        assert [(r.parent, str(store.resolve(r.checkpoint)), r.checkpoint_hash) for r in chain] == [
            (r["parent"], r["path"], r["data_version"]) for r in graph_rows
        ]
        assert sum(r.trained_checkpoint is not None for r in chain) >= 2
        for rec in (r for r in chain if r.trained_checkpoint is not None):
            trained = store.resolve(rec.trained_checkpoint)
            # Each step trained a LoRA adapter on the checkpoint its parent handed on; the record names both.
            assert (trained / LINEAGE_FILE).is_file() and not (trained / "model.safetensors").exists()
            assert adapter_parent(trained) == store.resolve(rec.parent_checkpoint).resolve()
            assert rec.lora["applies_to"] == rec.parent_checkpoint and rec.lora["applies_to_hash"] == rec.parent_hash
            assert rec.lora["r"] == spec.policy.lora.r and len(rec.lora["adapter_hash"]) == 16
            if rec.status == "improved":
                assert rec.checkpoint_hash == weights_hash(trained) != rec.parent_hash
            meta = instance.get_latest_materialization_event(
                dg.AssetKey(["llm_smoke", f"grow_{rec.grow}", f"improve_{rec.step}", "policy"])
            ).asset_materialization.metadata
            assert meta["lora_adapter"].value == rec.lora
        # Grow 2 sampled from what grow 1 handed on (adapters merged by the sampler).
        g2 = store.query("SELECT DISTINCT policy FROM candidates WHERE grow = 2 AND origin = 'sample'")
        assert g2.policy.tolist() == [f"grow_1/improve_2@{chain[2].checkpoint_hash}"]
        # CTranslate2 sampled both grows; lineage names its version and the weights it ran (grow 2: the
        # LoRA chain's merge, cached beside the adapter).
        import ctranslate2

        from rest_pipeline.core.policy.model import merged_checkpoint

        assert [e["engine"] for g in (1, 2) for e in store.sampling_engines(g)] == ["ctranslate2"] * 2
        (engine,) = store.sampling_engines(2)
        assert engine["version"] == ctranslate2.__version__ and len(engine["weights"]) == 16
        assert engine["merged"] == weights_hash(merged_checkpoint(store.resolve(chain[2].checkpoint)))
        meta = instance.get_latest_materialization_event(
            dg.AssetKey(["llm_smoke", "grow_2", "candidates"])
        ).asset_materialization.metadata
        assert meta["engine"].value == engine
    report = store.get(Report)
    assert [r["checkpoint"] for r in report.checkpoints][0] == "BC" and set(report.best_of_n.curves) == {"bc", "rest"}
    assert [m.name for m in store.get(OnlineRL).marks] == ["ppo/c00000016", "ppo/c00000032"]
    # `rest export` writes the final checkpoint, adapters merged, as a plain causal LM for from_pretrained.
    from rest_pipeline.cli import main

    monkeypatch.setenv("REST_HOME", str(tmp_path / "home"))
    assert main(["export", "llm_smoke", "--out", str(tmp_path / "export")]) == 0
    exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export"))
    assert type(exported).__name__ == "LlamaForCausalLM"
    import torch

    from rest_pipeline.core.policy.family import family_of
    from rest_pipeline.core.policy.model import load_policy
    from rest_pipeline.core.policy.tokenizer import load_tokenizer

    final = load_policy(store.resolve(chain[0].checkpoint), torch.device("cpu")).eval()
    family = family_of(exported, load_tokenizer(tmp_path / "export"))
    batch = family.collate(family.encode_sources(["Ein Hund rennt."], 32), family.encode_targets(["A dog runs."], 32))
    with torch.no_grad():
        same = family.forward(exported.eval(), batch).logits, family.forward(final, batch).logits
    assert torch.allclose(*same, atol=1e-4)
