"""Grow assets: per grow generation, candidates and reward scores partitioned by source shard."""

import dagster as dg
import pandas as pd

from rest_pipeline.core.grow.run import grow_shard, score_shard
from rest_pipeline.core.rewards.base import load_reward
from rest_pipeline.core.store.candidates import CandidateStore
from rest_pipeline.orchestration.assets import GPU_POOL
from rest_pipeline.orchestration.metadata import md_table
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import ExperimentSpec


def shard_partitions(spec: ExperimentSpec) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([f"{i:04d}" for i in range(spec.grow.shards)])


def reward_names(spec: ExperimentSpec) -> list[str]:
    return list(dict.fromkeys([spec.reward.model, *spec.reward.extra]))


def grow_assets(spec: ExperimentSpec, grow: int = 1) -> list[dg.AssetsDefinition]:
    """Grow 1 samples from the base policy (later grows from the last Improve checkpoint)."""
    name = spec.name
    parts = shard_partitions(spec)
    policy_key = dg.AssetKey([name, "base_policy"])

    @dg.asset(
        key=[name, f"grow_{grow}", "candidates"],
        group_name=name,
        deps=[policy_key],
        partitions_def=parts,
        pool=GPU_POOL,
        code_version=spec.section_hash("grow"),
        kinds={"parquet", "duckdb"},
        description=f"Grow {grow}: N sampled candidates per training source plus the reference pair, per shard.",
    )
    def candidates(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        layout = storage.layout(spec)
        store = CandidateStore(layout.store)
        shard = int(context.partition_key)
        policy_dir = layout.base_policy
        df = grow_shard(
            spec, layout.corpus, store, grow, shard, policy_dir, policy_id=str(policy_dir), log=context.log.info
        )
        samples = df[df.origin == "sample"]
        return dg.MaterializeResult(
            metadata={
                "candidates": len(df),
                "sources": int(df.source_id.nunique()),
                "distinct_rate": round(samples.pair_hash.nunique() / max(len(samples), 1), 4),
                "path": dg.MetadataValue.path(str(store.candidates_file(grow, shard))),
                "sample": md_table(samples.head(6)[["source", "hypothesis", "reference"]].to_dict("records")),
            }
        )

    @dg.asset(
        key=[name, f"grow_{grow}", "rewards"],
        group_name=name,
        deps=[candidates.key],
        partitions_def=parts,
        code_version=spec.section_hash("reward"),
        kinds={"parquet"},
        description=f"Grow {grow}: every candidate scored by each reward model (content-hash cached).",
    )
    def rewards(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        layout = storage.layout(spec)
        store = CandidateStore(layout.store)
        shard = int(context.partition_key)
        models = [load_reward(r) for r in reward_names(spec)]
        reports = score_shard(store, models, grow, shard, log=context.log.info)
        meta: dict[str, object] = {}
        for m, rep in zip(models, reports, strict=True):
            s = pd.read_parquet(rep.path).score
            meta[f"{m.name}_mean"] = round(float(s.mean()), 4)
            for q in (0.1, 0.5, 0.9):
                meta[f"{m.name}_p{int(q * 100)}"] = round(float(s.quantile(q)), 4)
            meta[f"{m.name}_newly_scored"] = rep.newly_scored
            meta[f"{m.name}_unique_inputs"] = rep.unique_inputs
        meta["candidates"] = reports[0].candidates
        return dg.MaterializeResult(metadata=meta)

    return [candidates, rewards]
