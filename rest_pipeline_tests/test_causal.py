"""Decoder-only policies: prompt masking, where completions end, seeded sampling, LoRA adapters."""

import json
import shutil

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rest_pipeline.core.grow.sampling import HFSampler
from rest_pipeline.core.policy.family import IGNORE, CausalLM, PromptFormat, family_of
from rest_pipeline.core.policy.generate import translate
from rest_pipeline.core.policy.model import (
    LINEAGE_FILE,
    export_merged,
    is_checkpoint,
    load_policy,
    save_policy,
    weights_hash,
    with_lora,
)
from rest_pipeline.core.training.losses import token_logprobs
from rest_pipeline.core.training.trainer import train_policy
from rest_pipeline.spec import BCSpec, DecodingSpec, LoraSpec, SamplingSpec
from rest_pipeline_tests.synthetic import pairs, tiny_causal, tokenizer_dir

GREEDY = DecodingSpec(name="greedy", num_beams=1, max_new_tokens=12)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny causal LM BC-trained on the synthetic task, saved as a checkpoint folder."""
    root = tmp_path_factory.mktemp("causal")
    model, tok = tiny_causal(tokenizer_dir(root))
    spec = BCSpec(max_tokens=300, epochs=100, max_steps=300, lr=5e-3, warmup_steps=30, validate_every_steps=150,
                  validate_pairs=30, save_every_steps=100, label_smoothing=0.0)  # fmt: skip
    result = train_policy(model, tok, pairs(300, seed=1), pairs(30, seed=2), spec, root / "bc", seed=3, max_length=32,
                      fingerprint="causal", log=lambda m: None)  # fmt: skip
    return root, result


def test_bc_trains_a_causal_lm_on_completions(trained):
    root, result = trained
    rows = [r for r in result.history if "valid_loss" in r]
    assert rows[-1]["valid_loss"] < 2.0  # an untrained model: ln(41 tokens) = 3.7
    assert result.best_metric > 3.0  # greedy BLEU on held-out pairs, prompted
    model = load_policy(result.best_dir)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.rest_prompt["template"] == "translate: {source} =>"  # the prompt travels in config.json


def test_loss_sees_only_completion_tokens_and_left_padding_changes_nothing(trained):
    root, result = trained
    model, tok = load_policy(result.best_dir).eval(), None
    from rest_pipeline.core.policy.tokenizer import load_tokenizer

    tok = load_tokenizer(result.best_dir)
    family = family_of(model, tok)
    sources, targets = ["haus baum katze rot", "hund"], ["house tree cat red", "dog"]
    src, tgt = family.encode_sources(sources, 32), family.encode_targets(targets, 32)
    batch = family.collate(src, tgt)
    # Labels: exactly the completion tokens (target then EOS); nothing of the prompt.
    for row, c in enumerate(tgt):
        labels = batch.labels[row].tolist()
        assert labels[: len(c)] == c and set(labels[len(c) :]) <= {IGNORE} and c[-1] == tok.eos_token_id
    assert batch.target_tokens == sum(len(c) for c in tgt)
    with torch.no_grad():
        logp, mask = token_logprobs(family.forward(model, batch).logits, batch.labels)
        # By hand, one unpadded sequence at a time: log p(completion token | prompt, earlier completion).
        for row, (s, c) in enumerate(zip(src, tgt, strict=True)):
            ids = torch.tensor([s + c])
            logits = model(input_ids=ids).logits[0]
            by_hand = torch.log_softmax(logits[len(s) - 1 : len(s) - 1 + len(c)], -1)[torch.arange(len(c)), c]
            assert torch.allclose(logp[row][mask[row]], by_hand, atol=1e-4)
    # The prompt's tokens get no gradient signal of their own: changing a prompt's label-free positions'
    # targets is impossible, and the loss's gradient w.r.t. logits at prompt positions is zero.
    model.zero_grad()
    out = model(**batch.inputs)
    out.logits.retain_grad()
    p, t = batch.prompt_width, batch.labels.shape[1]
    lp, m = token_logprobs(out.logits[:, p - 1 : p - 1 + t], batch.labels)
    (-(lp * m).sum()).backward()
    assert out.logits.grad[:, : p - 1].abs().sum() == 0 and out.logits.grad[:, p - 1 :].abs().sum() > 0


def test_completion_ends_at_eos_for_sentencepiece_and_at_newline_for_a_byte_level_vocabulary(trained, tmp_path):
    root, result = trained
    model = load_policy(result.best_dir).eval()
    from rest_pipeline.core.policy.tokenizer import load_tokenizer

    tok = load_tokenizer(result.best_dir)
    family = family_of(model, tok)
    outs = family.generate(model, family.encode_sources(["haus baum", "katze"], 32), do_sample=False,
                           num_beams=1, max_new_tokens=40)  # fmt: skip
    for ids in outs:  # cut at the first EOS (kept), nothing after it
        assert tok.eos_token_id not in ids[:-1]
        assert ids[-1] == tok.eos_token_id or len(ids) == 40
    assert family.decode([[*tok("house tree").input_ids[:-1], tok.eos_token_id, 5, 6]]) == ["house tree"]
    # SentencePiece normalises newlines away: asking to stop at one is a clear error.
    with pytest.raises(ValueError, match="newline"):
        CausalLM(tok, PromptFormat(stop="newline"))
    # A byte-level BPE (as Llama 3 / Qwen use) keeps newlines: completions end there.
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["a house\nthe tree\n", "big dog\nred cat", "one\n\ntwo.\n\n"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")
    byte_family = CausalLM(fast, PromptFormat(template="{source} =", stop="newline"))
    # With a chat template (instruction models), the prompt is the user's turn of it.
    fast.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"
    chat = CausalLM(fast, PromptFormat(template="Translate: {source}", stop="newline"))
    assert fast.decode(chat.encode_sources(["red cat"], 16)[0]) == "[user] Translate: red cat\n[assistant]"
    assert fast.decode(CausalLM(fast, PromptFormat(template="Translate: {source}", chat_template=False))
                       .encode_sources(["red cat"], 16)[0]) == "Translate: red cat"  # fmt: skip
    fast.chat_template = None
    target = byte_family.encode_targets(["red cat"], 16)[0]
    assert fast.decode(target).endswith("\n") and fast.eos_token_id not in target
    assert byte_family.decode([fast("big dog\nthe tree").input_ids]) == ["big dog"]
    config = LlamaConfig(vocab_size=len(fast), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=fast.pad_token_id,
                         eos_token_id=fast.eos_token_id)  # fmt: skip
    torch.manual_seed(0)
    lm = LlamaForCausalLM(config).eval()
    # Any token that writes a newline ends a completion, merged ones ("\n\n") included.
    merged = [i for i in range(len(fast)) if "\n\n" in fast.decode([i])]
    assert merged and set(merged) <= byte_family.stops and byte_family.end[-1] in byte_family.stops
    ends = {i for i in range(len(fast)) if "\n" in fast.decode([i])} | {fast.eos_token_id}
    assert byte_family.stops == ends
    for ids in byte_family.generate(lm, byte_family.encode_sources(["a house", "big dog"], 16), do_sample=True,
                                    temperature=2.0, max_new_tokens=30, num_return_sequences=4):  # fmt: skip
        stops = [i for i, t in enumerate(ids) if t in ends]
        assert stops in ([], [len(ids) - 1])  # the first end token closes the completion


def test_a_seeded_sampler_gives_the_same_candidates_twice(trained):
    _, result = trained
    settings = SamplingSpec(n=4, temperature=1.0, max_new_tokens=12, seed=3)
    sources = ["haus baum", "katze rot hund", "blau"]
    first = HFSampler(result.best_dir, 32).sample(sources, settings, batch_seed=11)
    again = HFSampler(result.best_dir, 32).sample(sources, settings, batch_seed=11)
    other = HFSampler(result.best_dir, 32).sample(sources, settings, batch_seed=12)
    assert first == again and first != other
    assert [len(c) for c in first] == [4, 4, 4]


def test_lora_adapter_saved_and_reloaded_gives_identical_outputs(trained, tmp_path):
    root, result = trained
    from rest_pipeline.core.policy.tokenizer import load_tokenizer

    parent = tmp_path / "parent"
    shutil.copytree(result.best_dir, parent)
    tok = load_tokenizer(parent)
    model = with_lora(load_policy(parent), LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj"]), parent)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in model.parameters()) / 5
    with torch.no_grad():  # move the adapters away from their zero start so they change outputs
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.eval()
    adapter = save_policy(model, tok, tmp_path / "step" / "best")
    assert is_checkpoint(adapter) and not (adapter / "model.safetensors").exists()
    lineage = json.loads((adapter / LINEAGE_FILE).read_text())
    assert lineage == {"parent": "../../parent", "parent_hash": weights_hash(parent)}
    assert weights_hash(adapter) not in (weights_hash(parent), lineage["parent_hash"])
    reloaded = load_policy(adapter).eval()
    sources = ["haus baum katze", "hund rot", "klein gross blau laufen"]
    family = family_of(reloaded, tok)
    batch = family.collate(family.encode_sources(sources, 32), family.encode_targets(["house tree"] * 3, 32))
    with torch.no_grad():
        live = family_of(model, tok).forward(model, batch).logits
        back = family_of(reloaded, tok).forward(reloaded, batch).logits
        plain = family_of(reloaded, tok).forward(load_policy(parent).eval(), batch).logits
    assert torch.allclose(live, back, atol=1e-4) and not torch.allclose(back, plain, atol=1e-3)
    assert translate(model, tok, sources, GREEDY) == translate(reloaded, tok, sources, GREEDY)
    # A merged export is a plain checkpoint that transformers loads anywhere, with the same outputs.
    merged = export_merged(adapter, tmp_path / "export")
    plain_hf = AutoModelForCausalLM.from_pretrained(str(merged)).eval()
    with torch.no_grad():
        assert torch.allclose(family_of(plain_hf, tok).forward(plain_hf, batch).logits, back, atol=1e-4)
    # The adapter names its parent by hash: a changed parent is refused, not silently merged into.
    shutil.copy(result.best_dir.parent / "last" / "model.safetensors", parent / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="LoRA parent"):
        load_policy(adapter)


def test_a_missing_model_or_a_wrong_backend_is_a_clear_error(monkeypatch, tmp_path):
    from rest_pipeline.core.policy.tokenizer import load_tokenizer
    from rest_pipeline.spec import SpecError, load_spec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="nobody-here/no-such-model: no local folder"):
        load_policy("nobody-here/no-such-model")
    with pytest.raises(FileNotFoundError, match="nobody-here/no-such-model: no local folder"):
        load_tokenizer("nobody-here/no-such-model")
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        load_policy(tmp_path)
    data = (
        "data: {dataset: multi30k_de_en, source_lang: de, target_lang: en, train: train, valid: val, "
        "test: test_2016_flickr}\n"
    )
    spec = tmp_path / "engines.yaml"
    for body, why in [
        ("policy: {kind: marian_scratch}\ngrow: {backend: vllm}\n", "grow.backend: 'vllm' samples decoder-only"),
        ("policy: {kind: causal_lm}\ngrow: {backend: vllm, compute_type: int8}\n",
         "grow.compute_type: vLLM samples in float32, float16 or bfloat16, not 'int8'"),
        ("policy: {kind: causal_lm, prompt: x}\ngrow: {backend: ctranslate2}\n", "policy.prompt must contain"),
    ]:  # fmt: skip
        spec.write_text(data + body)
        with pytest.raises(SpecError, match=why):
            load_spec(spec)


def test_the_documented_llm_spec_validates(monkeypatch):
    from pathlib import Path

    from rest_pipeline.spec import find_spec, load_spec

    monkeypatch.setenv("REST_EXPERIMENTS_DIR", str(Path(__file__).resolve().parent.parent / "research" / "llm"))
    spec = load_spec(find_spec("llm_de_en"))
    assert spec.policy.kind == "causal_lm" and spec.policy.lora is not None and spec.compute.device == "cuda"
    assert (spec.grow.backend, spec.evaluation.backend, spec.tokenizer.kind) == ("hf", "hf", "pretrained")


def test_an_encoder_decoder_lora_step_converts_to_ctranslate2_merged(tmp_path):
    """LoRA works for Marian too: CTranslate2 converts the merged model and decodes like HF."""
    from rest_pipeline.core.policy.ct2 import CT2Policy
    from rest_pipeline_tests.synthetic import tiny_model

    model, tok = tiny_model(tokenizer_dir(tmp_path))
    spec = BCSpec(max_tokens=300, epochs=100, max_steps=250, lr=5e-3, warmup_steps=30, validate_every_steps=250,
                  validate_pairs=10, save_every_steps=250, label_smoothing=0.0)  # fmt: skip
    trained = train_policy(model, tok, pairs(300, seed=1), pairs(10, seed=2), spec, tmp_path / "bc", seed=3,
                       max_length=32, fingerprint="marian", log=lambda m: None)  # fmt: skip
    parent = trained.best_dir
    wrapped = with_lora(load_policy(parent), LoraSpec(r=2, alpha=4, target_modules=["q_proj", "v_proj"]), parent)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    adapter = save_policy(wrapped.eval(), tok, tmp_path / "step")
    sources = ["haus baum", "katze rot hund", "blau", "klein gross laufen springen"]
    merged = load_policy(adapter).eval()
    hf = translate(merged, tok, sources, GREEDY)
    family = family_of(merged, tok)
    batch = family.collate(family.encode_sources(sources, 32), family.encode_targets(hf, 32))
    with torch.no_grad():  # the adapter matters
        assert not torch.allclose(family.forward(merged, batch).logits,
                                  family.forward(load_policy(parent).eval(), batch).logits, atol=1e-3)  # fmt: skip
    assert CT2Policy.from_checkpoint(adapter).translate(sources, GREEDY) == hf


def _sources(n: int) -> list[str]:
    return pairs(n, seed=9)[0]


def _perturbed_adapter(parent, tok, out, scale=0.3):
    """A LoRA step on `parent` whose adapters are moved off their zero start, so they change outputs."""
    wrapped = with_lora(load_policy(parent), LoraSpec(r=2, alpha=4, target_modules=["q_proj", "v_proj"]), parent)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, scale)
    return save_policy(wrapped.eval(), tok, out)


def _mean_logprob(checkpoint, sources, samples) -> tuple[float, float]:
    """Mean and standard error of the samples' total log-probability under the policy."""
    import numpy as np

    from rest_pipeline.core.improve.finetune import behaviour_logprobs

    flat_src = [s for s, hyps in zip(sources, samples, strict=True) for _ in hyps]
    flat_hyp = [h for hyps in samples for h in hyps]
    totals = np.array([sum(t) for t in behaviour_logprobs(checkpoint, (flat_src, flat_hyp), 32)])
    return float(totals.mean()), float(totals.std(ddof=1) / np.sqrt(len(totals)))


def test_ctranslate2_runs_a_causal_lm_like_transformers(trained, tmp_path):
    """CTranslate2's Generator on a causal LM and on a LoRA chain's cached merge: greedy equal to HF,
    seeded samples independent of the lanes that drew them, and drawn from the same distribution
    (samples' mean log-probability under the policy within the noise of HF's own samples)."""
    from rest_pipeline.core.grow.sampling import CT2Sampler, sample_candidates
    from rest_pipeline.core.policy.ct2 import CT2Policy
    from rest_pipeline.core.policy.tokenizer import load_tokenizer

    _, result = trained
    parent = tmp_path / "bc"
    shutil.copytree(result.best_dir, parent)
    tok = load_tokenizer(parent)
    step1 = _perturbed_adapter(parent, tok, tmp_path / "g1" / "best")
    step2 = _perturbed_adapter(step1, tok, tmp_path / "g2" / "best", scale=0.2)  # a chain of two adapters
    sources = _sources(60)
    for checkpoint in (parent, step1, step2):
        hf = translate(load_policy(checkpoint).eval(), tok, sources, GREEDY)
        assert CT2Policy.from_checkpoint(checkpoint).translate(sources, GREEDY) == hf, checkpoint
    assert hf != translate(load_policy(parent).eval(), tok, sources, GREEDY)  # the adapters matter
    # The chain is merged once, beside it, keyed by the chain's hash; a changed adapter re-makes it.
    merged = tmp_path / "g2" / ".best.merged"
    stamp = (merged / "rest_merged_from").read_text()
    assert stamp == weights_hash(step2) and weights_hash(merged) != weights_hash(step1)
    made = (merged / "model.safetensors").stat().st_mtime_ns
    CT2Sampler(step2, 32)
    assert (merged / "model.safetensors").stat().st_mtime_ns == made
    settings = SamplingSpec(n=4, temperature=1.0, max_new_tokens=12, seed=5)
    one, two = CT2Sampler(step2, 32), CT2Sampler(step2, 32)
    one.policy.lanes = one.lanes = 1
    two.policy.lanes = two.lanes = 2
    first = sample_candidates(one, sources, settings, batch_tokens=200)
    assert sample_candidates(two, sources, settings, batch_tokens=200) == first  # lanes change nothing
    other = sample_candidates(one, sources, settings.model_copy(update={"seed": 6}), batch_tokens=200)
    assert other != first and [len(c) for c in first] == [4] * len(sources)
    assert one.engine["engine"] == "ctranslate2" and one.engine["merged"] == weights_hash(merged)
    two.close()
    # Same distribution: 480 samples each, at temperature 1.
    many = SamplingSpec(n=8, temperature=1.0, max_new_tokens=12, seed=7)
    ct2_mean, ct2_se = _mean_logprob(step2, sources, sample_candidates(one, sources, many))
    hf_mean, hf_se = _mean_logprob(step2, sources, sample_candidates(HFSampler(step2, 32), sources, many))
    assert abs(ct2_mean - hf_mean) < 4 * (ct2_se**2 + hf_se**2) ** 0.5, (ct2_mean, hf_mean, ct2_se, hf_se)


@pytest.mark.parametrize("loss", ["gold", "bvmpo", "oac"])
def test_every_improve_loss_trains_a_causal_lm(trained, tmp_path, loss):
    """The offline-RL losses see a causal LM's completion logits (OAC's critic its prompt states)."""
    from dataclasses import replace

    from rest_pipeline.core.improve.finetune import behaviour_logprobs
    from rest_pipeline.core.policy.family import hidden_size
    from rest_pipeline.core.policy.tokenizer import load_tokenizer
    from rest_pipeline.core.training.losses import make_loss
    from rest_pipeline.core.training.pairs import ExampleSignals

    _, result = trained
    model, tok = load_policy(result.best_dir), load_tokenizer(result.best_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    src, tgt = pairs(40, seed=9)
    signals = ExampleSignals(rewards=[0.2 + 0.6 * (i % 2) for i in range(40)], baselines=[0.5] * 40,
                             is_sample=[True] * 40)  # fmt: skip
    signals = replace(signals, behaviour_logprobs=behaviour_logprobs(result.best_dir, (src, tgt), 32))
    targets = family_of(model, tok).encode_targets(tgt, 32)
    assert [len(lp) for lp in signals.behaviour_logprobs] == [len(t) for t in targets]
    spec = BCSpec(max_tokens=300, epochs=10, max_steps=6, lr=1e-3, warmup_steps=1, validate_every_steps=6,
                  validate_pairs=5, save_every_steps=6, label_smoothing=0.0)  # fmt: skip
    out = train_policy(model, tok, (src, tgt), pairs(5, seed=2), spec, tmp_path / loss, seed=1, max_length=32,
                   fingerprint=loss, log=lambda m: None, loss_fn=make_loss(loss, d_model=hidden_size(model)),
                   signals=signals)  # fmt: skip
    assert out.steps == 6 and all(torch.isfinite(torch.tensor(r["valid_loss"])) for r in out.history)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_vllm_samples_a_causal_lm_like_transformers(trained, tmp_path):
    """vLLM in its own environment (built on first use): greedy equal to HF on a LoRA chain's merge,
    seeded samples reproducible, the same distribution as HF's samples, and failures that name the log."""
    from contextlib import closing

    from rest_pipeline.core.grow.sampling import VLLMSampler, sample_candidates
    from rest_pipeline.core.policy.tokenizer import load_tokenizer
    from rest_pipeline.core.policy.vllm_engine import VLLMError, ensure_env

    assert ensure_env().is_file()
    _, result = trained
    parent = tmp_path / "bc"
    shutil.copytree(result.best_dir, parent)
    tok = load_tokenizer(parent)
    step = _perturbed_adapter(_perturbed_adapter(parent, tok, tmp_path / "g1" / "best"), tok, tmp_path / "g2" / "best")
    sources = _sources(60)
    sampler = VLLMSampler(step, 32)
    try:
        family = sampler.family
        greedy = sampler._started().generate(
            family.encode_sources(sources, 32), n=1, temperature=0.0, top_k=None, top_p=None, max_tokens=12,
            stop_token_ids=sorted(family.stops), seed=0,
        )  # fmt: skip
        assert [family.decode(g)[0] for g in greedy] == translate(load_policy(step).eval(), tok, sources, GREEDY)
        settings = SamplingSpec(n=8, temperature=1.0, max_new_tokens=12, seed=5)
        first = sample_candidates(sampler, sources, settings, batch_tokens=200)
        assert sample_candidates(sampler, sources, settings, batch_tokens=200) == first
        assert sample_candidates(sampler, sources, settings.model_copy(update={"seed": 6}), batch_tokens=200) != first
        # One batch of 480 sequences: vLLM chunks its prefill (a seeded request's generator would then be
        # rewound, which a CPU generator cannot do); the samples still repeat, on this engine and a new one.
        whole = sample_candidates(sampler, sources, settings, batch_tokens=100_000)
        assert sample_candidates(sampler, sources, settings, batch_tokens=100_000) == whole
        with closing(VLLMSampler(step, 32)) as fresh:
            assert sample_candidates(fresh, sources, settings, batch_tokens=100_000) == whole
        assert sampler.engine == {"engine": "vllm", "version": "0.32.0", "dtype": "float32",
                                  "weights": weights_hash(tmp_path / "g2" / ".best.merged")}  # fmt: skip
        vllm_mean, vllm_se = _mean_logprob(step, sources, first)
        hf_mean, hf_se = _mean_logprob(step, sources, sample_candidates(HFSampler(step, 32), sources, settings))
        assert abs(vllm_mean - hf_mean) < 4 * (vllm_se**2 + hf_se**2) ** 0.5, (vllm_mean, hf_mean, vllm_se, hf_se)
        pid = sampler._engine.proc.pid
    finally:
        sampler.close()
    assert sampler._engine.proc.poll() is not None and not _alive(pid)
    # A model vLLM cannot load: a clear error naming the engine's log, and no engine left behind.
    broken = tmp_path / "broken"
    shutil.copytree(parent, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "hidden_size": 63}))
    bad = VLLMSampler(broken, 32)
    with pytest.raises(VLLMError, match=r"(?s)vllm: the engine did not start .*its log: .*\.broken\.vllm\.log"):
        bad.sample(sources[:2], settings, batch_seed=1)
    assert bad._engine is None or bad._engine.proc.poll() is not None


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
