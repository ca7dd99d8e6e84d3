"""Best-of-k from samples already drawn: what the Grow candidates in the store say about how far
each grow's policy has moved, at no sampling cost (the Best-of-N curves at inference draw their own)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def expected_best_of_k(scores: np.ndarray, k: int) -> float:
    """E[max of k of these n scores drawn without replacement], exact (not resampled): the i-th
    smallest is the maximum of C(i-1, k-1) of the C(n, k) subsets."""
    x = np.sort(np.asarray(scores, dtype=float))
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"best of k={k} needs 1 <= k <= n={n}")
    # C(i-1, k-1) / C(n, k) for i = n..k, from the largest (k/n) down: a running ratio, no big integers,
    # and only weights too small to matter can underflow
    weights = np.zeros(n)
    weights[n - 1] = k / n
    for i in range(n - 1, k - 1, -1):
        weights[i - 1] = weights[i] * (i - k + 1) / i
    return float(weights @ x)


def grow_sample_curves(table: pd.DataFrame, reward: str) -> list[dict]:
    """Per grow, the expected Best-of-k of its sampled candidates over its sources, k = 1, 2, 4, .. N.

    This is how far each grow's sampling policy has moved: k=1 is the reward of one sample, k=N the
    best the policy reaches in N tries. ReST sharpens a policy toward its own best samples, so k=1
    rises towards k=N; a k=N that does not rise is a ceiling the next grows cannot pass.
    `at_grow1_k`: the k at which grow 1's policy (the BC policy) does as well as this grow's k=1
    (log-linear between the k measured)."""
    rows: list[dict] = []
    first: dict[int, float] | None = None
    for grow, part in table[table.origin == "sample"].groupby("grow", sort=True):
        per_source = [g.to_numpy() for _, g in part.groupby("source_id")[reward]]
        n = min(len(x) for x in per_source)
        ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= n]
        ks += [n] if n not in ks else []
        curve = {k: float(np.mean([expected_best_of_k(x, k) for x in per_source])) for k in ks}
        first = first or curve
        rows.append(
            {"grow": int(grow), "sources": len(per_source), "N": n,
             **{f"best_of_{k}": round(v, 4) for k, v in curve.items()},
             "at_grow1_k": _k_reaching(first, curve[1])}
        )  # fmt: skip
    return rows


def _k_reaching(curve: dict[int, float], value: float) -> float | str:
    ks = sorted(curve)
    if value <= curve[ks[0]]:
        return ks[0]
    for lo, hi in zip(ks, ks[1:], strict=False):
        if curve[lo] <= value <= curve[hi]:
            frac = (value - curve[lo]) / max(curve[hi] - curve[lo], 1e-12)
            return round(float(np.exp(np.log(lo) + frac * (np.log(hi) - np.log(lo)))), 2)
    return f">{ks[-1]}"


def reward_agreement(table: pd.DataFrame, train: str, independent: str) -> list[dict]:
    """Per grow, how the training reward ranks each source's samples against an independent reward:
    the mean per-source Kendall tau between the two, and the independent reward of the sample the
    training reward ranks first, beside one sample's (k=1) and the independent reward's own best.

    ReST keeps what the training reward ranks highest; where that choice scores no better than a
    random sample by the independent reward, a gain seen only by the training reward is expected."""
    from scipy.stats import kendalltau

    rows: list[dict] = []
    for grow, part in table[table.origin == "sample"].groupby("grow", sort=True):
        taus, picked, one, best = [], [], [], []
        for _, g in part.groupby("source_id"):
            a, b = g[train].to_numpy(dtype=float), g[independent].to_numpy(dtype=float)
            if len(a) > 1 and np.ptp(a) > 0 and np.ptp(b) > 0:
                taus.append(kendalltau(a, b).statistic)
            picked.append(b[np.argmax(a)])
            one.append(b.mean())
            best.append(b.max())
        rows.append(
            {
                "grow": int(grow),
                "sources": len(one),
                f"kendall_tau_{train}_vs_{independent}": round(float(np.mean(taus)), 4) if taus else None,
                f"{independent}_of_{train}_top1": round(float(np.mean(picked)), 4),
                f"{independent}_one_sample": round(float(np.mean(one)), 4),
                f"{independent}_own_top1": round(float(np.mean(best)), 4),
            }
        )
    return rows
