import re
from pathlib import Path

import pytest

from rest_pipeline.core.spec_check import checked_specs, load_checked_spec
from rest_pipeline.spec import SpecError, all_specs, find_spec, load_spec


def test_shipped_specs_load():
    names = {s.name for s in all_specs()}
    assert {"default", "smoke"} <= names
    default = load_spec(find_spec("default"))
    assert default.data.dataset == "multi30k_de_en"
    assert default.data.test == "test_2016_flickr"


def _write(tmp_path: Path, name: str, body: str) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(body)
    return p


BASE = """
data: {dataset: multi30k_de_en, source_lang: de, target_lang: en, train: train, valid: val, test: test_2016_flickr}
"""


def test_unknown_field_names_field_and_file(tmp_path):
    p = _write(tmp_path, "typo", BASE + "bc: {learning_rate: 0.1}\n")
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert str(p) in str(e.value)
    assert "bc.learning_rate" in str(e.value)


def test_wrong_type_names_field(tmp_path):
    p = _write(tmp_path, "wrongtype", BASE + "policy: {d_model: lots}\n")
    with pytest.raises(SpecError, match=r"policy\.d_model"):
        load_spec(p)


def test_cross_field_rule(tmp_path):
    p = _write(tmp_path, "heads", BASE + "policy: {d_model: 100, attention_heads: 3}\n")
    with pytest.raises(SpecError, match="divisible"):
        load_spec(p)


def test_missing_section_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match=r"field 'data'"):
        load_spec(_write(tmp_path, "nodata", "seed: 3\n"))
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(_write(tmp_path, "broken", "data: [unclosed\n"))


def test_name_must_match_file(tmp_path):
    with pytest.raises(SpecError, match="named"):
        load_spec(_write(tmp_path, "alpha", BASE + "name: beta\n"))


def test_section_hash_tracks_only_its_sections(tmp_path):
    a = load_spec(_write(tmp_path, "a", BASE + "bc: {lr: 0.001}\n"))
    (tmp_path / "b").mkdir()
    b = load_spec(_write(tmp_path / "b", "a", BASE + "bc: {lr: 0.002}\n"))
    assert a.section_hash("data") == b.section_hash("data")
    assert a.section_hash("bc") != b.section_hash("bc")


def test_experiments_dir_env_adds_specs(tmp_path, monkeypatch):
    _write(tmp_path, "mine", BASE)
    monkeypatch.setenv("REST_EXPERIMENTS_DIR", str(tmp_path))
    assert "mine" in {s.name for s in all_specs()}


def test_filter_is_one_discriminated_field(tmp_path):
    spec = load_spec(_write(tmp_path, "pct", BASE + "improve: {filter: {kind: percentile, values: [75, 90, 100]}}\n"))
    assert spec.improve.filter.kind == "percentile" and spec.improve.steps == 3
    # Only the active filter is validated: percentiles above 1 are fine, thresholds above 1 are not.
    with pytest.raises(SpecError, match=r"improve\.filter\.values must lie in \[0\.0, 1\.0\] for threshold"):
        load_spec(_write(tmp_path, "thr", BASE + "improve: {filter: {kind: threshold, values: [75]}}\n"))
    with pytest.raises(SpecError, match=r"improve\.filter\.percentile\.first_above_mean"):
        load_spec(_write(tmp_path, "mix", BASE + "improve: {filter: {kind: percentile, first_above_mean: true}}\n"))
    with pytest.raises(SpecError, match="must not decrease"):
        load_spec(_write(tmp_path, "down", BASE + "improve: {filter: {kind: interpolated, values: [0.5, 0.2]}}\n"))
    with pytest.raises(SpecError, match=r"improve\.filter"):
        load_spec(_write(tmp_path, "kind", BASE + "improve: {filter: {kind: topk, values: [1]}}\n"))


def test_specs_in_the_old_filter_shape_say_how_to_rewrite_them(tmp_path):
    old = BASE + "improve: {filter: percentile, percentiles: [75, 90]}\n"
    with pytest.raises(SpecError, match=r"filter: \{kind: percentile, values: \[\.\.\.\]\}.*improve\.percentiles"):
        load_spec(_write(tmp_path, "old", old))


def test_only_implemented_losses_are_accepted(tmp_path):
    for loss in ("bc", "gold", "bvmpo", "oac"):
        assert load_spec(_write(tmp_path, loss, BASE + f"improve: {{loss: {loss}}}\n")).improve.loss == loss
    with pytest.raises(SpecError, match=r"improve\.loss"):
        load_spec(_write(tmp_path, "ppo", BASE + "improve: {loss: ppo}\n"))
    with pytest.raises(SpecError, match=r"improve\.gold\.weight_floor"):
        load_spec(_write(tmp_path, "floor", BASE + "improve: {loss: gold, gold: {weight_floor: 0}}\n"))


def test_a_branch_takes_its_parent_and_may_not_change_what_it_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("REST_EXPERIMENTS_DIR", str(tmp_path))
    child = load_spec(_write(tmp_path, "child", "branch: {from: paper, at: grow_1}\nimprove: {grows: 1, loss: gold}\n"))
    paper = load_spec(find_spec("paper"))
    assert child.branch.parent == "paper" and child.branch.grow == 1
    assert (child.data, child.bc, child.reward, child.seed) == (paper.data, paper.bc, paper.reward, paper.seed)
    assert child.improve.loss == "gold" and child.improve.grows == 1
    assert child.improve.filter == paper.improve.filter and child.improve.train == paper.improve.train
    other = "branch: {from: paper, at: grow_1}\nimprove: {grows: 1, filter: {kind: threshold, values: [0.5]}}\n"
    assert load_spec(_write(tmp_path, "thr", other)).improve.filter.kind == "threshold"  # replaced whole
    with pytest.raises(SpecError, match=r"field 'bc': a branch reuses its parent's bc"):
        load_spec(_write(tmp_path, "bad", "branch: {from: paper, at: grow_1}\nbc: {lr: 0.1}\n"))
    beyond = paper.improve.grows + 1
    with pytest.raises(SpecError, match=f"has only {paper.improve.grows} grows"):
        load_spec(_write(tmp_path, "far", f"branch: {{from: paper, at: grow_{beyond}}}\n"))
    steps = paper.improve.steps
    other_count = "{kind: percentile, values: [" + ", ".join(["90"] * (steps + 1)) + "]}"
    at_2 = "branch: {from: paper, at: grow_2}\n"
    with pytest.raises(SpecError, match=rf"field 'improve.filter.values'.* {steps} step\(s\) each; it has {steps + 1}"):
        load_spec(_write(tmp_path, "g2", at_2 + f"improve: {{filter: {other_count}}}\n"))
    assert load_spec(_write(tmp_path, "g2ok", at_2 + "improve: {loss: gold}\n")).improve.steps == steps
    at_1 = "branch: {from: paper, at: grow_1}\n"  # reuses no step of the parent: any count
    g1 = load_spec(_write(tmp_path, "g1", at_1 + f"improve: {{grows: 2, filter: {other_count}}}\n"))
    assert g1.improve.steps == steps + 1
    with pytest.raises(SpecError, match="unknown experiment 'nope'"):
        load_spec(_write(tmp_path, "orphan", "branch: {from: nope, at: grow_1}\n"))


def test_a_branch_at_grow_0_shares_bc_and_samples_its_own_grows(tmp_path, monkeypatch):
    """`at: grow_0` (a change of N or of the sources per grow): BC and the reward model are the parent's
    assets, grow 1 and everything after are the branch's, and its grow 1 waits on the branch point."""
    from rest_pipeline.orchestration import keys
    from rest_pipeline.orchestration.definitions import build_definitions

    monkeypatch.setenv("REST_EXPERIMENTS_DIR", str(tmp_path))
    wide = load_spec(
        _write(tmp_path, "wide", "branch: {from: smoke, at: grow_0}\ngrow: {sampling: {n: 6}}\nimprove: {grows: 1}\n")
    )
    assert wide.branch.grow == 0 and wide.grow.sampling.n == 6
    assert keys.policy_key(wide, 0, 0).path == ["smoke", "base_policy"]
    assert keys.reward_model_key(wide).path[0] == "smoke"
    assert keys.candidates_key(wide, 1).path[0] == keys.rewards_key(wide, 1).path[0] == "wide"
    defs = build_definitions([load_spec(find_spec("smoke")), wide])
    graph = defs.resolve_asset_graph()
    assert keys.branch_point_key(wide) in graph.get(keys.candidates_key(wide, 1)).parent_keys


@pytest.mark.parametrize(
    ("body", "field", "why"),
    [
        ("reward: {model: nosuchreward}\n", "reward", "unknown reward model 'nosuchreward'"),
        ("reward: {model: chrf, extra: [nosuch]}\n", "reward", r"reward\.extra\[0\]': unknown reward model"),
        ("reward: {model: 'nosuchpkg.mod:make'}\n", "reward", "could not be imported"),
        ("reward: {model: 'a.b:f', extra: ['c.d:f']}\n", "reward", "would both be called 'f'"),
        ("bc: {lr: .inf}\n", "bc.lr", "finite"),
        ("bc: {max_steps: true}\n", "bc.max_steps", "integer"),
        ("grow: {sampling: {n: '3'}}\n", "grow.sampling.n", "integer"),
        ("grow: {samples_per_source: 3}\n", "grow", r"sampling is one object now; write `sampling: \{n: 3\}`"),
        ("grow: {shards: 9, max_sources: 4}\n", "<root>", r"grow\.shards \(9\) exceeds"),
    ],
)
def test_check_spec_refuses_what_would_fail_later(tmp_path, body, field, why):
    with pytest.raises(SpecError) as e:
        load_checked_spec(str(_write(tmp_path, "late", BASE + body)))
    assert f"field '{field}" in str(e.value) and re.search(why, str(e.value)), str(e.value)


def test_a_reward_named_by_import_path_has_one_name_from_spec_to_store(tmp_path):
    """'pkg.mod:factory' is called 'factory' in the spec, the model the factory made and the store."""
    from rest_pipeline.core.rewards.factory import make_rewards

    spec = load_checked_spec(str(_write(tmp_path, "mine", BASE + "reward: {model: 'rest_pipeline_tests.test_probes:"
                                        "recall_reward', extra: [chrf]}\n")))  # fmt: skip
    assert (spec.reward.model, spec.reward.extra) == ("recall_reward", ["chrf"])
    assert spec.reward.imports == {"recall_reward": "rest_pipeline_tests.test_probes:recall_reward"}
    assert [m.name for m in make_rewards(spec, tmp_path)] == ["recall_reward", "chrf"]  # the factory's says 'recall'
    assert type(spec.reward).model_validate(spec.reward.model_dump()) == spec.reward  # a dump reads back the same


def test_unknown_dataset_language_pair_and_split_are_refused_at_check_time(tmp_path):
    for data, why in [
        ("dataset: nosuch, source_lang: de, target_lang: en", "unknown dataset 'nosuch'"),
        ("dataset: multi30k_de_en, source_lang: en, target_lang: de", "is de->en"),
    ]:
        text = f"data: {{{data}, train: train, valid: val, test: test_2016_flickr}}\n"
        with pytest.raises(SpecError, match=why):
            load_checked_spec(str(_write(tmp_path, "data", text)))
    with pytest.raises(SpecError, match=r"field 'data\.valid': 'multi30k_de_en' has no split 'dev'"):
        load_checked_spec(str(_write(tmp_path, "split", BASE.replace("valid: val", "valid: dev"))))


def test_duplicate_keys_are_refused_and_exponents_are_numbers(tmp_path):
    with pytest.raises(SpecError, match="duplicate key 'bc'"):
        load_spec(_write(tmp_path, "dup", BASE + "bc: {lr: 0.1}\nbc: {lr: 0.2}\n"))
    assert load_spec(_write(tmp_path, "exp", BASE + "bc: {lr: 1e-3}\n")).bc.lr == 0.001


def test_one_resolution_order_and_a_bad_file_hides_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("REST_EXPERIMENTS_DIR", str(tmp_path))
    _write(tmp_path, "smoke", BASE + "description: mine\n")  # shadows the packaged smoke, everywhere
    _write(tmp_path, "broken", BASE + "bc: {epochs: -1}\n")
    assert load_spec(find_spec("smoke")).description == "mine"
    errors: list[SpecError] = []
    specs = {s.name: s for s in all_specs(errors)}
    assert specs["smoke"].description == "mine" and "default" in specs and "broken" not in specs
    assert len(errors) == 1 and "broken.yaml" in str(errors[0]) and "bc.epochs" in str(errors[0])


def test_each_bad_file_is_its_own_error_and_hides_no_other(tmp_path, monkeypatch):
    """Two specs branching from each other, a relative or broken reward module, a missing parent: each is a
    one-line error naming its file and field, and every other experiment still lists."""
    monkeypatch.setenv("REST_EXPERIMENTS_DIR", str(tmp_path))
    _write(tmp_path, "ping", "branch: {from: pong, at: grow_1}\n")
    _write(tmp_path, "pong", "branch: {from: ping, at: grow_1}\n")
    _write(tmp_path, "relative", BASE + "reward: {model: '.x:y'}\n")
    _write(tmp_path, "broken_module", BASE + "reward: {model: 'rest_pipeline_tests.no_such_module:f'}\n")
    _write(tmp_path, "orphan", "branch: {from: nosuchparent, at: grow_1}\n")
    _write(tmp_path, "huge", BASE + f"description: {'x' * 5_000_000}\n")
    _write(tmp_path, "nogrows", BASE + "improve: {grows: 0}\n")
    errors: list[SpecError] = []
    specs = {s.name for s in checked_specs(errors)}
    assert {"default", "smoke"} <= specs and not specs & {"ping", "pong", "relative", "orphan", "huge", "nogrows"}
    text = {Path(str(e).split(":")[0]).stem: str(e) for e in errors}
    assert "field 'branch.from'" in text["ping"] and "ping → pong → ping" in text["ping"]
    assert "pong → ping → pong" in text["pong"]
    assert "reward.model" in text["relative"] and "absolute import path" in text["relative"]
    assert "reward.model" in text["broken_module"] and "could not be imported" in text["broken_module"]
    assert "field 'branch.from'" in text["orphan"] and "unknown experiment 'nosuchparent'" in text["orphan"]
    assert "description" in text["huge"] and len(text["huge"]) < 1000
    assert "improve.grows" in text["nogrows"]


@pytest.mark.parametrize("name", ["iwslt14_de_en", "wmt20_zh_en"])
def test_paper_scale_specs_validate_as_gpu_cluster_experiments(name):
    """The paper's settings, checked by `rest check-spec` as a user would (they run once data are present)."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "rest_pipeline.cli", "check-spec", name, "--json"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    spec = load_spec(find_spec(name))
    assert spec.compute.device == "cuda" and spec.grow.compute_type == "float16"
    assert spec.policy.encoder_layers == spec.policy.decoder_layers == 6
    paper = {"iwslt14_de_en": (100, [0.0, 0.7, 0.8, 0.9, 0.95]), "wmt20_zh_en": (25, [0.0, 0.7, 0.8, 0.9])}[name]
    assert (spec.grow.sampling.n, spec.improve.filter.values) == paper
    assert spec.grow.sampling.temperature == 0.8 and spec.tokenizer.vocab_size == 32000
    assert json.loads(out.stdout[out.stdout.index("{") :])["name"] == name


@pytest.mark.parametrize("name", [p.stem for p in Path(find_spec("default")).parent.glob("*.yaml")])
def test_no_packaged_spec_lets_a_clock_decide_weights(name):
    """BC and Improve steps stop on epochs, updates or patience: the same spec and seed give the same model
    on a quiet or a loaded machine (a time budget is an opt-in cap, never in a shipped spec)."""
    spec = load_spec(find_spec(name))
    assert spec.bc.time_budget_minutes is None and spec.improve.train.time_budget_minutes is None


def test_the_default_trains_bc_to_convergence_and_runs_the_control():
    spec = load_spec(find_spec("default"))
    assert spec.bc.patience is not None and spec.bc.decay in ("cosine", "linear")
    assert spec.improve.train.max_steps is not None and spec.improve.control
