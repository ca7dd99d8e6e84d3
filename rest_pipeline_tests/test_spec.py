from pathlib import Path

import pytest

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
    child = load_spec(
        _write(tmp_path, "child", "branch: {from: default, at: grow_1}\nimprove: {grows: 1, loss: gold}\n")
    )
    default = load_spec(find_spec("default"))
    assert child.branch.parent == "default" and child.branch.grow == 1
    assert (child.data, child.bc, child.reward, child.seed) == (default.data, default.bc, default.reward, default.seed)
    assert child.improve.loss == "gold" and child.improve.grows == 1
    assert child.improve.filter == default.improve.filter and child.improve.train == default.improve.train
    other = "branch: {from: default, at: grow_1}\nimprove: {grows: 1, filter: {kind: threshold, values: [0.5]}}\n"
    assert load_spec(_write(tmp_path, "thr", other)).improve.filter.kind == "threshold"  # replaced whole
    with pytest.raises(SpecError, match=r"field 'bc': a branch reuses its parent's bc"):
        load_spec(_write(tmp_path, "bad", "branch: {from: default, at: grow_1}\nbc: {lr: 0.1}\n"))
    with pytest.raises(SpecError, match="has only 2 grows"):
        load_spec(_write(tmp_path, "far", "branch: {from: default, at: grow_3}\n"))
    with pytest.raises(SpecError, match="unknown experiment 'nope'"):
        load_spec(_write(tmp_path, "orphan", "branch: {from: nope, at: grow_1}\n"))
