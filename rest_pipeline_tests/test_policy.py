import json

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, MarianTokenizer

from rest_pipeline.core.evaluation.metrics import corpus_scores
from rest_pipeline.core.policy.generate import length_batches, translate
from rest_pipeline.core.policy.model import is_checkpoint, save_policy, weight_files, weights_hash
from rest_pipeline.core.policy.tokenizer import EOS_ID, FastEncoder, load_tokenizer
from rest_pipeline.spec import DecodingSpec
from rest_pipeline_tests.synthetic import pairs, tiny_model, tokenizer_dir


def test_tokenizer_is_a_marian_tokenizer_with_fixed_special_ids(tmp_path):
    tok = load_tokenizer(tokenizer_dir(tmp_path))
    assert isinstance(tok, MarianTokenizer)
    assert tok.eos_token_id == EOS_ID
    assert tok.pad_token_id == len(tok) - 1  # opus-mt layout: <pad> last, outside SentencePiece
    vocab = json.loads((tmp_path / "tok" / "vocab.json").read_text())
    assert vocab["</s>"] == EOS_ID and vocab["<pad>"] == len(vocab) - 1


def test_fast_encoder_matches_hf_tokenizer(tmp_path):
    tok = load_tokenizer(tokenizer_dir(tmp_path))
    src, tgt = pairs(50, seed=3)
    enc = FastEncoder(tok)
    assert enc._sp is not None  # the fast path is really used
    assert enc.encode(src, 64) == tok(src)["input_ids"]
    assert enc.encode(tgt, 64, target=True) == tok(text_target=tgt)["input_ids"]
    assert all(len(x) <= 4 and x[-1] == EOS_ID for x in enc.encode(src, 4))


def test_checkpoint_round_trips_through_from_pretrained(tmp_path):
    model, tok = tiny_model(tokenizer_dir(tmp_path))
    path = save_policy(model, tok, tmp_path / "ckpt")
    assert (path / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".ckpt.*"))  # atomic: no temp dirs left behind
    loaded = AutoModelForSeq2SeqLM.from_pretrained(str(path))
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    src, _ = pairs(5, seed=9)
    dec = DecodingSpec(name="g", max_new_tokens=12)
    assert translate(model, tok, src, dec) == translate(loaded, load_tokenizer(path), src, dec)


def test_translate_keeps_input_order_across_length_batches(tmp_path):
    model, tok = tiny_model(tokenizer_dir(tmp_path))
    src, _ = pairs(30, seed=5)
    dec = DecodingSpec(name="g", max_new_tokens=10)
    together = translate(model, tok, src, dec, batch_tokens=10_000)
    one_by_one = [translate(model, tok, [s], dec)[0] for s in src]
    assert together == one_by_one
    beams = translate(model, tok, src[:4], DecodingSpec(name="b", num_beams=3, max_new_tokens=10))
    assert len(beams) == 4


def test_length_batches_respect_budget():
    lengths = [5, 50, 7, 9, 48, 3, 30]
    batches = length_batches(lengths, max_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= 100 or len(b) == 1


def test_corpus_scores():
    refs = ["the cat sat on the mat", "a dog runs in the park"]
    perfect = corpus_scores(refs, refs)
    assert round(perfect.bleu, 6) == 100.0 and round(perfect.chrf, 6) == 100.0
    worse = corpus_scores(["the cat sat on a mat", "a dog runs in a park"], refs)
    assert 0 < worse.bleu < 100 and worse.chrf < 100
    assert "BLEU" in perfect.bleu_signature or "nrefs" in perfect.bleu_signature


def test_a_sharded_folder_is_a_checkpoint_with_a_stable_identity(tmp_path):
    """Hub folders of large models come in shards; save_policy writes one file whatever the size."""
    model, tok = tiny_model(tokenizer_dir(tmp_path))
    one = save_policy(model, tok, tmp_path / "one")
    assert [f.name for f in weight_files(one)] == ["model.safetensors"]
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="200KB")
    tok.save_pretrained(sharded)
    shards = weight_files(sharded)
    assert len(shards) > 1 and is_checkpoint(sharded)
    before = weights_hash(sharded)
    assert before == weights_hash(sharded) != weights_hash(one)
    with open(shards[-1], "ab") as fh:  # any shard's change is a new identity
        fh.write(b" ")
    assert weights_hash(sharded) != before
    shards[0].unlink()  # an incomplete folder is not a checkpoint, and says why it has no identity
    assert not is_checkpoint(sharded)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        weights_hash(sharded)
