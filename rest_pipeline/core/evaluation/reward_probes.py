"""The experiment's rewards under test: damaged variants of the BC policy's greedy valid outputs
(core/rewards/probes.py), a verdict per family and reward, stored as `RewardProbe` records and checked
against the spec's bar (`reward.probe`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import pandas as pd

from rest_pipeline.core.evaluation.checkpoint import hypotheses
from rest_pipeline.core.rewards.base import RewardModel
from rest_pipeline.core.rewards.probes import verdicts
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.store.records import Evaluation
from rest_pipeline.core.store.side_records import ProbeRow, RewardProbe
from rest_pipeline.core.types import Log
from rest_pipeline.spec import ExperimentSpec


def bc_valid_outputs(store: ExperimentStore, limit: int) -> tuple[list[str], list[str], list[str], str]:
    """(sources, BC's greedy outputs, references) of the first `limit` valid sentences, and what they are."""
    evaluation = store.get(Evaluation, policy="base")
    outputs = hypotheses(store, evaluation, "valid")
    valid = store.split("valid")
    rows = valid.merge(outputs[["source_id", "hypothesis"]], on="source_id", how="inner").head(limit)
    return list(rows.source), list(rows.hypothesis), list(rows.target), f"BC greedy on valid[:{len(rows)}]"


def probe_rewards(
    spec: ExperimentSpec, store: ExperimentStore, rewards: Sequence[RewardModel], log: Log = print
) -> list[RewardProbe]:
    """One record per reward: its verdict on every family (chrF and sentence BLEU beside it)."""
    bar = spec.reward.probe
    sources, outputs, references, what = bc_valid_outputs(store, bar.sentences)
    content = hashlib.sha256(json.dumps([sources, outputs, references, spec.seed]).encode()).hexdigest()[:16]
    records = []
    found = None
    for reward in rewards:
        key = f"{content}:{reward.version}"
        reused = store.reusable(RewardProbe, key, reward=reward.name)
        if reused is not None:
            failing = _failing(reused.rows, reward.name, spec)
            records.append(reused.model_copy(update={"failing": failing, "max_prefer_or_tie": bar.max_prefer_or_tie}))
            continue
        found = found if found is not None else verdicts(rewards, sources, outputs, references, seed=spec.seed)
        rows = [
            ProbeRow(
                family=v.family, made_by=v.made_by, applied=v.applied, skipped=v.skipped,
                prefer_or_tie=v.prefer_or_tie, mean_drop=v.mean_drop, drop_interval=v.drop_interval,
            )
            for v in found
        ]  # fmt: skip
        failing = _failing(rows, reward.name, spec)
        record = RewardProbe(
            reward=reward.name, reward_version=reward.version, key=key, hypotheses=what, sentences=len(sources),
            max_prefer_or_tie=bar.max_prefer_or_tie, failing=failing, rows=rows,
        )  # fmt: skip
        store.put(record)
        log(f"reward probes: {reward.name}: fails {failing or 'none'} (bar {bar.max_prefer_or_tie:.0%})")
        records.append(record)
    return records


def _failing(rows: Sequence[ProbeRow], reward: str, spec: ExperimentSpec) -> list[str]:
    bar = spec.reward.probe
    return [
        r.family for r in rows if r.family in bar.families and r.prefer_or_tie.get(reward, 0) > bar.max_prefer_or_tie
    ]


def probe_table(record: RewardProbe) -> pd.DataFrame:
    """The verdict as people read it: per family, the reward beside chrF and sentence BLEU."""
    out = []
    for r in record.rows:
        row = {"family": r.family, "applied": r.applied, "skipped": r.skipped}
        for judge in (record.reward, "chrf", "bleu"):
            if judge in r.prefer_or_tie:
                lo, hi = r.drop_interval[judge]
                row[f"{judge} prefers/ties"] = f"{r.prefer_or_tie[judge]:.1%}"
                row[f"{judge} drop"] = f"{r.mean_drop[judge]:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        row["fails"] = "FAILS" if r.family in record.failing else ""
        out.append(row)
    return pd.DataFrame(out)
