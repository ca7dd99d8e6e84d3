"""Grow assets: the reward model, then per grow generation the candidates and their reward scores,
partitioned by source shard (each shard runs, fails and resumes on its own)."""

import dagster as dg

from rest_pipeline.core.corpus.fetch import fetch
from rest_pipeline.core.corpus.registry import HUMAN_JUDGEMENTS
from rest_pipeline.core.grow.run import grow_shard, score_shard
from rest_pipeline.core.improve.chain import sampler_of
from rest_pipeline.core.policy.model import weights_hash
from rest_pipeline.core.rewards.factory import make_rewards
from rest_pipeline.core.store.experiment import policy_name
from rest_pipeline.core.store.location import read_table
from rest_pipeline.core.store.side_records import ShardCost
from rest_pipeline.orchestration import keys
from rest_pipeline.orchestration.automation import grow_condition
from rest_pipeline.orchestration.metadata import histogram_md, md_table
from rest_pipeline.orchestration.placement import placement
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import ExperimentSpec


def reward_model_asset(spec: ExperimentSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=keys.reward_model_key(spec),
        group_name=keys.group(spec),
        code_version=keys.code_version(spec, "reward", "seed"),
        **placement(spec, gpu_pool=False),
        kinds={"pytorch", "comet"},
        description=(
            "The `learned` reward: a COMET regression model (frozen all-MiniLM-L6-v2 encoder) trained on "
            "WMT15-17 DA judgements, split by source sentence; reloads with comet.load_from_checkpoint."
        ),
    )
    def reward_model(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        from rest_pipeline.core.rewards.learned import train_shared_reward_model

        store = storage.store(spec)
        tsv = fetch(HUMAN_JUDGEMENTS, mirror=storage.mirror())
        key, path, rep = train_shared_reward_model(
            tsv,
            store.reward_models_root,
            seed=spec.seed,
            epochs=spec.reward.learned_epochs,
            max_rows=spec.reward.learned_max_rows,
            engine=spec.reward.engine,
            compute_type=spec.reward.compute_type,
            log=context.log.info,
        )
        store.link_reward_model(key, path)
        meta: dict[str, object] = rep.model_dump(exclude={"schema_version"})
        meta["key"] = key
        meta["path"] = dg.MetadataValue.path(str(path))
        return dg.MaterializeResult(metadata=meta)

    return reward_model


def grow_assets(spec: ExperimentSpec, grow: int = 1) -> list[dg.AssetsDefinition]:
    """Grow 1 samples from the BC policy, grow g > 1 from the last Improve checkpoint of grow g-1."""
    parts = keys.shard_partitions(spec)
    sampler = sampler_of(spec, grow)
    upstream = [keys.policy_key(spec, *sampler)]
    if grow > 1:  # a failed reward-hacking check on the previous grow's last eval stops the loop here
        upstream.append(keys.eval_key(spec, *sampler))
    if spec.branch is not None and spec.branch.grow == 0 and grow == 1:  # samples the pinned BC policy
        upstream.append(keys.branch_point_key(spec))

    @dg.asset(
        key=keys.candidates_key(spec, grow),
        group_name=keys.group(spec),
        deps=upstream,
        partitions_def=parts,
        **placement(spec),
        automation_condition=grow_condition(spec, grow),
        code_version=keys.code_version(spec, "grow", "seed", extra=grow),
        kinds={"parquet", "duckdb"},
        description=f"Grow {grow}: N sampled candidates per training source plus the reference pair, per shard.",
    )
    def candidates(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        store = storage.store(spec)
        shard = int(context.partition_key)
        name = policy_name(*sampler)
        policy_dir = store.policy(name)
        policy_id = f"{name}@{weights_hash(policy_dir)}"
        context.log.info(f"grow {grow} shard {shard}: sampling from {policy_id} ({policy_dir})")
        df = grow_shard(spec, store, grow, shard, policy_dir, policy_id=policy_id, log=context.log.info)
        samples = df[df.origin == "sample"]
        cost = store.find(ShardCost, grow=grow, shard=shard, stage="sample")
        return dg.MaterializeResult(
            metadata={
                "engine": dg.MetadataValue.json(cost.engine if cost is not None else {}),
                "candidates": len(df),
                "sources": int(df.source_id.nunique()),
                "distinct_rate": round(samples.pair_hash.nunique() / max(len(samples), 1), 4),
                "policy": policy_id,
                "path": dg.MetadataValue.path(str(store.candidates_file(grow, shard))),
                "sample": md_table(samples.head(6)[["source", "hypothesis", "reference"]].to_dict("records")),
            }
        )

    @dg.asset(
        key=keys.rewards_key(spec, grow),
        group_name=keys.group(spec),
        deps=[candidates.key, *keys.reward_deps(spec)],
        partitions_def=parts,
        automation_condition=grow_condition(spec, grow),
        code_version=keys.code_version(spec, "reward"),
        **placement(spec, gpu_pool=False),
        kinds={"parquet"},
        description=f"Grow {grow}: every candidate scored by each reward model (content-hash cached).",
    )
    def rewards(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        store = storage.store(spec)
        shard = int(context.partition_key)
        models = make_rewards(spec, store.reward_model_dir)
        reports = score_shard(store, models, grow, shard, log=context.log.info)
        meta: dict[str, object] = {}
        origin = store.read_candidates(grow, shard).set_index("candidate_id").origin
        for m, rep in zip(models, reports, strict=True):
            scored = read_table(rep.path)
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
