"""The learned COMET reward, trained for real on a slice of the WMT DA judgements."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rest_pipeline.core.rewards.base import RewardError
from rest_pipeline.core.rewards.learned import (
    CometReward,
    load_judgements,
    split_by_source,
    train_learned_reward,
)

JUDGEMENTS = "human_judgements/wmt15-17_da_seg.tsv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("learned") / "reward"
    report = train_learned_reward(data_dir / JUDGEMENTS, out, seed=3, epochs=8, max_rows=300, log=lambda m: None)
    return out, report


def test_split_by_source_never_leaks(data_dir):
    df = load_judgements(data_dir / JUDGEMENTS)
    assert set(df.lp.str[-2:]) == {"en"}
    parts = split_by_source(df, seed=0)
    assert sum(len(p) for p in parts.values()) == len(df)
    srcs = [set(p.src) for p in parts.values()]
    assert not (srcs[0] & srcs[1]) and not (srcs[0] & srcs[2]) and not (srcs[1] & srcs[2])


def test_malformed_judgements_name_the_line(tmp_path, data_dir):
    lines = (data_dir / JUDGEMENTS).read_text(encoding="utf-8").splitlines()[:6]
    cells = lines[3].split("\t")
    cells[-1] = "nan"
    lines[3] = "\t".join(cells)
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(RewardError, match=r"bad\.tsv:4: da_z is not a finite number"):
        load_judgements(bad)


@pytest.mark.slow
def test_trained_model_reloads_with_comet_and_ranks_sensibly(trained):
    out, report = trained
    assert -1 <= report.kendall_tau <= 1 and report.test_rows > 0
    from comet import load_from_checkpoint

    model = load_from_checkpoint(str(out / "checkpoints" / "model.ckpt"), local_files_only=True)
    assert type(model).__name__ == "RegressionMetric"
    reward = CometReward(out, name="learned")
    assert reward.needs_reference
    ref = "A man in a red jacket is riding a bicycle down the street."
    src = ["Ein Mann in einer roten Jacke fährt mit dem Fahrrad die Straße hinunter."] * 3
    good, corrupted, empty = reward.score(src, [ref, "Cats sleep under the table at night.", ""], [ref] * 3)
    assert good > corrupted and good > empty
    assert empty < 0.2
    scores = reward.score(src[:1] * 2, [ref, f"{ref} {ref}"], [ref] * 2)
    assert np.all((scores >= 0) & (scores <= 1))
    # The paper warns that repetition can fool reward models; we measure and report it.
    assert 0.0 <= report.repeat_raises_score_fraction <= 1.0


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(RewardError, match="not a COMET checkpoint"):
        CometReward(Path(tmp_path), name="learned")


@pytest.mark.slow
def test_ctranslate2_encoder_scores_like_comets_own(trained, data_dir):
    """The CTranslate2 encoder gives COMET's embeddings: exactly at float32, within the stated tolerance
    at int8 (docs/design.md), with the same held-out ranking quality; its scores never share a cache key."""
    from scipy.stats import kendalltau

    out, _ = trained
    test = split_by_source(load_judgements(data_dir / JUDGEMENTS), seed=3)["test"].head(500)
    src, mt, ref = list(test.src), list(test.mt), list(test.ref)
    torch_r = CometReward(out, name="learned", engine="torch")
    raw = torch_r.raw_scores(src, mt, ref)
    exact = CometReward(out, name="learned", engine="ctranslate2", compute_type="float32")
    assert np.abs(exact.raw_scores(src[:120], mt[:120], ref[:120]) - raw[:120]).max() < 1e-4
    torch.set_num_threads(2)
    int8 = CometReward(out, name="learned", engine="ctranslate2", compute_type="int8")
    raw_int8 = int8.raw_scores(src, mt, ref)
    assert torch.get_num_threads() == 2  # the encoder's single-threaded replicas leave torch its cores
    lo, hi = torch_r._lo, torch_r._hi
    diff = np.abs(np.clip((raw_int8 - lo) / (hi - lo), 0, 1) - np.clip((raw - lo) / (hi - lo), 0, 1))
    assert diff.mean() < 0.015 and diff.max() < 0.08, (diff.mean(), diff.max())
    tau = kendalltau(raw, test.da_z).statistic
    tau_int8 = kendalltau(raw_int8, test.da_z).statistic
    assert abs(tau_int8 - tau) <= 0.005, (tau, tau_int8)
    assert len({torch_r.version, exact.version, int8.version}) == 3


@pytest.mark.slow
def test_reward_model_is_trained_once_per_content_and_shared(tmp_path, data_dir):
    """Two experiments asking for the same reward model share one folder; other settings get their own."""
    from rest_pipeline.core.rewards.learned import train_shared_reward_model
    from rest_pipeline.core.store.experiment import ExperimentStore

    root = tmp_path / "reward_models"
    settings = dict(seed=3, epochs=2, max_rows=120, engine="torch", compute_type="int8")
    logs: list[str] = []
    key, path, report = train_shared_reward_model(data_dir / JUDGEMENTS, root, log=logs.append, **settings)
    again = train_shared_reward_model(data_dir / JUDGEMENTS, root, log=logs.append, **settings)
    assert again == (key, path, report) and "already trained" in logs[-1]
    other = train_shared_reward_model(data_dir / JUDGEMENTS, root, log=logs.append, **{**settings, "seed": 4})
    assert other[0] != key and other[1] != path
    for name in ("a", "b"):
        store = ExperimentStore(tmp_path / "experiments" / name)
        assert store.reward_models_root == root
        store.link_reward_model(key, path)
        assert store.reward_model_dir == path and store.reward_model() == report
        link = json.loads((store.root / "reward_model.json").read_text())
        assert link["path"] == f"../../reward_models/{key}"  # relative: the home folder can move


class _RunsCode:
    """A pickled object that would run code when loaded (what a store writer could plant)."""

    def __reduce__(self):
        import os

        return (os.system, (f"touch {_MARKER}",))


_MARKER = "/tmp/rest_pipeline_pickle_marker"


@pytest.mark.slow
def test_the_learned_reward_loads_weights_only_and_refuses_pickled_code(trained, tmp_path):
    """Scores from our weights-only loader equal COMET's own loader's; a checkpoint in the store that
    carries pickled code is refused, and the code never runs."""
    import shutil

    from comet import load_from_checkpoint

    from rest_pipeline.core.rewards.learned import load_comet

    out, _ = trained
    ours, comets = load_comet(out), load_from_checkpoint(str(out / "checkpoints" / "model.ckpt"), local_files_only=True)
    sample = [{"src": "Ein Hund läuft.", "mt": "A dog runs.", "ref": "A dog is running."}]
    a = ours.predict(sample, batch_size=1, gpus=0, progress_bar=False).scores
    b = comets.predict(sample, batch_size=1, gpus=0, progress_bar=False).scores
    assert a == pytest.approx(b, abs=1e-6)
    planted = tmp_path / "planted"
    shutil.copytree(out, planted)
    state = torch.load(planted / "checkpoints" / "model.ckpt", weights_only=True)
    state["hyper_parameters"] = {**state["hyper_parameters"], "note": _RunsCode()}
    torch.save(state, planted / "checkpoints" / "model.ckpt")
    Path(_MARKER).unlink(missing_ok=True)
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|global"):
        load_comet(planted)
    assert not Path(_MARKER).exists()
