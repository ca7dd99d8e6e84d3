"""What a spec will run, on how many pairs, and roughly how long on this machine (`rest check-spec`).

The time is an estimate, said as such: a few training updates and one sampling batch of the spec's
policy (random weights of its shape, or the user's folder) are timed here, and the counts of updates
and samples the spec asks for are multiplied out. Patience can stop BC and Improve earlier; grows on
CTranslate2 run ~5x faster than the transformers timing taken here (bench/grow_bench.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from rest_pipeline.core.corpus.files import read_files
from rest_pipeline.core.corpus.registry import get_dataset
from rest_pipeline.spec import ExperimentSpec

CT2_SPEEDUP = 5.0  # CTranslate2 over transformers' generate on a 2-core CPU (bench/results/grow.json)


@dataclass
class Plan:
    pairs: dict[str, int]  # per role; a carved split counts what it will take
    mean_chars: float  # of a training source and target together
    bc_updates: int
    grow_samples: list[int]  # per grow
    improve_updates: int
    control_updates: int


def pair_counts(spec: ExperimentSpec) -> tuple[dict[str, int], float]:
    """Pairs per split (the line policy applied for a user's files) and the mean characters of a pair."""
    data = spec.data
    if data.files is None:
        ds = get_dataset(data.dataset)
        counts = {r: ds.splits[getattr(data, r)].source.lines or 0 for r in ("train", "valid", "test")}
        counts["train"] = min(counts["train"], data.max_train_pairs or counts["train"])
        return counts, 110.0  # Multi30k/IWSLT-like sentences
    files = data.files
    train = read_files(files, "train", files.train, data.lines, None)
    counts, carved = {"train": len(train.sources)}, 0
    for role in ("valid", "test"):
        entry = getattr(files, role)
        if entry is None:
            counts[role], carved = files.carve_pairs, carved + files.carve_pairs
        else:
            counts[role] = len(read_files(files, role, entry, data.lines, None).sources)
    counts["train"] -= carved
    sample = list(zip(train.sources[:2000], train.targets[:2000], strict=True))
    return counts, sum(len(s) + len(t) for s, t in sample) / max(len(sample), 1)


def make_plan(spec: ExperimentSpec) -> Plan:
    pairs, chars = pair_counts(spec)
    tokens_per_pair = chars / 4.0  # ~4 characters per subword piece
    bc_per_epoch = max(1, math.ceil(pairs["train"] * tokens_per_pair * 1.3 / spec.bc.max_tokens))  # padding ~30 %
    bc_updates = spec.bc.max_steps or spec.bc.epochs * bc_per_epoch
    grow = spec.grow
    sources = min(pairs["train"], grow.max_sources or pairs["train"])
    imp = spec.improve
    step_updates = imp.train.max_steps or imp.train.epochs * bc_per_epoch
    improve_updates = imp.grows * imp.steps * step_updates
    return Plan(
        pairs=pairs,
        mean_chars=round(chars, 1),
        bc_updates=bc_updates,
        grow_samples=[sources * grow.sampling.n] * imp.grows,
        improve_updates=improve_updates,
        control_updates=improve_updates if imp.control else 0,
    )


def timed_rates(spec: ExperimentSpec, chars: float) -> tuple[float, float]:
    """(seconds per training update, seconds per sample) of the spec's policy shape, timed here."""
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(0)
    p = spec.policy
    if p.pretrained_path:
        from rest_pipeline.core.policy.model import load_policy

        model = load_policy(p.pretrained_path)
        vocab = model.config.vocab_size
    else:
        vocab = spec.tokenizer.vocab_size
        config = MarianConfig(
            vocab_size=vocab, d_model=p.d_model, encoder_layers=p.encoder_layers, decoder_layers=p.decoder_layers,
            encoder_attention_heads=p.attention_heads, decoder_attention_heads=p.attention_heads,
            encoder_ffn_dim=p.ffn_dim, decoder_ffn_dim=p.ffn_dim, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0, max_position_embeddings=512,
        )  # fmt: skip
        model = MarianMTModel(config)
    length = max(4, min(int(chars / 8), spec.tokenizer.max_length))  # one side of a pair, in pieces
    rows = max(1, spec.bc.max_tokens // (2 * length))
    ids = torch.randint(2, vocab, (rows, length))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    is_seq2seq = model.config.is_encoder_decoder
    times = []
    for _ in range(3):
        t = time.perf_counter()
        out = model(input_ids=ids, labels=ids) if is_seq2seq else model(input_ids=ids, labels=ids)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - t)
    model.eval()
    batch = ids[: min(8, rows)]
    t = time.perf_counter()
    with torch.inference_mode():
        kwargs = {"do_sample": True, "max_new_tokens": length, "min_new_tokens": length}
        model.generate(input_ids=batch, num_return_sequences=4, **kwargs)
    per_sample = (time.perf_counter() - t) / (len(batch) * 4)
    return min(times[1:]), per_sample


def describe(spec: ExperimentSpec, estimate: bool = True) -> list[str]:
    """Lines for people: what runs, on how many pairs, and (timed here) about how long."""
    plan = make_plan(spec)
    p, imp = plan.pairs, spec.improve
    corpus = spec.data.dataset or "your files"
    lines = [
        f"corpus: {corpus}: {p['train']:,} train / {p['valid']:,} valid / {p['test']:,} test pairs "
        f"(mean {plan.mean_chars:g} characters per pair)",
        f"BC: at most {plan.bc_updates:,} updates ({spec.bc.epochs} epochs of ~{spec.bc.max_tokens} tokens per batch"
        + (f", patience {spec.bc.patience}" if spec.bc.patience else "")
        + ")",
        f"reward: {spec.reward.model}" + (f" (+ {', '.join(spec.reward.extra)})" if spec.reward.extra else ""),
        f"ReST: {imp.grows} grows of {plan.grow_samples[0]:,} samples (N={spec.grow.sampling.n}), "
        f"{imp.steps} Improve steps each ({imp.filter.kind} {imp.filter.values}), "
        f"{plan.improve_updates:,} updates at most"
        + (f"; the originals-only control: {plan.control_updates:,} more" if plan.control_updates else ""),
    ]
    if not estimate:
        return lines
    update_s, sample_s = timed_rates(spec, plan.mean_chars)
    if spec.grow.backend == "ctranslate2":
        sample_s /= CT2_SPEEDUP
    minutes = {
        "BC": plan.bc_updates * update_s / 60,
        "grows": sum(plan.grow_samples) * sample_s / 60,
        "Improve + control": (plan.improve_updates + plan.control_updates) * update_s / 60,
    }
    total = sum(minutes.values())
    parts = ", ".join(f"{k} ~{v:.0f}" for k, v in minutes.items())
    lines.append(
        f"time on this machine (rough: {update_s:.2f} s per update and {sample_s * 1000:.0f} ms per sample timed "
        f"here; validation, scoring and evaluation add to it): ~{total:.0f} min ({parts})"
    )
    return lines
