"""The functional core end to end without Dagster, including a `pretrained` policy spec."""

import json

import pandas as pd
import yaml

from rest_pipeline.core import base_stage as core
from rest_pipeline.core.policy.model import save_policy
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.records import CorpusRecord
from rest_pipeline.spec import load_spec
from rest_pipeline_tests.synthetic import tiny_model, tokenizer_dir


def test_pretrained_checkpoint_is_fine_tuned_and_evaluated(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("REST_DATA_DIR", str(data_dir))
    # Any HF seq2seq folder works as a starting point; here a tiny one we save ourselves.
    model, tok = tiny_model(tokenizer_dir(tmp_path))
    pretrained = save_policy(model, tok, tmp_path / "some_hf_checkpoint")
    spec_file = tmp_path / "ft.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "dataset": "multi30k_de_en",
                    "source_lang": "de",
                    "target_lang": "en",
                    "train": "train",
                    "valid": "val",
                    "test": "test_2016_flickr",
                    "max_train_pairs": 200,
                    "max_eval_pairs": 10,
                },
                "policy": {"kind": "pretrained", "pretrained_path": str(pretrained)},
                "bc": {"max_steps": 6, "validate_every_steps": 3, "validate_pairs": 5, "max_tokens": 800},
                "evaluation": {"decoding": [{"name": "greedy", "num_beams": 1, "max_new_tokens": 12}]},
            }
        )
    )
    spec = load_spec(spec_file)
    store = ExperimentStore(tmp_path / "exp")
    corpus = core.build_corpus(spec, store)
    assert corpus.splits["train"].rows == 200 and corpus.splits["test"].rows == 10
    assert store.get(CorpusRecord) == corpus and corpus.splits["test"].file == "corpus/test.parquet"
    core.build_tokenizer(spec, store)
    assert json.loads((store.tokenizer_dir / "vocab.json").read_text()) == json.loads(
        (pretrained / "vocab.json").read_text()
    )
    result = core.train_base_policy(spec, store, log=lambda m: None)
    assert result.steps == 6
    rows = core.evaluate_base_policy(spec, store, log=lambda m: None).rows
    assert [(r.split, r.decoding.name, r.decoding.max_new_tokens) for r in rows] == [
        ("valid", "greedy", 12),
        ("test", "greedy", 12),
    ]
    hyps = pd.read_parquet(store.resolve(rows[-1].hypotheses))
    assert len(hyps) == 10 and list(hyps.columns) == ["source_id", "source", "reference", "hypothesis"]


def test_second_run_reuses_finished_training_and_evaluation(tmp_path, data_dir, monkeypatch):
    """The main job trains once; re-materializing reuses the finished policy and its scores."""
    monkeypatch.setenv("REST_DATA_DIR", str(data_dir))
    spec = load_spec(__import__("rest_pipeline.spec", fromlist=["find_spec"]).find_spec("smoke"))
    store = ExperimentStore(tmp_path / "exp")
    core.build_corpus(spec, store)
    core.build_tokenizer(spec, store)
    first = core.train_base_policy(spec, store, log=lambda m: None)
    rows = core.evaluate_base_policy(spec, store, log=lambda m: None)
    logs: list[str] = []
    again = core.train_base_policy(spec, store, log=logs.append)
    rows_again = core.evaluate_base_policy(spec, store, log=logs.append)
    assert any("already trained" in m for m in logs) and any("already evaluated" in m for m in logs)
    assert again.steps == first.steps and rows_again == rows


def test_bc_is_trained_once_per_content_address_and_shared(tmp_path, data_dir, monkeypatch):
    """Two experiments asking for the same BC (same corpus, tokenizer, policy, bc settings, seed) share one
    training under <home>/bc_policies/<key>; a changed BC setting is another key, trained apart."""
    monkeypatch.setenv("REST_DATA_DIR", str(data_dir))
    spec = load_spec(__import__("rest_pipeline.spec", fromlist=["find_spec"]).find_spec("smoke"))
    home = tmp_path / "home" / "experiments"
    first, second = ExperimentStore(home / "a"), ExperimentStore(home / "b")
    for store in (first, second):
        core.build_corpus(spec, store)
        core.build_tokenizer(spec, store)
    core.train_base_policy(spec, first, log=lambda m: None)
    logs: list[str] = []
    core.train_base_policy(spec, second, log=logs.append)
    assert any("already trained" in m for m in logs)
    a, b = first.bc_policy_link(), second.bc_policy_link()
    assert a == b and not a.clock_cut and a.stopped_because == "max_steps"
    assert [p.name for p in first.bc_policies_root.iterdir() if p.is_dir()] == [a.key]
    assert (first.root / a.path).resolve() == first.bc_policies_root / a.key
    other = spec.model_copy(update={"bc": spec.bc.model_copy(update={"lr": spec.bc.lr / 2})})
    assert core.bc_key(other, first, "fp32") != a.key
    assert core.bc_key(spec, first, "bf16") != a.key  # another precision is another model
