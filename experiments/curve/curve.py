"""The what-buys-reward curve: each variant's Improve checkpoint against the shared BC policy, with cost.

    REST_EXPERIMENTS_DIR=experiments/curve python experiments/curve/curve.py \
        --times logs/times.txt --out docs/results/curve_20261129

`--times` holds one `<experiment> <seconds> rc=<code>` line per `rest main` (run_curve.sh writes it).
Writes curve.md, curve.json and curve.png under --out; paths in them are relative (none of this machine).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rest_pipeline.core.evaluation.significance import eval_deltas
from rest_pipeline.core.store.experiment import BASE, FINAL, ExperimentStore
from rest_pipeline.core.tables import md_table
from rest_pipeline.spec import find_spec, load_spec

VARIANTS = ["curve_n8", "curve_n16", "curve_n32", "curve_s12k", "curve_b6", "curve_threshold"]


def knob(spec) -> str:
    g, imp = spec.grow, spec.improve
    bar = f"p{imp.filter.values[0]:g}" if imp.filter.kind == "percentile" else f"tau {imp.filter.values[0]:g}"
    return f"N={g.samples_per_source}, {g.max_sources // 1000}k sources, {imp.train.time_budget_minutes:g} min, {bar}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--times", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variants", nargs="*", default=VARIANTS)
    args = ap.parse_args()
    seconds = {}
    for line in args.times.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "rc=0":
            seconds[parts[0]] = int(parts[1])
    rows = []
    for name in args.variants:
        spec = load_spec(find_spec(name))
        store = ExperimentStore.open(name)
        bc, final = store.evaluation(BASE), store.evaluation(FINAL)
        deltas = eval_deltas(store, bc, final, ["valid", "test"], ["reward_learned", "reward_chrf"])
        row = {"experiment": name, "knob": knob(spec), "minutes": round(seconds.get(name, 0) / 60, 1)}
        step = store.step(1, 1)
        row["slice_kept"] = step.slice_kept
        row["step"] = step.status  # not_improved: the step handed BC on (its delta is 0 by construction)
        for split in ("valid", "test"):
            row[f"{split}_reward"] = final.splits[split].reward("learned")
            row[f"{split}_bleu"] = final.splits[split].bleu
        for d in deltas:
            row[f"{d['split']}_{d['metric'].removeprefix('reward_')}_minus_bc"] = (
                f"{d['delta']:+.4f} {d['ci95']}{' *' if d['significant'] else ''}"
            )
        for split in ("valid", "test"):
            row[f"_{split}_delta"] = next(
                d["delta"] for d in deltas if d["split"] == split and d["metric"] == "reward_learned"
            )
        row["_ci"] = {
            f"{d['split']}_{d['metric']}": [float(x) for x in d["ci95"].strip("[]").split(", ")] for d in deltas
        }
        rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    shown = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    (args.out / "curve.json").write_text(json.dumps(rows, indent=1))
    (args.out / "curve.md").write_text(
        md_table(shown)
        + "\nDeltas: the variant's Improve checkpoint minus the BC policy, per sentence of the greedy outputs, "
        "95 % paired-bootstrap interval (2,000 resamples); * marks an interval that excludes 0. Minutes: wall "
        "time of the variant's `rest main` on the 2-core machine (sampling, scoring, the step, its evaluation).\n"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, split in zip(axes, ("valid", "test"), strict=True):
        for r in rows:
            low, high = r["_ci"][f"{split}_reward_learned"]
            d = r[f"_{split}_delta"]
            ax.errorbar(r["minutes"], d, yerr=[[d - low], [high - d]], fmt="o", capsize=3)
            label = r["experiment"].removeprefix("curve_")
            ax.annotate(label, (r["minutes"], d), textcoords="offset points", xytext=(5, 4))
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{split}: learned reward, Improve step minus BC (95 % CI)")
        ax.set_xlabel("minutes on 2 CPU cores (grow + step + eval)")
    axes[0].set_ylabel("reward gain over BC")
    fig.tight_layout()
    fig.savefig(args.out / "curve.png", dpi=110)
    print((args.out / "curve.md").read_text())


if __name__ == "__main__":
    main()
