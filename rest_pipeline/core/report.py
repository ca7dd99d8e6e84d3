"""The experiment report: Markdown plus PNG plots, built only from the records the run stored."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rest_pipeline.core.evaluation.best_of_k import grow_sample_curves, reward_agreement  # noqa: E402
from rest_pipeline.core.evaluation.significance import eval_deltas  # noqa: E402
from rest_pipeline.core.improve.chain import all_steps, final_step  # noqa: E402
from rest_pipeline.core.paths import atomic_path  # noqa: E402
from rest_pipeline.core.rewards.factory import independent_reward, reward_names  # noqa: E402
from rest_pipeline.core.store.experiment import BASE, CONTROL, ExperimentStore, policy_name  # noqa: E402
from rest_pipeline.core.store.queries import grow_rewards, grow_sizes  # noqa: E402
from rest_pipeline.core.store.records import (  # noqa: E402
    BestOfN,
    ControlRecord,
    DecodingEval,
    Evaluation,
    Finding,
    Report,
    SliceRecord,
    StepRecord,
)
from rest_pipeline.core.store.side_records import PHASES, HumanEval, OnlineRL, RewardProbe
from rest_pipeline.core.tables import md_table  # noqa: E402
from rest_pipeline.spec import ExperimentSpec  # noqa: E402


def checkpoint_rows(
    spec: ExperimentSpec, store: ExperimentStore, train_reward: str, independent: str | None
) -> list[dict]:
    """One row per checkpoint of the chain: BC, then every Improve step in order."""
    rows = []
    for g, i in [(0, 0), *all_steps(spec)]:
        summary = store.get(Evaluation, policy=policy_name(g, i))
        row: dict = {"checkpoint": "BC" if g == 0 else f"G={g} I={i}"}
        if g:
            rec = store.get(StepRecord, grow=g, step=i)
            row.update(
                status=rec.status,
                filter=f"{rec.slice_rule} {rec.slice_parameter:g}",
                kept=rec.slice_kept,
                kept_fraction=rec.slice_kept_fraction,
                valid_reward_selection=rec.valid_reward,
            )
        else:
            row.update(status="base", filter="-", kept="-", kept_fraction="-", valid_reward_selection="-")
        rows.append({**row, **score_columns(summary, train_reward, independent)})
    return rows


def score_columns(summary: Evaluation, train_reward: str, independent: str | None) -> dict:
    """A checkpoint's table columns: per split the training and independent rewards and BLEU; diversity."""
    row: dict = {}
    for split, s in summary.splits.items():
        row[f"{split}_{train_reward}"] = s.reward(train_reward)
        if independent:
            row[f"{split}_{independent}"] = s.reward(independent)
        row[f"{split}_bleu"] = s.bleu
    row["distinct_samples"] = summary.diversity.distinct_samples_per_source if summary.diversity else None
    return row


def table1(rows: list[dict], spec: ExperimentSpec, train_reward: str) -> list[dict]:
    """The paper's Table 1 shape: BC, G=1 first step, G=1 last trained step, ..., G=g last."""
    out = [rows[0]]
    for g in range(1, spec.improve.grows + 1):
        mine = [r for r in rows if r["checkpoint"].startswith(f"G={g} ")]
        trained = [r for r in mine if r["status"] == "improved"]
        if trained:
            out.append(trained[0])
            if trained[-1] is not trained[0]:
                out.append(trained[-1])
        else:  # no step of this grow beat its parent: it hands on the previous grow's checkpoint
            out.append({**mine[-1], "checkpoint": f"G={g} (no step improved)"})
    keys = ["checkpoint", f"valid_{train_reward}", f"test_{train_reward}", "test_bleu", "distinct_samples"]
    return [{k: r.get(k) for k in keys} for r in out]


def significance(
    spec: ExperimentSpec, store: ExperimentStore, train_reward: str, independent: str | None
) -> list[dict]:
    """Final minus BC, minus each earlier grow's hand-on checkpoint, and minus the control when it ran,
    with paired-bootstrap intervals."""
    metrics = [f"reward_{train_reward}"] + ([f"reward_{independent}"] if independent else []) + ["bleu"]
    against = {"BC": BASE}
    for g in range(1, spec.improve.grows):  # "final minus grow 1" is the paper's "grow 2 adds to grow 1"
        against[f"grow {g}"] = policy_name(g, spec.improve.steps)
    if store.find(ControlRecord) is not None:
        against["control"] = CONTROL
    final = store.get(Evaluation, policy=policy_name(*final_step(spec)))
    return [
        {"final minus": name, **row}
        for name, policy in against.items()
        for row in eval_deltas(store, store.get(Evaluation, policy=policy), final, spec.evaluation.splits, metrics)
    ]


def control_finding(sig: list[dict], metric: str, test: str, independent: str | None, max_bleu_gap: float) -> dict:
    """ReST's own gain: the final policy against the originals-only control, which trained as long on
    the original pairs alone. It holds only if the training reward's interval on test lies above zero,
    the independent reward's interval does not lie below zero (a gain the training reward alone sees is
    not a gain), and test BLEU is not below the control's by more than `max_bleu_gap`."""
    mine = [r for r in sig if r["final minus"] == "control"]
    name = f"ReST's samples add to training longer: the final policy beats the originals-only control on {test}"
    if not mine:
        return {"finding": name, "holds": False, "evidence": "no control ran (improve.control: false)"}

    def on(split: str, m: str) -> dict | None:
        return next((r for r in mine if r["split"] == split and r["metric"] == m), None)

    reward, bleu = on(test, metric), on(test, "bleu")
    other = on(test, f"reward_{independent}") if independent else None
    holds = (
        reward is not None
        and reward["delta"] > 0
        and reward["significant"]
        and (other is None or not (other["significant"] and other["delta"] < 0))
        and (bleu is None or bleu["delta"] >= -max_bleu_gap)
    )
    evidence = "; ".join(
        f"{r['split']} {r['metric'].removeprefix('reward_')} {r['delta']:+.4f} {r['ci95']}"
        for r in mine
        if r["split"] == test or r["metric"] == metric
    )
    return {"finding": name, "holds": holds, "evidence": evidence}


def findings(
    rows: list[dict],
    sig: list[dict],
    bon: BestOfN,
    train_reward: str,
    max_bleu_drop: float = 1.0,
    independent: str | None = None,
    max_control_bleu_gap: float = 0.5,
) -> list[Finding]:
    """The paper's headline findings, each checked against this run's numbers; ReST against the
    originals-only control first, since a gain over BC alone may be owed to training longer.

    Deliberately strict, so a "yes" means something: a rise must hold on the full valid split
    along the chain of kept checkpoints (at least two trained steps; across grows, so that a schedule
    of one step per grow is judged too), and a gain must have a 95 % interval above zero on at least
    one split with no split below zero.
    """
    metric = f"reward_{train_reward}"
    splits = list(dict.fromkeys(r["split"] for r in sig))
    test = "test" if "test" in splits else splits[-1]
    out = [control_finding(sig, metric, test, independent, max_control_bleu_gap)]

    steps = [r for r in rows[1:] if r.get("status") in ("improved", "not_improved")]  # trained, not skipped
    chain = [rows[0]] + [r for r in steps if r["status"] == "improved"]
    values = [r[f"valid_{train_reward}"] for r in chain]
    rises = len(chain) >= 3 and all(b > a for a, b in zip(values, values[1:], strict=False))
    out.append(
        {
            "finding": "valid reward rises with successive Improve steps",
            "holds": rises,
            "evidence": " -> ".join(f"{r['checkpoint']} {v:.4f}" for r, v in zip(chain, values, strict=True))
            + f" ({len(chain) - 1} of {len(steps)} steps beat their parent"
            + ("" if len(chain) >= 3 else "; fewer than two trained steps")
            + ")",
        }
    )

    def gain(against: str) -> tuple[bool, str]:
        mine = [r for r in sig if r["final minus"] == against and r["metric"] == metric]
        ok = bool(mine) and all(r["delta"] > 0 for r in mine) and any(r["significant"] for r in mine)
        return ok, "; ".join(f"{r['split']} {r['delta']:+.4f} {r['ci95']}" for r in mine)

    earlier = sorted({r["final minus"] for r in sig if r["final minus"].startswith("grow ")})
    for name in earlier:
        ok, text = gain(name)
        out.append({"finding": f"the last grow adds to {name}", "holds": ok, "evidence": text})

    _, text = gain("BC")  # the verdict below is on test alone, plus BLEU
    bc_test = [r for r in sig if r["final minus"] == "BC" and r["metric"] == metric and r["split"] == test]
    beats = bool(bc_test) and bc_test[0]["delta"] > 0 and bc_test[0]["significant"]
    bleu_drop = rows[0][f"{test}_bleu"] - rows[-1][f"{test}_bleu"]
    bleu = [r for r in sig if r["final minus"] == "BC" and r["metric"] == "bleu" and r["split"] == test]
    out.append(
        {
            "finding": f"the final policy beats BC on {test} reward, {test} BLEU within {max_bleu_drop:g} point",
            "holds": beats and bleu_drop <= max_bleu_drop,
            "evidence": f"{text}; {test} BLEU {rows[0][f'{test}_bleu']} -> {rows[-1][f'{test}_bleu']}"
            + (f" ({bleu[0]['delta']:+.2f} {bleu[0]['ci95']})" if bleu else ""),
        }
    )

    out.append(
        {
            "finding": "Best-of-N: ReST at a small N reaches BC at a larger N",
            "holds": bon.rest_small_n_reaches_bc_larger_n,
            "evidence": ", ".join(
                f"N={n}: ReST {bon.curves['rest'].curve[n]} vs BC {bon.curves['bc'].curve[n]}" for n in bon.ns
            ),
        }
    )
    return [Finding(**f) for f in out]


def signature_lines(store: ExperimentStore) -> list[str]:
    """What produced the numbers below (sacrebleu's habit): metric signatures, decodings, reward versions."""
    sig = store.get(Evaluation, policy=BASE).signature
    steps = [r.validation_signature for r in store.steps() if r.validation_signature is not None]
    if sig is None:
        return ["Signatures: not recorded (evaluations written before scores carried them).\n"]
    rewards = ", ".join(f"`{name}` {version}" for name, version in sorted(sig.rewards.items()))
    text = f"Signatures: BLEU `{sig.bleu}`; chrF `{sig.chrf}`; outputs `{sig.decoding}`; rewards {rewards}."
    if steps:
        text += f" Improve steps are judged on `{steps[0].decoding}`."
    return [text + "\n"]


def run_header(spec: ExperimentSpec, store: ExperimentStore) -> list[str]:
    """What this run was, from its spec and records (not fixed text): the policy's size, how BC ended,
    the ReST schedule and the minutes each phase took. A BC cut by the clock is flagged here, since every
    gain measured against it may be owed to training longer."""
    from rest_pipeline.core.online_rl.rest_compute import rest_compute
    from rest_pipeline.core.policy.model import count_parameters, load_policy

    params = count_parameters(load_policy(store.base_policy_dir))
    g = spec.grow
    sources = f"{g.max_sources:,}" if g.max_sources else "all"
    train = spec.improve.train
    length = f"{train.max_steps} updates" if train.max_steps else f"{train.epochs} epoch(s)"
    cap = f", capped at {train.time_budget_minutes} min" if train.time_budget_minutes else ""
    lines = [
        f"Policy: `{spec.policy.kind}`, {params / 1e6:.1f}M parameters. ReST: {spec.improve.grows} grows of "
        f"{g.sampling.n} samples per source on {sources} training sources, {spec.improve.steps} Improve "
        f"step(s) per grow ({spec.improve.filter.kind} {spec.improve.filter.values}), each step {length}{cap}."
    ]
    bc = store.bc_policy_link()
    if bc is not None:
        window = f"; spread of validation {bc.keep_best_by} over its last patience window {bc.plateau}"
        plateau = window if bc.plateau is not None else ""
        lines.append(
            f"BC (`{bc.key}`, shared by content): {bc.epochs:g} epochs, {bc.steps:,} updates, "
            f"{bc.train_seconds / 60:.1f} min of training in {bc.precision}; stopped by {bc.stopped_because}; "
            f"best validation {bc.keep_best_by} {bc.best_metric:g}{plateau}."
        )
        if bc.clock_cut:
            lines.append(
                "**BC was cut by its time budget, not by its validation rule**: it is another model on another "
                "machine, and gains over it (and the control's) may be owed to training longer."
            )
    compute = rest_compute(store)
    if compute:
        last = compute.get(policy_name(*final_step(spec)), list(compute.values())[-1])
        lines.append(
            f"ReST's sampling, scoring and Improve training up to the final checkpoint: {last.seconds / 60:.1f} min "
            f"({last.candidates:,} candidates, {last.target_tokens:,} trained target tokens)."
        )
    control = store.find(ControlRecord)
    if control is not None:
        updates = sum(s.train_steps for s in control.steps)
        lines.append(f"Originals-only control: {updates:,} updates in {len(control.steps)} step(s).")
    return [" ".join(lines) + "\n"]


def _agreement_section(rows: list[dict], train_reward: str, independent: str | None) -> list[str]:
    """How the training reward ranks each grow's samples, seen through the independent reward."""
    if not rows:
        return []
    return [
        f"\nDoes the training reward pick what the independent reward calls better? Per grow: the mean "
        f"per-source Kendall tau between `{train_reward}` and `{independent}` over each source's samples, and "
        f"the `{independent}` reward of the sample `{train_reward}` ranks first, beside one sample's (what a "
        f"random pick earns) and `{independent}`'s own best. ReST keeps `{train_reward}`'s top samples: where "
        "that pick earns no more than a random one, a gain only the training reward sees is what to expect.\n",
        md_table(rows),
    ]


def _control_section(store: ExperimentStore, rows: list[dict]) -> list[str]:
    """BC vs the originals-only control vs the final ReST checkpoint, when the control ran."""
    control = store.find(ControlRecord)
    if control is None:
        return []
    evaluation = store.get(Evaluation, policy=CONTROL)
    cols = [k for k in rows[0] if k.startswith(("valid_", "test_"))]  # e.g. test_learned, test_chrf, test_bleu

    steps = [{k: getattr(s, k) for k in ("mirrors", "status", "valid_reward")} for s in control.steps]

    def score(split: str, name: str) -> float | None:
        if name == "reward_selection":  # the selection metric: the best validation reward the steps kept
            return steps[-1]["valid_reward"] if steps else None
        row = evaluation.splits.get(split)
        if row is None:
            return None
        return row.bleu if name == "bleu" else row.rewards.get(name)

    bc = {c: rows[0][c] for c in cols}
    if "valid_reward_selection" in bc and control.steps:
        bc["valid_reward_selection"] = control.steps[0].parent_valid_reward
    return [
        "\n## Control: the same steps on the original pairs only\n",
        "BC fine-tuned step for step like the final ReST checkpoint (same learning rates, budgets and "
        "keep-the-best rule) on the original pairs of the grown sources. ReST's margin over it is what "
        "the reward-filtered samples add beyond training longer.\n",
        md_table(
            [
                {"policy": "BC", **bc},
                {"policy": f"control ({len(steps)} steps)", **{c: score(*c.split("_", 1)) for c in cols}},
                {"policy": f"ReST final ({rows[-1]['checkpoint']})", **{c: rows[-1][c] for c in cols}},
            ]
        ),
        f"\nControl steps: {json.dumps(steps)}\n",
    ]


def compute_rows(store: ExperimentStore, train_reward: str) -> list[dict]:
    """BC, every ReST checkpoint and every PPO checkpoint with its compute so far and its scores."""
    from rest_pipeline.core.online_rl.rest_compute import rest_compute

    def scores(name: str) -> dict:
        ev = store.get(Evaluation, policy=name)
        return {
            "valid_reward": ev.splits["valid"].reward(train_reward) if "valid" in ev.splits else None,
            "test_reward": ev.splits["test"].reward(train_reward) if "test" in ev.splits else None,
            "test_bleu": ev.splits["test"].bleu if "test" in ev.splits else None,
        }

    zero = {"candidates": 0, "reward_calls": 0, "target_tokens": 0, "seconds": 0.0}
    rows = [{"method": "BC", "checkpoint": BASE, **zero, **scores(BASE)}]
    for name, c in rest_compute(store).items():
        rows.append({"method": "ReST", "checkpoint": name, **c.model_dump(), **scores(name)})
    for m in store.get(OnlineRL).marks:
        rows.append({"method": "PPO", "checkpoint": m.name, **m.compute.model_dump(), **scores(m.name)})
    return rows


def _online_rl_section(spec: ExperimentSpec, store: ExperimentStore, train_reward: str, out: Path) -> list[str]:
    """ReST against PPO at equal compute: reward and BLEU against each compute measure, and a table."""
    if not (spec.online_rl.enabled and store.exists(OnlineRL)):
        return []
    rows = compute_rows(store, train_reward)
    measures = ["candidates", "reward_calls", "target_tokens", "seconds"]
    fig, axes = plt.subplots(1, 5, figsize=(22, 4))
    for method, style in (("ReST", "o-"), ("PPO", "s--")):
        pts = [rows[0]] + [r for r in rows if r["method"] == method]
        for ax, m in zip(axes[:4], measures, strict=True):
            ax.plot([r[m] for r in pts], [r["valid_reward"] for r in pts], style, label=method)
            ax.set_xlabel(m.replace("_", " "))
            ax.set_ylabel(f"valid reward ({train_reward})")
        axes[4].plot([r["candidates"] for r in pts], [r["test_bleu"] for r in pts], style, label=method)
    axes[4].set_xlabel("candidates")
    axes[4].set_ylabel("test BLEU")
    for ax in axes:
        ax.legend()
    _save(fig, out / "rest_vs_ppo_compute.png")
    rest_rows = [r for r in rows if r["method"] == "ReST"]
    final = policy_name(*store.final_step())
    rest_final = next(r for r in rest_rows if r["checkpoint"] == final)
    ppo_rows = [r for r in rows if r["method"] == "PPO"]
    independent = independent_reward(spec)
    metrics = [f"reward_{train_reward}", *([f"reward_{independent}"] if independent else []), "bleu"]
    splits = [s for s in ("valid", "test") if s in spec.evaluation.splits]

    def deltas(a: str, b: str) -> list[dict]:
        return eval_deltas(store, store.get(Evaluation, policy=a), store.get(Evaluation, policy=b), splits, metrics)

    # Per compute measure: ReST's final checkpoint against PPO's first checkpoint that used at least as
    # much of it and its last that used less (PPO's checkpoints are coarse, so the two bracket equal
    # compute), and against the one a PPO user would keep within that budget (best valid reward, as ReST
    # keeps its own). Where PPO never got there (its budget ended first), the row says so.
    matches, lines = [], []
    for m in ("candidates", "reward_calls", "seconds", "target_tokens"):
        matched = [r for r in ppo_rows if r[m] >= rest_final[m]]
        if not matched:
            end = f"{ppo_rows[-1][m]:g}" if ppo_rows else "nothing (no checkpoint yet)"
            lines.append(f"- {m}: PPO's budget ended at {end}, below ReST's {rest_final[m]:g}; no match")
            continue
        first = matched[0]
        picks: dict[str, list[str]] = {first["checkpoint"]: ["first with at least as much"]}
        below = [r for r in ppo_rows if r[m] < rest_final[m]]
        if below:
            picks.setdefault(below[-1]["checkpoint"], []).append("last with less")
        known = [r for r in ppo_rows if r[m] <= first[m] and r["valid_reward"] is not None]
        if known:
            best = max(known, key=lambda r: r["valid_reward"])
            picks.setdefault(best["checkpoint"], []).append("best valid reward up to the first")
        by_name = {r["checkpoint"]: r for r in ppo_rows}
        for name, why in picks.items():
            ppo, pick = by_name[name], " & ".join(why)
            lines.append(
                f"- {m}, PPO's {pick}: ReST {rest_final[m]:g} vs PPO {name} {ppo[m]:g}; test BLEU "
                f"{rest_final['test_bleu']} (ReST) vs {ppo['test_bleu']} (PPO)"
            )
            matches += [{"equal": m, "ppo_pick": pick, "ppo_checkpoint": name, **d} for d in deltas(name, final)]
    # The reward-hacking half: each method's last checkpoint against BC, BLEU and the independent reward
    # beside the training reward.
    last = [("PPO last", ppo_rows[-1]["checkpoint"])] if ppo_rows else []
    against_bc = [{"minus BC": label, "checkpoint": name, **d}
                  for label, name in [("ReST final", final), *last] for d in deltas(BASE, name)]  # fmt: skip
    phases = store.get(OnlineRL).phase_seconds
    where = ""
    if phases:
        total = sum(phases[k] for k in PHASES) or 1.0
        where = (
            f"PPO's seconds by phase, over the {phases['iterations']:g} iterations timed so: "
            + ", ".join(f"{k} {phases[k]:g} s ({100 * phases[k] / total:.0f} %)" for k in PHASES)
            + " (update: the behaviour and BC log-probs and the epochs).\n"
        )
    return [
        "\n## ReST against online RL (PPO) at equal compute\n",
        f"PPO: {store.get(OnlineRL).advantage}. Compute counts sampling, scoring and training from BC on; BC and the "
        "reward model are shared and left out.\n",
        md_table(rows),
        where,
        "\n![ReST vs PPO](rest_vs_ppo_compute.png)\n",
        f"\nAt equal compute, measure by measure: ReST's final checkpoint ({final}) against PPO's first checkpoint "
        "that used at least as much and its last that used less (together they bracket equal compute), and "
        "against PPO's checkpoint with the best valid reward up to the first (picked on valid, as ReST picks its "
        "own, so its valid delta leans PPO's way; test is the clean comparison). ReST's seconds include the "
        "validations its steps ran to keep their best checkpoint, where the step history timed them (PPO's loop "
        "has none; neither counts the evaluation of its checkpoints). Delta = ReST minus PPO, paired bootstrap "
        "over sentences (BLEU: the corpus score per resample):\n",
        "\n".join(lines) + "\n",
        md_table(matches) if matches else "",
        "\nEach method's last checkpoint minus BC (training reward, independent reward, BLEU):\n",
        md_table(against_bc),
    ]


def _human_section(store: ExperimentStore) -> list[str]:
    """People's ratings against BC, once `human_eval` has run (`rest rate`, then materialize it)."""
    if not store.exists(HumanEval):
        return []
    from rest_pipeline.core.human.analysis import human_eval_markdown

    record = store.get(HumanEval)
    if record.plot:  # the plot lives beside the ratings; the report links it from report/
        record = record.model_copy(update={"plot": f"../human_eval/{record.plot}"})
    return ["\n## Human evaluation (side by side against BC, 0-6)\n", human_eval_markdown(record)]


def _slice_damage_section(spec: ExperimentSpec, store: ExperimentStore) -> list[str]:
    """Per Improve step, the share of the slice's samples that look damaged (the cheap detectors of
    improve/filtering.py): a blind spot of the reward shows as a share that grows from step to step."""
    rows = []
    for g, i in all_steps(spec):
        sl = store.find(SliceRecord, grow=g, step=i)
        if sl is None or not sl.detected:
            continue
        share = {k: f"{v / max(sl.kept_samples, 1):.2%}" for k, v in sl.detected.items()}
        rows.append({"step": f"G={g} I={i}", "kept samples": sl.kept_samples, **share})
    if not rows:
        return []
    return [
        "\n## What the slices kept that looks damaged\n",
        "Share of each step's kept samples that repeat themselves, copy the source, are under half the "
        "source's length, or are empty.\n",
        md_table(rows),
    ]


def _probe_section(spec: ExperimentSpec, store: ExperimentStore) -> list[str]:
    """Each reward under test (the check `rewards_not_fooled`, or `rest check-reward`), once it has run."""
    from rest_pipeline.core.evaluation.reward_probes import probe_table

    records = [r for name in reward_names(spec) if (r := store.find(RewardProbe, reward=name)) is not None]
    if not records:
        return []
    text = [
        "\n## Reward models under test\n",
        "BC's greedy valid outputs against damaged variants of themselves: how often each reward prefers the "
        "damaged one or ties it, and the mean reward the damage costs (95 % bootstrap interval), beside chrF and "
        f"sentence BLEU. A checked family fails above {spec.reward.probe.max_prefer_or_tie:.0%} (`reward.probe`).\n",
    ]
    for r in records:
        text += [f"\n`{r.reward}` ({r.reward_version}), {r.hypotheses}: fails {', '.join(r.failing) or 'nothing'}\n"]
        text += [md_table(probe_table(r).to_dict("records"))]
    return text


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def build_report(spec: ExperimentSpec, store: ExperimentStore, train_reward: str, independent: str | None) -> Path:
    out = store.report_dir
    out.mkdir(parents=True, exist_ok=True)
    rows = checkpoint_rows(spec, store, train_reward, independent)
    labels = [r["checkpoint"] for r in rows]
    x = range(len(rows))

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for split in spec.evaluation.splits:
        ax.plot(x, [r[f"{split}_{train_reward}"] for r in rows], marker="o", label=f"{split} {train_reward}")
        if independent:
            ax.plot(x, [r[f"{split}_{independent}"] for r in rows], marker="s", ls="--", label=f"{split} {independent}")
    ax.set_xticks(list(x), labels, rotation=45, ha="right")
    ax.set_ylabel("mean reward (greedy)")
    ax.legend(fontsize=8)
    ax.set_title("Reward per checkpoint")
    _save(fig, out / "reward_per_checkpoint.png")

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for split in spec.evaluation.splits:
        ax.plot(x, [r[f"{split}_bleu"] for r in rows], marker="o", label=f"{split} BLEU")
    ax.set_xticks(list(x), labels, rotation=45, ha="right")
    ax.set_ylabel("BLEU (sacrebleu, greedy)")
    ax.legend(fontsize=8)
    ax.set_title("BLEU per checkpoint")
    _save(fig, out / "bleu_per_checkpoint.png")

    hist = grow_rewards(store, train_reward, independent=independent)
    hist = hist.rename(columns={"reward": "r", "independent": "ind"})
    hist = hist[["grow", "source_id", "origin", "r", *(["ind"] if independent else [])]]
    grow_samples = grow_sample_curves(hist, "r")
    named = hist.rename(columns={"r": train_reward, "ind": independent})
    agreement = reward_agreement(named, train_reward, independent) if independent else []
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for (g, origin), part in hist.groupby(["grow", "origin"]):
        ax.hist(part.r, bins=40, range=(0, 1), histtype="step", density=True, label=f"grow {g} {origin}")
    ax.set_xlabel(f"{train_reward} reward")
    ax.legend(fontsize=8)
    ax.set_title("Reward histograms per grow")
    _save(fig, out / "reward_histograms.png")

    bon = store.get(BestOfN)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label in ("bc", "rest"):
        curve = bon.curves[label].curve
        ns = sorted(curve)
        ax.plot(ns, [curve[n] for n in ns], marker="o", label=label.upper())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (samples per source)")
    ax.set_ylabel(f"best-of-N {train_reward} reward (valid)")
    ax.legend()
    ax.set_title("Best-of-N")
    _save(fig, out / "best_of_n.png")

    bc_eval = store.get(DecodingEval)
    sig = significance(spec, store, train_reward, independent)
    kept = grow_sizes(store)
    checked = findings(rows, sig, bon, train_reward, independent=independent)
    n_judged = spec.improve.train.validate_pairs
    judged_on = f"the first {n_judged} valid sentences" if n_judged else "all of valid"
    text = [
        f"# ReST report: experiment `{spec.name}`\n",
        f"{spec.description}\n",
        *run_header(spec, store),
        f"Training reward: `{train_reward}`; independent reward: `{independent}`. All rewards are means over the "
        "split of greedy outputs, on [0, 1]. BLEU/chrF: sacrebleu corpus scores of the same outputs.\n",
        *signature_lines(store),
        "## The paper's findings, checked on this run\n",
        md_table([f.model_dump() for f in checked]),
        "\n## Table 1 (the paper's shape)\n",
        md_table(table1(rows, spec, train_reward)),
        "\n## Every checkpoint\n",
        f"`valid_reward_selection`: the validation reward a step was judged on (greedy, on {judged_on}); "
        "a step that does not beat its parent hands the parent on, so its row repeats the parent's.\n",
        md_table(rows),
        "\n![reward](reward_per_checkpoint.png)\n\n![bleu](bleu_per_checkpoint.png)\n",
        "\n## Grows\n",
        md_table(kept.to_dict("records")),
        "\n![histograms](reward_histograms.png)\n",
        "\nEach grow's samples as Best-of-k over its sources (the expected best of k of its N samples, "
        f"{train_reward} reward): k=1 is what one sample of that grow's policy earns, k=N the best it reaches. "
        "ReST sharpens the policy toward its own best samples: k=1 climbs toward k=N, and a k=N that does not "
        "climb is a ceiling later grows approach but do not pass. `at_grow1_k`: the k at which grow 1's "
        "policy does as well as this grow's single sample. Grows that sample different sources (rotate_sources) "
        "also differ in how hard their sources are, which shifts a whole row; the gap between k=N and k=1 "
        "within a row does not depend on that.\n",
        md_table(grow_samples),
        *_agreement_section(agreement, train_reward, independent),
        "\n## Best-of-N on valid\n",
        md_table([{"N": n, "BC": bon.curves["bc"].curve[n], "ReST": bon.curves["rest"].curve[n]} for n in bon.ns]),
        f"\nReST at small N reaches BC at a larger N: **{bon.rest_small_n_reaches_bc_larger_n}** "
        f"({json.dumps([m.model_dump() for m in bon.matching])})\n",
        "\n![best-of-n](best_of_n.png)\n",
        *_control_section(store, rows),
        "\n## Are the gains more than noise?\n",
        "Final checkpoint minus the other policy (BC, the checkpoint each earlier grow handed on, the control), "
        "per sentence of the greedy outputs, with a 95 % paired-bootstrap "
        "interval (2,000 resamples); `significant` means the interval excludes 0.\n",
        md_table(sig),
        "\n## BC policy, beam and greedy (base_policy_eval)\n",
        md_table(
            [
                {"split": r.split, "decoding": r.decoding.name, "num_beams": r.decoding.num_beams, "bleu": r.bleu,
                 "chrf": r.chrf}
                for r in bc_eval.rows
            ]
        ),
        *_probe_section(spec, store),
        *_slice_damage_section(spec, store),
        *_online_rl_section(spec, store, train_reward, out),
        *_human_section(store),
    ]  # fmt: skip
    record = Report(
        checkpoints=rows,
        table1=table1(rows, spec, train_reward),
        best_of_n=bon,
        control=store.find(ControlRecord),
        significance=sig,
        findings=checked,
        grow_samples=grow_samples,
        reward_agreement=agreement,
    )
    return store.write_report(record, "\n".join(text))
