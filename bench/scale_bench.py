"""Improve at the paper's scale: a synthetic IWSLT14-sized grow (160k sources x 100 samples + the
references = 16.16M scored candidates) written to a real store, then sliced and fed to the first
training batch by today's path and by the path of d524fff (before the slice streamed), each in its
own process, in the same run: wall time and peak RSS of each, and their ratios.

    python bench/scale_bench.py                       # paper size (~30-40 min on 2 cores)
    python bench/scale_bench.py --sources 16000       # a tenth, for a quick look

Old path (d524fff): D_g into pandas, registered back into DuckDB and filtered into pandas, written
with pandas, read back whole, hashed and tokenized as Python lists, batched over everything.
New path: D_g read once into a DuckDB table that spills to disk past 2 GB, the slice written by
DuckDB straight to Parquet in row groups, its statistics counted in SQL, and the trainer
(`trainer._set_up`, `trainer._epoch_batches`, the real ones) streaming the slice a row group at a
time. Both stop at the first training batch, and both include what the trainer does before it
(the data fingerprint, counting an epoch's batches). A path above `--rss-cap-gb` is killed and
reported as such (its ratio is then a lower bound). The synthetic store is kept in `--work` and
reused by a later run with the same size. Writes bench/results/scale.json (no absolute paths).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
REWARD = "synthetic"
RULE, PARAMETER = "threshold", 0.7  # keeps about a quarter of the samples (rewards ~ N(0.6, 0.15))
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


# -- the synthetic store -----------------------------------------------------------------------------
def vocabulary(rng: np.random.Generator, n: int = 6000) -> np.ndarray:
    lengths = rng.integers(1, 4, size=n)
    return np.array(["".join(rng.choice(SYLLABLES, size=k)) for k in lengths])


def write_store(root: Path, sources: int, samples: int, shard_sources: int, seed: int = 0) -> dict:
    """Grow 1 of experiment 'scale': `sources` x (`samples` + reference) candidates, scored."""
    from rest_pipeline.core.store.experiment import ExperimentStore

    rng = np.random.default_rng(seed)
    words = vocabulary(rng)
    store = ExperimentStore(root / "scale")
    t0 = time.perf_counter()
    rows = 0
    for shard, start in enumerate(range(0, sources, shard_sources)):
        n = min(shard_sources, sources - start)
        ids = [f"s{start + i:07d}" for i in range(n)]
        src_words = [rng.choice(words, size=rng.integers(8, 30)) for _ in range(n)]
        ref_words = [rng.choice(words, size=len(s)) for s in src_words]
        hyps = []
        for ref in ref_words:
            out = np.tile(ref, (samples, 1))
            k = rng.integers(0, 4, size=samples)  # 0-3 words substituted per sample: some repeat the reference
            for row in np.nonzero(k)[0]:
                out[row, rng.integers(0, len(ref), size=k[row])] = rng.choice(words, size=k[row])
            hyps.append([" ".join(r) for r in out])
        table = store.write_candidates(
            experiment="scale",
            grow=1,
            shard=shard,
            source_ids=ids,
            sources=[" ".join(s) for s in src_words],
            references=[" ".join(r) for r in ref_words],
            samples=hyps,
            policy="synthetic",
            decoding="synthetic",
        )
        score = np.clip(rng.normal(0.6, 0.15, size=len(table)), 0, 1)
        score[(table.origin == "reference").to_numpy()] = 0.95
        path = store.scores_file(REWARD, 1, shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.table({"candidate_id": table.candidate_id, "score": score, "reward_version": ["v1"] * len(table)}),
            path,
        )
        rows += len(table)
        print(f"store: shard {shard} written, {rows:,} candidates, {time.perf_counter() - t0:.0f}s", flush=True)
    size = sum(p.stat().st_size for p in (root / "scale").rglob("*.parquet"))
    return {"candidates": rows, "seconds": round(time.perf_counter() - t0, 1), "parquet_gb": round(size / 2**30, 2)}


def tokenizer_and_family(root: Path):
    """A SentencePiece tokenizer of the synthetic language (3k pieces) and a small Marian on it."""
    from rest_pipeline.core.policy.family import family_of
    from rest_pipeline.core.policy.model import build_marian
    from rest_pipeline.core.policy.tokenizer import load_tokenizer, train_sentencepiece
    from rest_pipeline.spec import PolicySpec, TokenizerSpec

    tok_dir = root / "tokenizer"
    if not tok_dir.exists():
        rng = np.random.default_rng(1)
        words = vocabulary(np.random.default_rng(0))
        texts = [" ".join(rng.choice(words, size=20)) for _ in range(20_000)]
        train_sentencepiece(texts, TokenizerSpec(vocab_size=3000, model_type="unigram"), tok_dir)
    tok = load_tokenizer(tok_dir)
    model = build_marian(PolicySpec(d_model=64, encoder_layers=1, decoder_layers=1, ffn_dim=128), tok, 64)
    return model, tok, family_of(model, tok)


def train_settings():
    from rest_pipeline.spec import BCSpec

    return BCSpec(max_tokens=2500, max_steps=300, validate_pairs=10)


# -- the two paths -----------------------------------------------------------------------------------
def old_path(root: Path) -> dict:
    """d524fff: pandas from the grow to the first batch."""
    from rest_pipeline.core.improve.filtering import GrowRows, select
    from rest_pipeline.core.store.experiment import ExperimentStore
    from rest_pipeline.core.store.queries import grow_rewards
    from rest_pipeline.core.training.batching import make_batches

    store, times, t = ExperimentStore(root / "scale"), {}, time.perf_counter()
    dg = grow_rewards(store, REWARD, 1)  # every candidate of the grow as Python objects
    assert not dg.reward.isna().any()
    con = duckdb.connect()
    con.register("dg", dg.drop(columns=["grow"]))
    rows = select(GrowRows(con, 1, 0, 0, 0, 0.0), RULE, PARAMETER, True).df()
    mean, samples = float(dg.reward.mean()), int((dg.origin == "sample").sum())
    filtered = rows[(rows.kept_by == "filter") & (rows.origin == "sample")]
    stats = {"kept": len(rows), "kept_samples": len(filtered), "sources": int(dg.source_id.nunique())}
    stats.update(mean_reward=round(mean, 5), kept_fraction=round(len(filtered) / samples, 5))
    path = store.slice_dir(1, 1) / "part.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.assign(step=1).to_parquet(path, index=False)
    del dg, rows, filtered
    times["slice_seconds"] = round(time.perf_counter() - t, 1)
    phase(times, stats)

    t = time.perf_counter()
    rows = pd.read_parquet(path)  # the step read the slice back whole
    hashlib.sha256(pd.util.hash_pandas_object(rows[["source", "hypothesis"]], index=False).values.tobytes())
    sources, targets = list(rows.source), list(rows.hypothesis)
    rewards, baselines = [float(r) for r in rows.reward], [float(v) for v in rows.source_mean_reward]
    is_sample = [o == "sample" for o in rows.origin]
    h = hashlib.sha256()  # finetune's data_hash
    for s, tt in zip(sources, targets, strict=True):
        h.update(f"{s}\x1f{tt}\x1e".encode())
    for values in (rewards, baselines):
        h.update(repr([round(float(r), 6) for r in values]).encode())
    h.update(bytes(bool(x) for x in is_sample))
    del rows
    _, _, family = tokenizer_and_family(root)
    src, tgt = family.encode_sources(sources, 64), family.encode_targets(targets, 64)
    batches = make_batches(src, tgt, train_settings().max_tokens, seed=0, epoch=0)
    first = family.collate([src[i] for i in batches[0]], [tgt[i] for i in batches[0]])
    times["to_first_batch_seconds"] = round(time.perf_counter() - t, 1)
    return {**times, **stats, "batches_per_epoch": len(batches), "first_batch_rows": int(first.labels.shape[0])}


def new_path(root: Path) -> dict:
    """Today's: DuckDB to Parquet, then the trainer streaming row groups."""
    from rest_pipeline.core.improve.filtering import build_slice
    from rest_pipeline.core.store.experiment import ExperimentStore
    from rest_pipeline.core.training import trainer
    from rest_pipeline.core.training.pairs import SlicePairs

    store, times, t = ExperimentStore(root / "scale"), {}, time.perf_counter()
    record = build_slice(store, 1, 2, REWARD, RULE, PARAMETER, mix_originals=True)
    times["slice_seconds"] = round(time.perf_counter() - t, 1)
    phase(times, {"kept": record.kept})

    t = time.perf_counter()
    pairs = SlicePairs(store.resolve(record.path))
    pairs.content_hash(with_signals=False)  # the step record's slice hash
    pairs.content_hash()  # finetune's fingerprint
    model, tok, _ = tokenizer_and_family(root)
    valid = (["ba de fi"] * 10, ["ko lu ma"] * 10)
    with tempfile.TemporaryDirectory() as work:
        run = trainer._set_up(
            model, tok, pairs, valid, train_settings(), Path(work), 0, 64,
            fingerprint="scale", log=print, reward_fn=None, loss_fn=None, decode_backend="hf",
        )  # fmt: skip
        first = next(trainer._epoch_batches(run, 0))
    times["to_first_batch_seconds"] = round(time.perf_counter() - t, 1)
    stats = {k: getattr(record, k) for k in ("kept", "kept_samples", "sources", "mean_reward", "kept_fraction")}
    return {**times, **stats, "batches_per_epoch": run.batches_per_epoch, "first_batch_rows": len(first.idx)}


def peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def phase(times: dict, stats: dict) -> None:
    """How far a path got, for the parent to report if the path is killed later."""
    print("PHASE " + json.dumps({**times, **stats, "peak_rss_gb_so_far": peak_rss_gb()}), flush=True)


def child(which: str, root: Path) -> None:
    import torch

    torch.set_num_threads(2)
    t = time.perf_counter()
    out = (old_path if which == "old" else new_path)(root)
    out["minutes"] = round((time.perf_counter() - t) / 60, 2)
    out["peak_rss_gb_self"] = peak_rss_gb()
    print("RESULT " + json.dumps(out), flush=True)


# -- the parent: one process per path, RSS watched from outside --------------------------------------
def rss_gb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except FileNotFoundError:
        pass
    return 0.0


def run_path(which: str, root: Path, cap_gb: float) -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--work", str(root)]
    t, peak = time.perf_counter(), 0.0
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    killed = False
    while proc.poll() is None:
        peak = max(peak, rss_gb(proc.pid))
        if peak > cap_gb:
            proc.kill()
            killed = True
        time.sleep(0.2)
    reader.join()
    minutes = round((time.perf_counter() - t) / 60, 2)
    result = next((json.loads(x[7:]) for x in lines if x.startswith("RESULT ")), None)
    if result is None:
        tail = "".join(lines[-20:])
        what = f"killed above {cap_gb} GB RSS" if killed else f"failed (exit {proc.returncode})"
        print(f"{which}: {what}\n{tail}", flush=True)
        reached = [json.loads(x[6:]) for x in lines if x.startswith("PHASE ")]
        done = {"completed_phases": reached[-1]} if reached else {}
        return {"status": what, "minutes_until_stopped": minutes, "peak_rss_gb": round(peak, 2), **done}
    result.update(status="ok", peak_rss_gb=round(max(peak, result["peak_rss_gb_self"]), 2), wall_minutes=minutes)
    print(f"{which}: {result}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", type=int, default=160_000)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--shard-sources", type=int, default=10_000)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "rest_scale_bench")
    ap.add_argument("--rss-cap-gb", type=float, default=18.0)
    ap.add_argument("--child", choices=["old", "new"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.work)
    root = args.work / f"{args.sources}x{args.samples}"
    marker = root / "store.json"
    if marker.is_file():
        store = json.loads(marker.read_text())
        print(f"store: reusing {store['candidates']:,} candidates", flush=True)
    else:
        store = write_store(root, args.sources, args.samples, args.shard_sources)
        marker.write_text(json.dumps(store))
    for old_slice in root.glob("scale/store/slices"):
        subprocess.run(["rm", "-rf", str(old_slice)], check=True)
    tokenizer_and_family(root)  # trained once, outside the timed paths
    results = {which: run_path(which, root, args.rss_cap_gb) for which in ("old", "new")}
    old, new = results["old"], results["new"]
    ratios = {}
    if new["status"] == "ok" and old["status"] == "ok":
        ratios = {
            "peak_rss_old_over_new": round(old["peak_rss_gb"] / new["peak_rss_gb"], 2),
            "minutes_old_over_new": round(old["minutes"] / new["minutes"], 2),
        }
    elif new["status"] == "ok":  # the old path was stopped: its RSS ratio is a lower bound, its minutes unknown
        ratios = {"peak_rss_old_over_new_at_least": round(old["peak_rss_gb"] / new["peak_rss_gb"], 2)}
    out = {
        "bench": "scale_bench",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "grow": {"sources": args.sources, "samples_per_source": args.samples, **store},
        "filter": f"{RULE} {PARAMETER}, originals mixed in",
        "old_path": "d524fff: pandas from D_g to the first batch",
        "new_path": "DuckDB table -> Parquet row groups -> trainer chunks",
        "old": old,
        "new": new,
        "ratios": ratios,
        "target": "new path under 4 GB peak RSS",
        "target_met": new["status"] == "ok" and new["peak_rss_gb"] < 4.0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["ratios"]), "target met:", out["target_met"])


if __name__ == "__main__":
    main()
