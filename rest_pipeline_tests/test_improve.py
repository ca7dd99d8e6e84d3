"""Improve steps on a real tiny model: a step that helps is kept, one that does not hands its
parent on and stops the grow, an empty slice skips without training; lineage is complete."""

import pandas as pd
import pytest

from rest_pipeline.core.improve.assess import evaluate_step
from rest_pipeline.core.improve.chain import step_lr
from rest_pipeline.core.improve.control import ControlError, mirrored_steps, run_control
from rest_pipeline.core.improve.filtering import build_slice
from rest_pipeline.core.improve.step import run_improve_step
from rest_pipeline.core.policy.model import save_policy
from rest_pipeline.core.rewards.base import ChrFReward
from rest_pipeline.core.rewards.scoring import score_candidates
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.records import ControlRecord, Evaluation, StepRecord
from rest_pipeline.spec import (
    EvaluationSpec,
    ExperimentSpec,
    GrowSpec,
    ImproveSpec,
    ImproveTrainSpec,
    RewardSpec,
    SamplingSpec,
    ThresholdFilter,
    TokenizerSpec,
)
from rest_pipeline_tests.synthetic import MULTI30K, pairs, tiny_model, tokenizer_dir


def make_experiment(
    tmp_path, thresholds, lr_decay=1.0, include_references=True
) -> tuple[ExperimentSpec, ExperimentStore, ChrFReward]:
    spec = ExperimentSpec(
        name="t",
        seed=3,
        data=MULTI30K,  # the corpus itself is written below
        tokenizer=TokenizerSpec(vocab_size=41, max_length=32),
        improve=ImproveSpec(
            grows=1,
            filter=ThresholdFilter(kind="threshold", values=thresholds, first_above_mean=False),
            mix_originals=True,
            lr_decay=lr_decay,
            train=ImproveTrainSpec(
                max_tokens=200,
                epochs=50,
                max_steps=150,
                time_budget_minutes=None,
                lr=5e-3,
                warmup_steps=20,
                validate_every_steps=50,
                validate_pairs=30,
                label_smoothing=0.0,
                save_every_steps=50,
            ),
        ),
    )
    store = ExperimentStore(tmp_path / "exp")
    model, tok = tiny_model(tokenizer_dir(tmp_path), seed=1)  # untrained: the BC policy is poor
    save_policy(model, tok, store.base_policy_dir)
    src, tgt = pairs(200, seed=5)
    store.corpus_dir.mkdir(parents=True)
    for role, (s, t) in {"train": (src, tgt), "valid": pairs(30, seed=6)}.items():
        pd.DataFrame({"source_id": [f"{role}{i}" for i in range(len(s))], "source": s, "target": t}).to_parquet(
            store.split_file(role)
        )
    # Grow 1 stand-in: one poor sample per source (a scrambled target) plus the reference pair.
    store.write_candidates(
        experiment="t",
        grow=1,
        shard=0,
        source_ids=[f"train{i}" for i in range(len(src))],
        sources=src,
        references=tgt,
        samples=[[" ".join(reversed(t.split())) + " x"] for t in tgt],
        policy="base@x",
        decoding="hf:n=1",
        include_references=include_references,
    )
    reward = ChrFReward()
    score_candidates(store, reward, 1, 0)
    return spec, store, reward


@pytest.mark.slow
def test_improve_chain_keeps_improvements_and_stops_when_they_end(tmp_path):
    # Step 1 learns (lr 5e-3); step 2 has a vanishing lr (decay 1e-6) so it cannot beat its parent.
    spec, store, reward = make_experiment(tmp_path, [0.5, 0.6, 0.7], lr_decay=1e-6)
    for step, tau in enumerate(spec.improve.filter.values, start=1):
        build_slice(store, 1, step, "chrf", "threshold", tau, mix_originals=True)

    first = run_improve_step(spec, store, 1, 1, reward, log=lambda m: None)
    assert first.status == "improved"
    assert first.valid_reward > first.parent_valid_reward
    assert first.parent == "base" and first.parent_checkpoint == "policies/base"  # relative to the experiment
    assert first.checkpoint == first.trained_checkpoint == "policies/grow_1/improve_1/training/best"
    assert first.slice_kept > 0 and first.train_steps == 150 and first.lr == 5e-3
    # The validation reward says what it is: greedy on which valid sentences, which reward version.
    assert first.validation_signature.rewards == {"chrf": reward.version}
    assert "greedy" in first.validation_signature.decoding and "valid[:30]" in first.validation_signature.decoding

    second = run_improve_step(spec, store, 1, 2, reward, log=lambda m: None)
    assert second.status == "not_improved"
    assert second.parent == "grow_1/improve_1"
    assert second.checkpoint == first.checkpoint  # hands its parent on
    assert second.valid_reward == first.valid_reward

    third = run_improve_step(spec, store, 1, 3, reward, log=lambda m: None)
    assert third.status == "skipped" and "stopped improving at step 2" in third.skip_reason
    assert third.trained_checkpoint is None
    assert not store.training_dir(1, 3).exists()
    assert store.policy("grow_1/improve_3") == store.resolve(first.checkpoint) == store.policy("final")

    chain = store.lineage(1, 3)
    assert [(r.grow, r.step, r.parent) for r in chain] == [
        (1, 3, "grow_1/improve_2"),
        (1, 2, "grow_1/improve_1"),
        (1, 1, "base"),
    ]
    for rec in chain:
        assert rec.reward_model == "chrf" and rec.reward_version.startswith("sacrebleu-")
        assert rec.slice_path and rec.slice_hash and rec.corpus_hash and rec.grow_decoding == "hf:n=1"
    # With improve.patience 2 one miss does not end the grow: step 3 trains.
    patient = spec.model_copy(update={"improve": spec.improve.model_copy(update={"patience": 2})})
    third_again = run_improve_step(patient, store, 1, 3, reward, log=lambda m: None)
    assert third_again.trained_checkpoint is not None and third_again.status in {"improved", "not_improved"}
    # Re-running a finished step reuses its training instead of training again.
    again = run_improve_step(spec, store, 1, 1, reward, log=lambda m: None)
    assert again.checkpoint_hash == first.checkpoint_hash and store.get(StepRecord, grow=1, step=1).status == "improved"


def test_empty_slice_skips_the_step_without_training(tmp_path):
    spec, store, reward = make_experiment(tmp_path, [0.99], include_references=False)
    stats = build_slice(store, 1, 1, "chrf", "threshold", 0.99, mix_originals=False)
    assert stats.kept == 0 and stats.skip_reason.startswith("empty slice")
    rec = run_improve_step(spec, store, 1, 1, reward, log=lambda m: None)
    assert rec.status == "skipped" and rec.skip_reason == stats.skip_reason
    assert rec.checkpoint == "policies/base" and rec.trained_checkpoint is None
    assert not store.training_dir(1, 1).exists()


def test_learning_rate_falls_within_a_grow_and_restarts_with_the_next():
    imp = ImproveSpec(filter={"kind": "threshold", "values": [0.0, 0.7, 0.8]}, lr_decay=0.5, grow_lr_decay=0.1)
    lr = imp.train.lr
    assert [step_lr(imp, 1, i) for i in (1, 2, 3)] == pytest.approx([lr, lr / 2, lr / 4])
    assert [step_lr(imp, 2, i) for i in (1, 2, 3)] == pytest.approx([lr / 10, lr / 20, lr / 40])


@pytest.mark.slow
def test_control_mirrors_the_rest_chain_on_originals_only(tmp_path):
    spec, store, reward = make_experiment(tmp_path, [0.5])
    spec = spec.model_copy(
        update={
            "reward": RewardSpec(model="chrf"),
            "evaluation": EvaluationSpec(splits=["valid"]),
            "grow": GrowSpec(backend="hf", sampling=SamplingSpec(n=2)),
            "improve": spec.improve.model_copy(update={"diversity_sources": 5, "diversity_samples": 2}),
        }
    )
    with pytest.raises(ControlError, match="not complete"):
        mirrored_steps(spec, store)
    build_slice(store, 1, 1, "chrf", "threshold", 0.5, mix_originals=True)
    rest = run_improve_step(spec, store, 1, 1, reward, log=lambda m: None)
    assert rest.status == "improved"
    for g, i in ((0, 0), (1, 1)):
        evaluate_step(spec, store, g, i, [reward], log=lambda m: None)

    result = run_control(spec, store, [reward], log=lambda m: None)
    (step,) = result.steps
    assert step.mirrors == "grow_1/improve_1" and step.lr == rest.lr
    assert step.pairs == 200  # the reference pairs of the grown sources, no samples
    assert step.train_steps == rest.train_steps == 150
    assert step.status == "improved" and step.valid_reward > step.parent_valid_reward
    assert result.checkpoint not in (rest.checkpoint, "policies/base")
    assert store.policy("control") == store.resolve(result.checkpoint)
    bc = store.get(Evaluation, policy="base").splits["valid"].reward("chrf")
    ctl = store.get(Evaluation, policy="control").splits["valid"].reward("chrf")
    assert result.control_minus_bc["valid"]["reward_chrf"] == pytest.approx(ctl - bc, abs=1e-4)
    assert store.find(ControlRecord) == result
    bc_sig = store.get(Evaluation, policy="base").signature  # every stored score carries what produced it
    assert bc_sig.bleu.startswith("nrefs:1") and "nc:6|nw:0" in bc_sig.chrf
    assert bc_sig.rewards == {"chrf": reward.version}
    assert result.validation_signature == rest.validation_signature


@pytest.mark.parametrize("loss", ["gold", "bvmpo", "oac"])
def test_each_offline_rl_loss_trains_a_real_improve_step(tmp_path, loss):
    spec, store, reward = make_experiment(tmp_path, [0.5])
    train = spec.improve.train.model_copy(update={"max_steps": 30, "validate_every_steps": 15})
    spec = spec.model_copy(update={"improve": spec.improve.model_copy(update={"loss": loss, "train": train})})
    build_slice(store, 1, 1, "chrf", "threshold", 0.5, mix_originals=True)
    logs: list[str] = []
    rec = run_improve_step(spec, store, 1, 1, reward, log=logs.append)
    assert rec.loss == loss and rec.train_steps == 30 and rec.trained_checkpoint
    assert rec.status in {"improved", "not_improved"}
    assert all(r["valid_loss"] == r["valid_loss"] for r in rec.history)  # no NaN
    assert any("behaviour policy" in m for m in logs) == (loss == "oac")  # only OAC weighs against pi_b


@pytest.mark.slow
def test_one_sampling_setting_reaches_the_engine_and_a_sample_reaches_the_trainer(tmp_path, monkeypatch):
    """grow.sampling as written arrives at the engine call (with the seed rule's seed), its signature is
    stored with the candidates, and a kept sample is among the pairs the Improve trainer trains on."""
    import rest_pipeline.core.grow.run as grow_run
    import rest_pipeline.core.improve.finetune as finetune
    from rest_pipeline.core.grow.sampling import sampling_for

    spec, store, reward = make_experiment(tmp_path, [0.0])
    sampling = SamplingSpec(n=3, temperature=0.7, top_k=5, max_new_tokens=9)
    spec = spec.model_copy(update={"grow": GrowSpec(backend="hf", shards=1, max_sources=12, sampling=sampling)})

    engine_calls = []
    real_make_sampler = grow_run.make_sampler

    def recording_sampler(*args, **kwargs):
        sampler = real_make_sampler(*args, **kwargs)  # the real HF engine, its calls recorded
        real_sample = sampler.sample

        def sample(sources, settings, batch_seed):
            engine_calls.append(settings)
            return real_sample(sources, settings, batch_seed)

        sampler.sample = sample
        return sampler

    monkeypatch.setattr(grow_run, "make_sampler", recording_sampler)
    grow_run.grow_shard(spec, store, 1, 0, store.base_policy_dir, "base@walk", log=lambda m: None)
    assert engine_calls and all(c == sampling_for(spec, "grow", 1, 0) for c in engine_calls)
    assert all(c.model_dump() == sampling.model_dump() for c in engine_calls)  # nothing but the seed is derived
    stored = store.read_candidates(1, 0)
    samples = stored[stored.origin == "sample"]
    assert len(samples) == 12 * 3 and set(samples.decoding) == {f"hf:{sampling_for(spec, 'grow', 1, 0).signature()}"}

    score_candidates(store, reward, 1, 0)
    build_slice(store, 1, 1, "chrf", "threshold", 0.0, mix_originals=False)
    trained_on = []
    real_train = finetune.train_policy

    def recording_train(model, tokenizer, train, *args, **kwargs):
        for chunk in train.chunks(seed=0, epoch=0):  # the slice, streamed from its file
            trained_on.extend(zip(chunk.sources, chunk.targets, strict=True))
        return real_train(model, tokenizer, train, *args, **kwargs)

    monkeypatch.setattr(finetune, "train_policy", recording_train)
    run_improve_step(spec, store, 1, 1, reward, log=lambda m: None)
    kept = store.slice_rows(1, 1)
    kept_samples = kept[kept.origin == "sample"]
    assert len(kept_samples) and set(kept_samples.candidate_id) <= set(samples.candidate_id)
    assert set(zip(kept.source, kept.hypothesis, strict=True)) <= set(trained_on) and len(trained_on) == len(kept)
