"""A user's whole task in a real Dagster instance, as a user would bring it: a TSV corpus of their own,
a pretrained Marian folder of their own, and their reward model served over HTTP (`rest serve-reward`
on 127.0.0.1). The spec comes from `rest new`, `rest check-spec` says what will run, and the graph runs
through both grows, the control and the report; lineage names the data file's hash, the model folder's
weights and the reward server's version."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from rest_pipeline.core.corpus.fetch import sha256_of
from rest_pipeline.core.policy.model import weights_hash
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.records import CorpusRecord
from rest_pipeline.orchestration.headless import materialize_experiment
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import load_spec
from rest_pipeline_tests.synthetic import pairs, tiny_model, tokenizer_dir
from rest_pipeline_tests.test_served_reward import Served, free_port

ROOT = Path(__file__).resolve().parent.parent

SMALL = {  # the commented template's sizes, cut to a test's
    "bc": {"max_tokens": 400, "epochs": 10, "max_steps": 200, "lr": 0.005, "warmup_steps": 20,
           "validate_every_steps": 100, "validate_pairs": 20, "save_every_steps": 50},
    "grow": {"sampling": {"n": 3, "max_new_tokens": 16}, "max_sources": 40, "shards": 1},
    "improve": {"grows": 2, "filter": {"kind": "percentile", "values": [50, 90]}, "train": {
        "max_tokens": 400, "max_steps": 8, "lr": 0.003, "warmup_steps": 2, "validate_every_steps": 4,
        "validate_pairs": 20, "save_every_steps": 4}, "best_of_n": [1, 2], "best_of_n_sources": 10},
    "evaluation": {"decoding": [{"name": "greedy", "num_beams": 1, "max_new_tokens": 16}], "examples": 2},
}  # fmt: skip


def rest(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rest_pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True, env=env
    )


def merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.slow
def test_a_users_own_data_model_and_served_reward_run_the_whole_graph(tmp_path, monkeypatch):
    work = tmp_path / "mine"
    work.mkdir()
    src, tgt = pairs(700, seed=11)
    (work / "corpus.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in zip(src, tgt, strict=True)))
    model, tok = tiny_model(tokenizer_dir(tmp_path))
    model.save_pretrained(work / "my_marian")
    tok.save_pretrained(work / "my_marian")

    server = Served("chrf", free_port())
    try:
        spec_path = work / "mytask.yaml"
        made = rest(
            "new", "mytask", "--data", str(work / "corpus.tsv"), "--model", str(work / "my_marian"),
            "--reward", server.url, "--source-lang", "de", "--target-lang", "en", "--out", str(spec_path),
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        raw = yaml.safe_load(spec_path.read_text())
        assert raw["data"]["files"]["train"] == "corpus.tsv" and raw["policy"]["pretrained_path"] == "my_marian"
        assert raw["reward"]["model"] == "http" and raw["reward"]["http"]["url"] == server.url
        raw = merged(raw, SMALL)
        raw["data"]["files"]["carve_pairs"] = 40
        spec_path.write_text(yaml.safe_dump(raw))
        checked = rest("check-spec", str(spec_path))
        assert checked.returncode == 0, checked.stderr
        assert "620 train / 40 valid / 40 test pairs" in checked.stdout and "time on this machine" in checked.stdout

        spec = load_spec(spec_path)
        home = tmp_path / "home"
        (tmp_path / "dagster").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
            results = materialize_experiment(spec, instance, {"storage": RestStorage(home=str(home))})
            failures = [e.message for r in results for e in r.all_events if e.is_failure]
            assert all(r.success for r in results), failures
            for key in (["control"], ["report"], ["grow_2", "improve_2", "eval"]):
                assert instance.get_latest_materialization_event(dg.AssetKey(["mytask", *key])) is not None, key
        assert server.stats()["inputs"] > 0

        store = ExperimentStore(home / "experiments" / "mytask")
        tsv_sha = sha256_of(work / "corpus.tsv")
        assert store.get(CorpusRecord).files == {str(work / "corpus.tsv"): tsv_sha}
        assert store.bc_policy_link().pretrained_hash == weights_hash(work / "my_marian")
        steps = store.steps()
        assert steps and all("chrf@sacrebleu" in r.reward_version for r in steps)
        env = {"REST_HOME": str(home), "REST_EXPERIMENTS_DIR": str(work), "PATH": "/usr/bin:/bin"}
        lineage = rest("lineage", "mytask", env=env)
        assert lineage.returncode == 0, lineage.stderr
        assert tsv_sha in lineage.stdout and weights_hash(work / "my_marian") in lineage.stdout
        assert "chrf@sacrebleu" in lineage.stdout

        # The user fixes their data: the changed file is named, and everything made from the old contents is
        # re-made under its new content address; nothing sampled by the old BC is left in the grows.
        old_bc = store.bc_policy_link().key
        lines = (work / "corpus.tsv").read_text().splitlines()
        (work / "corpus.tsv").write_text(
            "".join(f"{ln} x\n" if i % 3 == 0 else f"{ln}\n" for i, ln in enumerate(lines))
        )
        (tmp_path / "dagster2").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "dagster2")) as instance:
            results = materialize_experiment(spec, instance, {"storage": RestStorage(home=str(home))})
            assert all(r.success for r in results)
            logs = [e.user_message for r in results for e in instance.all_logs(r.run_id)]
            said = [m for m in logs if "changed since the corpus was built" in m]
            assert said and str(work / "corpus.tsv") in said[0]
        assert store.get(CorpusRecord).files[str(work / "corpus.tsv")] == sha256_of(work / "corpus.tsv")
        assert store.bc_policy_link().key != old_bc
        base_id = f"base@{weights_hash(store.base_policy_dir)}"
        grow1 = store.query("SELECT DISTINCT policy FROM candidates WHERE grow = 1 AND origin = 'sample'")
        assert grow1.policy.tolist() == [base_id]
        train_hash = sha256_of(store.split_file("train"))[:16]
        assert all(r.corpus_hash == train_hash for r in store.steps())
    finally:
        server.stop()
