"""Is BC reproducible on a loaded machine? The spec's BC for `--updates` updates, once quiet and once
beside busy processes (one per core), compared by weights hash and validation row.

    python bench/bc_repro.py --experiment default --updates 250

Needs an experiment whose corpus and tokenizer exist. Nothing that decides the weights reads a clock
(training stops on epochs, updates or patience), so the two runs must give the same weights; only
their seconds differ. Writes bench/results/bc_repro.json (no absolute paths).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from bc_bench import store_spec  # bench/ is the script's folder, first on sys.path

from rest_pipeline.core.policy.model import build_policy
from rest_pipeline.core.policy.tokenizer import load_tokenizer
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.training.trainer import TrainResult, train_policy

BURN = "import time\nt = time.time()\nwhile time.time() - t < 3600: pass"


def train_spec_bc(store: ExperimentStore, **overrides: object) -> tuple[TrainResult, str]:
    """The experiment's BC from its seed with `overrides` on its bc settings (one validation, at the end),
    in a scratch folder; the result and the sha256 of the weights it kept."""
    spec = store_spec(store)
    torch.manual_seed(spec.seed)
    tok = load_tokenizer(store.tokenizer_dir)
    model = build_policy(spec.policy, tok, spec.tokenizer.max_length)
    train, valid = store.split("train"), store.split("valid")
    updates = overrides["max_steps"]
    bc = spec.bc.model_copy(
        update={"time_budget_minutes": None, "validate_every_steps": updates, "save_every_steps": 10**9,
                "average_last": 1, "patience": None, **overrides}
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        result = train_policy(
            model,
            tok,
            (list(train.source), list(train.target)),
            (list(valid.source), list(valid.target)),
            bc,
            Path(tmp),
            seed=spec.seed,
            max_length=spec.tokenizer.max_length,
            fingerprint="bench",
            log=lambda _m: None,
            decode_backend=spec.evaluation.backend,
        )
        weights = hashlib.sha256((Path(tmp) / "best" / "model.safetensors").read_bytes()).hexdigest()[:16]
    return result, weights


def one_run(store: ExperimentStore, updates: int) -> dict:
    result, weights = train_spec_bc(store, max_steps=updates)
    row = result.history[-1]
    return {"weights_sha256": weights, "train_seconds": result.train_seconds,
            **{k: row[k] for k in ("step", "valid_loss", "valid_bleu", "valid_chrf")}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="default")
    ap.add_argument("--updates", type=int, default=250)
    ap.add_argument("--out", default="bench/results/bc_repro.json")
    args = ap.parse_args()
    store = ExperimentStore.open(args.experiment)
    quiet = one_run(store, args.updates)
    print(f"quiet:  {quiet}", flush=True)
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(os.cpu_count() or 2)]
    try:
        loaded = one_run(store, args.updates)
    finally:
        for p in burners:
            p.kill()
            p.wait()
    print(f"loaded: {loaded}", flush=True)
    same = quiet["weights_sha256"] == loaded["weights_sha256"]
    out = {
        "what": f"BC of spec '{args.experiment}' for {args.updates} updates, quiet and beside {len(burners)} "
        "busy processes (one per core)",
        "quiet": quiet,
        "loaded": loaded,
        "same_weights": same,
        "loaded_over_quiet_seconds": round(loaded["train_seconds"] / quiet["train_seconds"], 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"same weights: {same}; the loaded run took {out['loaded_over_quiet_seconds']}x the seconds")


if __name__ == "__main__":
    main()
