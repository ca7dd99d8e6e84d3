"""Grow core: reproducible sampling, and a killed scoring run that resumes without loss,
duplication or re-scoring."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from rest_pipeline.core.grow.sampling import CT2Sampler, HFSampler, sample_candidates
from rest_pipeline.core.policy.model import save_policy
from rest_pipeline.core.rewards.base import ChrFReward
from rest_pipeline.core.rewards.scoring import score_candidates
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.side_records import ShardCost
from rest_pipeline.spec import SamplingSpec
from rest_pipeline_tests.synthetic import pairs, tiny_model, tokenizer_dir

ROOT = Path(__file__).resolve().parent.parent


def test_sampling_is_seeded_and_complete(tmp_path):
    model, tok = tiny_model(tokenizer_dir(tmp_path))
    ckpt = save_policy(model, tok, tmp_path / "policy")
    sampler = HFSampler(ckpt)
    src, _ = pairs(25, seed=4)
    settings = SamplingSpec(n=4, temperature=0.8, max_new_tokens=10, seed=3)
    a = sample_candidates(sampler, src, settings, batch_tokens=200)
    b = sample_candidates(sampler, src, settings, batch_tokens=200)
    assert a == b
    assert all(len(c) == 4 for c in a)
    other = sample_candidates(
        sampler, src, SamplingSpec(n=4, temperature=0.8, max_new_tokens=10, seed=4), batch_tokens=200
    )
    assert other != a
    flat = [h for c in a for h in c]
    assert len(set(flat)) > len(src)  # temperature sampling, not greedy copies


class SlowChrF(ChrFReward):
    """Real chrF, slowed down so a kill lands mid-scoring."""

    def score(self, sources, hypotheses, references):
        time.sleep(0.4)
        return super().score(sources, hypotheses, references)


def build_store(root: Path) -> ExperimentStore:
    store = ExperimentStore(root)
    src, ref = pairs(60, seed=8)
    samples = [[f"{r} {k % 3}" for k in range(5)] for r in ref]  # duplicates inside each source
    store.write_candidates(
        experiment="t",
        grow=1,
        shard=0,
        source_ids=[f"s{i}" for i in range(60)],
        sources=src,
        references=ref,
        samples=samples,
        policy="p",
        decoding="d",
    )
    return store


def score_in_child(root: str) -> None:
    score_candidates(ExperimentStore(Path(root)), SlowChrF(), 1, 0, chunk=16, log=lambda m: print(m, flush=True))


def test_killed_scoring_resumes_without_loss_or_rescoring(tmp_path):
    store = build_store(tmp_path / "store")
    before = store.read_candidates(1, 0)
    code = f"from rest_pipeline_tests.test_grow import score_in_child; score_in_child({str(store.root)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    cache = store.cache_dir("chrf")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if cache.is_dir() and len(list(cache.glob("*.parquet"))) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_files = list(cache.glob("*.parquet"))
    assert len(done_files) >= 2, proc.stdout.read().decode()[-2000:]
    assert not store.scores_file("chrf", 1, 0).exists()  # the shard's score file is all-or-nothing
    already = sum(len(pd.read_parquet(f)) for f in done_files)

    counting = []

    class Counting(ChrFReward):
        def score(self, sources, hypotheses, references):
            counting.append(len(hypotheses))
            return super().score(sources, hypotheses, references)

    report = score_candidates(store, Counting(), 1, 0, chunk=16)
    assert report.newly_scored == report.unique_inputs - already  # nothing scored twice
    assert sum(counting) == report.newly_scored
    scores = pd.read_parquet(store.scores_file("chrf", 1, 0))
    after = store.read_candidates(1, 0)
    pd.testing.assert_frame_equal(before, after)  # candidates untouched: nothing lost or duplicated
    assert scores.candidate_id.tolist() == after.candidate_id.tolist()
    assert scores.score.between(0, 1).all()
    # Cached scores equal freshly computed ones.
    fresh = ChrFReward().score(after.source, after.hypothesis, after.reference)
    assert (abs(scores.score.to_numpy() - fresh) < 1e-9).all()


def test_a_rescore_from_the_cache_keeps_the_shards_scoring_cost(tmp_path):
    """Compute accounting: a re-materialized score (all from the cache) neither erases nor adds to what
    scoring the shard cost; scoring it with another model adds that model's time and inputs."""
    from rest_pipeline.core.grow.run import score_shard
    from rest_pipeline.core.rewards.base import BleuReward

    store = build_store(tmp_path / "exp")
    score_shard(store, [SlowChrF()], 1, 0, log=lambda m: None)
    first = store.find(ShardCost, grow=1, shard=0, stage="score")
    assert first is not None and first.seconds > 0.4 and first.items > 0
    score_shard(store, [SlowChrF()], 1, 0, log=lambda m: None)  # nothing new: the cost stands
    assert store.find(ShardCost, grow=1, shard=0, stage="score") == first
    score_shard(store, [SlowChrF(), BleuReward()], 1, 0, log=lambda m: None)
    both = store.find(ShardCost, grow=1, shard=0, stage="score")
    assert both.items == 2 * first.items and both.seconds > first.seconds
    store.drop_shard_cost(1, 0, "score")
    assert (
        store.find(ShardCost, grow=1, shard=0, stage="score") is None and [c.stage for c in store.shard_costs(1)] == []
    )


@pytest.fixture(scope="module")
def trained_policy(tmp_path_factory):
    """A tiny Marian trained enough to have a non-trivial, trained <pad> (decoder start) row."""
    from rest_pipeline.core.training.trainer import train_policy
    from rest_pipeline.spec import BCSpec

    tmp = tmp_path_factory.mktemp("ct2")
    model, tok = tiny_model(tokenizer_dir(tmp))
    spec = BCSpec(
        max_tokens=200,
        epochs=20,
        max_steps=150,
        lr=5e-3,
        warmup_steps=20,
        validate_every_steps=150,
        validate_pairs=10,
        label_smoothing=0.0,
        bucketing="jittered",  # this tiny task learns unreliably in one-length batches (test_bc.SPEC says more)
    )
    train_policy(
        model,
        tok,
        pairs(300, seed=1),
        pairs(10, seed=2),
        spec,
        tmp / "bc",
        seed=0,
        max_length=32,
        fingerprint="ct2",
        log=lambda m: None,
    )
    return model, tok, save_policy(model, tok, tmp / "policy")


def test_ctranslate2_decodes_exactly_like_hf(trained_policy):
    """Greedy and beam outputs of the converted model equal HF `generate`'s, first token included (our
    tied embeddings train the <pad> start row, which CTranslate2's stock Marian loader drops), for a saved
    checkpoint and for weights still in training alike."""
    from rest_pipeline.core.policy.ct2 import CT2Policy
    from rest_pipeline.core.policy.generate import translate, translate_checkpoint, translate_model
    from rest_pipeline.spec import DecodingSpec

    model, tok, ckpt = trained_policy
    pad_row = model.get_input_embeddings().weight[tok.pad_token_id]
    assert pad_row.abs().sum() > 0  # the case the stock converter gets wrong
    src, _ = pairs(40, seed=9)
    for dec in (
        DecodingSpec(name="greedy", max_new_tokens=16),
        DecodingSpec(name="beam", num_beams=4, max_new_tokens=16),
    ):
        hf = translate(model, tok, src, dec)
        assert len(set(hf)) > 5  # a trained model, not one repeated string
        assert translate_checkpoint(ckpt, src, dec, backend="ctranslate2") == hf
        assert translate_model(model, tok, src, dec, backend="ctranslate2") == hf
        for lanes in (1, 2):
            assert CT2Policy.from_checkpoint(ckpt, lanes=lanes).translate(src, dec) == hf
    ct2 = sample_candidates(
        CT2Sampler(ckpt), src, SamplingSpec(n=1, temperature=1.0, top_k=1, max_new_tokens=16, seed=0)
    )
    assert [c[0] for c in ct2] == translate(model, tok, src, DecodingSpec(name="greedy", max_new_tokens=16))


def test_ctranslate2_leaves_torch_on_all_its_threads(trained_policy):
    """A CTranslate2 translator built with intra_threads=1 sets the calling thread's OpenMP count, which
    torch shares: training after a validation ran on one core. Building one must not change torch's."""
    import torch

    from rest_pipeline.core.policy.ct2 import CT2Policy
    from rest_pipeline.core.policy.ct2_lane import sample_tokens
    from rest_pipeline.spec import DecodingSpec

    _, _, ckpt = trained_policy
    torch.set_num_threads(2)
    policy = CT2Policy.from_checkpoint(ckpt, lanes=2)  # 2 lanes: each translator thread gets 1 core
    policy.translate(["ein hund"], DecodingSpec(name="greedy", max_new_tokens=8))
    assert torch.get_num_threads() == 2
    sample_tokens(str(policy.model_dir), "cpu", "float32", 1, policy.tokens(["ein hund"]), 2, 0.8, 0, 1.0, 8, [], 1)
    assert torch.get_num_threads() == 2  # the one-lane path samples in this process


@pytest.mark.slow
def test_ctranslate2_sampling_depends_on_the_seed_only(trained_policy):
    """Batches sampled concurrently on lane processes give the same candidates as one lane, run after run,
    at float32 and int8; another seed gives other candidates."""
    _, _, ckpt = trained_policy
    src, _ = pairs(120, seed=4)
    settings = SamplingSpec(n=4, temperature=0.8, max_new_tokens=16, seed=5)
    for compute_type in ("float32", "int8"):
        runs = []
        for lanes in (1, 2, 2):
            sampler = CT2Sampler(ckpt, compute_type=compute_type)
            sampler.policy.lanes = sampler.lanes = lanes
            runs.append(sample_candidates(sampler, src, settings, batch_tokens=120))
        assert runs[0] == runs[1] == runs[2], compute_type
        assert len({h for hs in runs[0] for h in hs}) > len(src)  # real samples, not N greedy copies
    other = sample_candidates(CT2Sampler(ckpt), src, SamplingSpec(n=4, temperature=0.8, max_new_tokens=16, seed=6))
    assert other != runs[0]
    assert CT2Sampler(ckpt, compute_type="int8").name != CT2Sampler(ckpt).name  # stored shards know the precision


def test_rotating_sources_gives_each_grow_its_own_block(tmp_path):
    from rest_pipeline.core.grow.run import grow_sources
    from rest_pipeline.core.store.experiment import ExperimentStore
    from rest_pipeline.spec import load_spec

    store = ExperimentStore(tmp_path / "exp")
    store.corpus_dir.mkdir(parents=True)
    pd.DataFrame(
        {"source_id": [f"s{i}" for i in range(10)], "source": list("abcdefghij"), "target": list("ABCDEFGHIJ")}
    ).to_parquet(store.split_file("train"))
    spec = load_spec(Path(__file__).parents[1] / "rest_pipeline" / "specs" / "smoke.yaml")
    same = spec.model_copy(update={"grow": spec.grow.model_copy(update={"max_sources": 4})})
    rotate = spec.model_copy(update={"grow": same.grow.model_copy(update={"rotate_sources": True})})

    def ids(s, g):
        return list(grow_sources(s, store, g).source_id)

    assert ids(same, 1) == ids(same, 2) == ["s0", "s1", "s2", "s3"]
    assert ids(rotate, 1) == ["s0", "s1", "s2", "s3"]
    assert ids(rotate, 2) == ["s4", "s5", "s6", "s7"]
    assert ids(rotate, 3) == ["s8", "s9", "s0", "s1"]  # wraps round the corpus, no source twice in a grow
    everything = spec.model_copy(update={"grow": rotate.grow.model_copy(update={"max_sources": 50})})
    assert ids(everything, 2) == [f"s{i}" for i in range(10)]
