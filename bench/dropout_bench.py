"""Dropout on a CPU, old and new path side by side in one run: `F.dropout` (torch's `bernoulli_` mask)
against `pcg_dropout` (core/training/dropout.py: the mask from numpy's PCG64), forward and backward on
the default BC's activations ([1,200 tokens, 256] at p 0.1; a Marian forward calls dropout 17 times).

    .venv/bin/python bench/dropout_bench.py [--rounds 30]

The two paths alternate call by call, so a host whose speed drifts charges both alike. Also checks the
kept share of the new masks against 1 - p. Writes bench/results/dropout.json (no absolute paths).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bc_bench import cpu_model  # bench/ is the script's folder, first on sys.path

from rest_pipeline.core.training.dropout import pcg_dropout

OUT = Path(__file__).resolve().parent / "results" / "dropout.json"


def one_call(dropout, x: torch.Tensor, p: float) -> float:
    """Seconds of one forward and backward through `dropout`."""
    t0 = time.perf_counter()
    dropout(x, p, True).sum().backward()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30, help="rounds of --calls calls per path")
    ap.add_argument("--calls", type=int, default=17, help="calls per round (one Marian forward's dropouts)")
    ap.add_argument("--tokens", type=int, default=1200)
    ap.add_argument("--p", type=float, default=0.1)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.tokens, 256, requires_grad=True)
    paths = {"old_bernoulli": F.dropout, "new_numpy_pcg64": pcg_dropout}
    ms: dict[str, list[float]] = {name: [] for name in paths}
    for rnd in range(args.rounds + 1):  # round 0 warms up, untimed
        for name, fn in paths.items() if rnd % 2 else reversed(paths.items()):
            seconds = sum(one_call(fn, x, args.p) for _ in range(args.calls))
            if rnd:
                ms[name].append(1e3 * seconds)
    kept = (pcg_dropout(torch.ones(1000, 1000), args.p) != 0).float().mean().item()
    ratios = [a / b for a, b in zip(ms["old_bernoulli"], ms["new_numpy_pcg64"], strict=True)]
    out = {
        "what": f"forward+backward of dropout p={args.p} on [{args.tokens}, 256] fp32, {args.calls} calls a "
        f"round (one default Marian forward), {args.rounds} rounds, paths alternating; ms per round",
        "machine": {"cpu": cpu_model(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        **{name: {"median_ms_per_round": round(statistics.median(v), 2)} for name, v in ms.items()},
        "old_over_new_median": round(statistics.median(ratios), 2),
        "new_kept_share_of_1e6": round(kept, 5),
    }  # fmt: skip
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
