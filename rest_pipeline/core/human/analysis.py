"""What the ratings say: the paper's "human evaluation difference vs BC" per checkpoint, whether the
reward model ranks systems as people do, and whether people agree with each other.

Every number is computed from ratings joined with the round's items (each system's output and its
training reward on that item), nothing else, so a test can recompute each one by hand.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from rest_pipeline.core.human.ratings import all_ratings
from rest_pipeline.core.human.rounds import round_items
from rest_pipeline.core.paths import atomic_path
from rest_pipeline.core.store.experiment import BASE, ExperimentStore
from rest_pipeline.core.store.side_records import HumanDelta, HumanEval, RatingRound, SystemRating


class HumanEvalError(ValueError):
    """No ratings to analyse, or ratings that name a round the store does not hold."""


def ratings_with_rewards(store: ExperimentStore) -> pd.DataFrame:
    """Ratings, each with the reward model's score of the rated output (column `reward`)."""
    ratings = all_ratings(store)
    if ratings.empty:
        raise HumanEvalError(f"{store.human_dir}: no ratings yet (`./scripts/rest rate {store.experiment}`)")
    parts = []
    for round_id, group in ratings.groupby("round"):
        try:
            record = store.get(RatingRound, round_id=round_id)
        except FileNotFoundError:
            raise HumanEvalError(f"ratings name round {round_id}, which {store.human_dir} does not hold") from None
        items = round_items(store, record).set_index("item")
        index = {s: i for i, s in enumerate(record.systems)}
        rewards = [items.at[int(it), f"reward_{index[s]}"] for it, s in zip(group.item, group.system, strict=True)]
        parts.append(group.assign(reward=rewards, reward_name=record.reward))
    return pd.concat(parts, ignore_index=True)


def _bootstrap(values: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def deltas_vs_bc(df: pd.DataFrame) -> list[HumanDelta]:
    """Per checkpoint: mean over items of (its rating - BC's rating by the same rater on the same item,
    averaged over raters), with a bootstrap interval over items; the reward model's difference likewise."""
    out = []
    key = ["round", "item", "rater"]
    base = df[df.system == BASE].set_index(key)[["score", "reward"]]
    for system in sorted(set(df.system) - {BASE}):
        own = df[df.system == system].set_index(key)[["score", "reward"]]
        paired = own.join(base, rsuffix="_bc", how="inner")
        if paired.empty:
            continue
        paired = paired.assign(h=paired.score - paired.score_bc, r=paired.reward - paired.reward_bc)
        per_item = paired.groupby(level=["round", "item"])[["h", "r"]].mean()
        low, high = _bootstrap(per_item.h.to_numpy(dtype=float))
        out.append(
            HumanDelta(
                system=system,
                items=len(per_item),
                human_delta=round(float(per_item.h.mean()), 4),
                low=round(low, 4),
                high=round(high, 4),
                reward_delta=round(float(per_item.r.mean()), 5),
            )
        )
    return out


def reward_agreement(df: pd.DataFrame) -> tuple[float | None, float | None, int]:
    """Mean per-(rater, item) Kendall tau between human scores and rewards over the item's systems
    (items whose ratings all tie are left out), and the share of system pairs people ranked where the
    reward model ranks them the other way round; with the number of such pairs."""
    taus, opposite, pairs = [], 0, 0
    for _, g in df.groupby(["round", "rater", "item"]):
        s, r = g.score.to_numpy(dtype=float), g.reward.to_numpy(dtype=float)
        if len(g) >= 2 and np.ptp(s) > 0 and np.ptp(r) > 0:
            taus.append(kendalltau(s, r).statistic)
        for i, j in itertools.combinations(range(len(g)), 2):
            if s[i] != s[j]:
                pairs += 1
                opposite += int(np.sign(r[i] - r[j]) == -np.sign(s[i] - s[j]))
    tau = round(float(np.mean(taus)), 4) if taus else None
    return tau, (round(opposite / pairs, 4) if pairs else None), pairs


def inter_rater(df: pd.DataFrame) -> tuple[float | None, float | None, int]:
    """Over every pair of raters: Kendall tau and exact agreement of their scores on the (item, system)
    both rated, averaged over pairs; with the number of items rated by two raters or more."""
    wide = df.pivot_table(index=["round", "item", "system"], columns="rater", values="score")
    taus, exact = [], []
    for a, b in itertools.combinations(wide.columns, 2):
        both = wide[[a, b]].dropna()
        if len(both) >= 2 and both[a].nunique() > 1 and both[b].nunique() > 1:
            taus.append(kendalltau(both[a], both[b]).statistic)
        if len(both):
            exact.append(float((both[a] == both[b]).mean()))
    shared = int((wide.notna().sum(axis=1) >= 2).groupby(level=["round", "item"]).any().sum()) if len(wide) else 0
    tau = round(float(np.mean(taus)), 4) if taus else None
    return tau, (round(float(np.mean(exact)), 4) if exact else None), shared


def analyse(store: ExperimentStore, plot: str | None = None) -> HumanEval:
    df = ratings_with_rewards(store)
    systems = [
        SystemRating(system=s, ratings=len(g), items=g.item.nunique(), mean=round(float(g.score.mean()), 4))
        for s, g in df.groupby("system")
    ]
    tau, opposite, pairs = reward_agreement(df)
    rater_tau, rater_exact, shared = inter_rater(df)
    return HumanEval(
        rounds=sorted(set(df["round"])),
        raters=sorted(set(df.rater)),
        ratings=len(df),
        systems=systems,
        deltas=deltas_vs_bc(df),
        reward=str(df.reward_name.iat[0]),
        kendall_tau_human_vs_reward=tau,
        reward_prefers_lower_rated=opposite,
        pairs_compared=pairs,
        inter_rater_kendall_tau=rater_tau,
        inter_rater_exact=rater_exact,
        inter_rater_items=shared,
        plot=plot,
    )


def plot_deltas(record: HumanEval, path) -> None:
    """Reward-model difference against human difference per checkpoint (both vs BC): if the reward
    model tracked people, the points would rise left to right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for d in record.deltas:
        ax.errorbar(d.reward_delta, d.human_delta, yerr=[[d.human_delta - d.low], [d.high - d.human_delta]], fmt="o")
        ax.annotate(d.system, (d.reward_delta, d.human_delta), textcoords="offset points", xytext=(5, 5))
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel(f"reward-model difference vs BC ({record.reward})")
    ax.set_ylabel("human rating difference vs BC (0-6 scale, 95% CI)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def human_eval_markdown(record: HumanEval) -> str:
    """The report's section on human ratings."""
    lines = [
        f"Ratings: {record.ratings} from {len(record.raters)} rater(s) ({', '.join(record.raters)}), "
        f"rounds {', '.join(record.rounds)}; side by side against BC on the 0-6 scale.\n",
        "| system | rated items | mean rating |",
        "|---|---|---|",
        *(f"| {s.system} | {s.items} | {s.mean:.2f} |" for s in record.systems),
        "",
        "| checkpoint | items | human difference vs BC (95% CI) | reward-model difference vs BC |",
        "|---|---|---|---|",
        *(
            f"| {d.system} | {d.items} | {d.human_delta:+.3f} [{d.low:+.3f}, {d.high:+.3f}] | {d.reward_delta:+.4f} |"
            for d in record.deltas
        ),
        "",
        f"Reward model vs people: mean per-item Kendall tau {_fmt(record.kendall_tau_human_vs_reward)}; the "
        f"reward model prefers the system people rated lower in {_fmt(record.reward_prefers_lower_rated)} of "
        f"{record.pairs_compared} pairs people ranked.",
        f"Between raters: Kendall tau {_fmt(record.inter_rater_kendall_tau)}, exact agreement "
        f"{_fmt(record.inter_rater_exact)}, on {record.inter_rater_items} items rated by two or more.",
    ]
    if record.plot:
        lines.append(f"\n![reward-model vs human difference]({record.plot})")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def run_human_eval(store: ExperimentStore) -> HumanEval:
    """Analyse every rating, draw the plot, store the record (the `human_eval` asset)."""
    path = store.human_dir / "human_vs_reward.png"
    record = analyse(store, plot=path.name)
    plot_deltas(record, path)
    store.put(record)
    with atomic_path(store.human_dir / "human_eval.md") as tmp:
        tmp.write_text("# Human evaluation\n\n" + human_eval_markdown(record))
    return record
