"""The what-buys-reward curve: each variant's last kept checkpoint against the shared BC policy, with cost.

    REST_EXPERIMENTS_DIR=research/curve python research/curve/curve.py \
        --times logs/times.txt --out research/results/curve_20261129

`--times` holds one `<experiment> <seconds> rc=<code>` line per `rest main`. `--axis` (repeatable)
names one knob's variants in order, e.g. `--axis "N=c2_n8,c2_n16,c2_n32"`: the plot joins them, so
a knob that saturates shows as a line that flattens. Writes curve.md, curve.json and curve.png
under --out; paths in them are relative (none of this machine).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rest_pipeline.core.evaluation.significance import eval_deltas
from rest_pipeline.core.store.experiment import BASE, CONTROL, FINAL, ExperimentStore
from rest_pipeline.core.store.records import Evaluation
from rest_pipeline.core.tables import md_table
from rest_pipeline.spec import find_spec, load_spec

VARIANTS = ["curve_n8", "curve_n16", "curve_n32", "curve_s12k", "curve_b6", "curve_threshold"]


def knob(spec) -> str:
    g, imp = spec.grow, spec.improve
    prefix = "p" if imp.filter.kind == "percentile" else "tau "
    bars = " -> ".join(f"{prefix}{v:g}" for v in imp.filter.values)
    sources = f"{g.max_sources // 1000}k" if g.max_sources else "all"
    grows = f"{imp.grows} grows of " if imp.grows > 1 else ""
    return f"{grows}N={g.samples_per_source}, {sources} sources, {imp.train.time_budget_minutes:g} min, {bars}"


def parse_axis(text: str) -> tuple[str, list[str]]:
    label, _, names = text.rpartition("=")  # labels may hold "=", variant names never do
    if not label:
        raise argparse.ArgumentTypeError(f"--axis {text!r}: expected LABEL=variant,variant,...")
    return label, names.split(",")


def split_name(variant: str) -> tuple[str, str]:
    """`exp` is the experiment's final checkpoint; `exp@control` its originals-only control,
    `exp@grow_2/improve_1` one of its steps."""
    name, _, policy = variant.partition("@")
    return name, policy or FINAL


def axis_moves(axes: list[tuple[str, list[str]]]) -> list[dict]:
    """Along each knob, what the next setting adds to the previous one: the test for saturation."""
    rows = []
    for label, names in axes:
        for a, b in zip(names, names[1:], strict=False):
            (name_a, policy_a), (name_b, policy_b) = split_name(a), split_name(b)
            store_a, store_b = ExperimentStore.open(name_a), ExperimentStore.open(name_b)
            deltas = eval_deltas(
                store_a,
                store_a.get(Evaluation, policy=policy_a),
                store_b.get(Evaluation, policy=policy_b),
                ["valid", "test"],
                ["reward_learned"],
                b_store=store_b,
            )
            row = {"knob": label, "from": a, "to": b}
            for d in deltas:
                row[f"{d['split']}_learned"] = f"{d['delta']:+.4f} {d['ci95']}{' *' if d['significant'] else ''}"
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--times", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variants", nargs="*", default=VARIANTS)
    ap.add_argument("--axis", type=parse_axis, action="append", default=[])
    # A branch at grow_1 reuses its parent's grow, whose minutes its own `rest main` does not see.
    ap.add_argument("--grow-minutes", type=float, default=0.0, help="minutes of the parent's grow 1")
    args = ap.parse_args()
    seconds = {}
    for line in args.times.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "rc=0":
            seconds[parts[0]] = int(parts[1])
    rows = []
    for variant in args.variants:
        name, policy = split_name(variant)
        spec = load_spec(find_spec(name))
        store = ExperimentStore.open(name)
        bc, final = store.get(Evaluation, policy=BASE), store.get(Evaluation, policy=policy)
        deltas = eval_deltas(store, bc, final, ["valid", "test"], ["reward_learned", "reward_chrf"])
        shared_grow = spec.branch is not None and spec.branch.grow > 0
        if policy == CONTROL:  # times.txt names a control's run `<experiment>_control`
            minutes, what = seconds.get(f"{name}_control", 0) / 60, "the originals only, step for step"
        else:
            minutes, what = seconds.get(name, 0) / 60 + (args.grow_minutes if shared_grow else 0.0), knob(spec)
        row = {"experiment": variant, "knob": what, "minutes": round(minutes, 1)}
        steps = [s for s in store.steps() if not store._from_parent(s.grow, inclusive=False)]
        row["slice_kept"] = "/".join(str(s.slice_kept) for s in steps) if policy != CONTROL else "originals"
        # not_improved: the step handed its parent on (a variant none of whose steps improved is BC, delta 0)
        row["steps"] = "/".join(s.status for s in steps) if policy != CONTROL else "-"
        row["final"] = store.canonical(policy)
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
    moves = axis_moves(args.axis)
    (args.out / "curve.json").write_text(json.dumps({"variants": rows, "axis_moves": moves}, indent=1))
    text = (
        md_table(shown)
        + "\nDeltas: the variant's last kept checkpoint minus the BC policy, per sentence of the greedy outputs, "
        "95 % paired-bootstrap interval (2,000 resamples); * marks an interval that excludes 0. Minutes: wall "
        "time of the variant's `rest main` on the 2-core machine (sampling, scoring, the steps, their "
        f"evaluation), plus {args.grow_minutes:g} min for the parent's grow 1 where the variant reuses it.\n"
    )
    if moves:
        text += (
            "\nEach knob, one setting to the next (the later variant minus the earlier, paired per sentence):\n\n"
            + md_table(moves)
        )
    (args.out / "curve.md").write_text(text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {r["experiment"]: r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2 if args.axis else 4.2), sharey=True)
    for ax, split in zip(axes, ("valid", "test"), strict=True):
        for label, names in args.axis:
            line = [by_name[n] for n in names if n in by_name]
            ax.plot([r["minutes"] for r in line], [r[f"_{split}_delta"] for r in line], "-", lw=1, label=label)
        for r in rows:
            low, high = r["_ci"][f"{split}_reward_learned"]
            d = r[f"_{split}_delta"]
            ax.errorbar(r["minutes"], d, yerr=[[d - low], [high - d]], fmt="o", capsize=3)
            label = r["experiment"].removeprefix("curve_").removeprefix("c2_").replace("@control", " control")
            ax.annotate(label, (r["minutes"], d), textcoords="offset points", xytext=(5, 4))
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{split}: learned reward, Improve step minus BC (95 % CI)")
        ax.set_xlabel("minutes on 2 CPU cores (grow + step + eval)")
    axes[0].set_ylabel("reward gain over BC")
    fig.tight_layout()
    if args.axis:  # below the panels, where it hides no point
        fig.subplots_adjust(bottom=0.28)
        fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8)
    fig.savefig(args.out / "curve.png", dpi=110)
    print((args.out / "curve.md").read_text())


if __name__ == "__main__":
    main()
