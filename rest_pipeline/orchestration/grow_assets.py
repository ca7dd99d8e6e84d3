"""Grow assets: per grow generation, candidates and reward scores partitioned by source shard."""

import dagster as dg
import pandas as pd

from rest_pipeline.core.corpus.fetch import fetch
from rest_pipeline.core.corpus.registry import HUMAN_JUDGEMENTS
from rest_pipeline.core.evaluation.policy_eval import weights_hash
from rest_pipeline.core.grow.run import grow_shard, score_shard
from rest_pipeline.core.improve.step import grow_policy, parent_of, step_name
from rest_pipeline.core.rewards.factory import make_rewards, reward_names
from rest_pipeline.core.store.candidates import CandidateStore
from rest_pipeline.orchestration.assets import GPU_POOL
from rest_pipeline.orchestration.automation import grow_condition
from rest_pipeline.orchestration.metadata import histogram_md, md_table
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import ExperimentSpec


def shard_partitions(spec: ExperimentSpec) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([f"{i:04d}" for i in range(spec.grow.shards)])


def reward_model_asset(spec: ExperimentSpec) -> dg.AssetsDefinition:
    name = spec.name

    @dg.asset(
        key=[name, "reward_model"],
        group_name=name,
        code_version="learned-v1-" + spec.section_hash("reward"),
        kinds={"pytorch", "comet"},
        description=(
            "The `learned` reward: a COMET regression model (frozen all-MiniLM-L6-v2 encoder) trained on "
            "WMT15-17 DA judgements, split by source sentence; reloads with comet.load_from_checkpoint."
        ),
    )
    def reward_model(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        from rest_pipeline.core.rewards.learned import train_learned_reward

        layout = storage.layout(spec)
        tsv = fetch(HUMAN_JUDGEMENTS, mirror=storage.mirror())
        rep = train_learned_reward(
            tsv,
            layout.reward_model,
            seed=spec.seed,
            epochs=spec.reward.learned_epochs,
            max_rows=spec.reward.learned_max_rows,
            log=context.log.info,
        )
        meta = {k: v for k, v in rep.__dict__.items() if k != "path"}
        meta["path"] = dg.MetadataValue.path(rep.path)
        return dg.MaterializeResult(metadata=meta)

    return reward_model


def policy_key(spec: ExperimentSpec, grow: int, step: int) -> dg.AssetKey:
    """Asset of the checkpoint (grow, step) hands on; (0, 0) is the BC policy."""
    if grow == 0:
        return dg.AssetKey([spec.name, "base_policy"])
    return dg.AssetKey([spec.name, f"grow_{grow}", f"improve_{step}", "policy"])


def eval_key(spec: ExperimentSpec, grow: int, step: int) -> dg.AssetKey:
    if grow == 0:
        return dg.AssetKey([spec.name, "base_policy_rewards"])
    return dg.AssetKey([spec.name, f"grow_{grow}", f"improve_{step}", "eval"])


def grow_assets(spec: ExperimentSpec, grow: int = 1) -> list[dg.AssetsDefinition]:
    """Grow 1 samples from the BC policy, grow g > 1 from the last Improve checkpoint of grow g-1."""
    name = spec.name
    parts = shard_partitions(spec)
    sampler_step = parent_of(spec, grow, 1)
    upstream = [policy_key(spec, *sampler_step)]
    if grow > 1:  # a failed reward-hacking check on the previous grow's last eval stops the loop here
        upstream.append(eval_key(spec, *sampler_step))

    @dg.asset(
        key=[name, f"grow_{grow}", "candidates"],
        group_name=name,
        deps=upstream,
        partitions_def=parts,
        pool=GPU_POOL,
        automation_condition=grow_condition(spec, grow),
        code_version=spec.section_hash("grow"),
        kinds={"parquet", "duckdb"},
        description=f"Grow {grow}: N sampled candidates per training source plus the reference pair, per shard.",
    )
    def candidates(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        layout = storage.layout(spec)
        store = CandidateStore(layout.store)
        shard = int(context.partition_key)
        policy_dir = grow_policy(spec, layout, grow)
        policy_id = f"{step_name(*sampler_step)}@{weights_hash(policy_dir)}"
        context.log.info(f"grow {grow} shard {shard}: sampling from {policy_id} ({policy_dir})")
        df = grow_shard(spec, layout.corpus, store, grow, shard, policy_dir, policy_id=policy_id, log=context.log.info)
        samples = df[df.origin == "sample"]
        return dg.MaterializeResult(
            metadata={
                "candidates": len(df),
                "sources": int(df.source_id.nunique()),
                "distinct_rate": round(samples.pair_hash.nunique() / max(len(samples), 1), 4),
                "policy": policy_id,
                "path": dg.MetadataValue.path(str(store.candidates_file(grow, shard))),
                "sample": md_table(samples.head(6)[["source", "hypothesis", "reference"]].to_dict("records")),
            }
        )

    reward_deps = [candidates.key]
    if "learned" in reward_names(spec):
        reward_deps.append(dg.AssetKey([name, "reward_model"]))

    @dg.asset(
        key=[name, f"grow_{grow}", "rewards"],
        group_name=name,
        deps=reward_deps,
        partitions_def=parts,
        automation_condition=grow_condition(spec, grow),
        code_version=spec.section_hash("reward"),
        kinds={"parquet"},
        description=f"Grow {grow}: every candidate scored by each reward model (content-hash cached).",
    )
    def rewards(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        layout = storage.layout(spec)
        store = CandidateStore(layout.store)
        shard = int(context.partition_key)
        models = make_rewards(spec, layout.reward_model)
        reports = score_shard(store, models, grow, shard, log=context.log.info)
        meta: dict[str, object] = {}
        origin = store.read_candidates(grow, shard).set_index("candidate_id").origin
        for m, rep in zip(models, reports, strict=True):
            scored = pd.read_parquet(rep.path)
            s = scored.score
            by_origin = scored.assign(origin=scored.candidate_id.map(origin)).groupby("origin").score
            meta[f"{m.name}_histogram"] = histogram_md(
                {o: v.tolist() for o, v in by_origin}, f"grow {grow} shard {shard}: {m.name} ({m.normalisation})"
            )
            meta[f"{m.name}_mean"] = round(float(s.mean()), 4)
            for q in (0.1, 0.5, 0.9):
                meta[f"{m.name}_p{int(q * 100)}"] = round(float(s.quantile(q)), 4)
            meta[f"{m.name}_newly_scored"] = rep.newly_scored
            meta[f"{m.name}_unique_inputs"] = rep.unique_inputs
        meta["candidates"] = reports[0].candidates
        return dg.MaterializeResult(metadata=meta)

    return [candidates, rewards]
