"""The online-RL baseline in the graph (opt-in: `online_rl.enabled` in the spec): PPO from the BC
policy with the training reward model, its checkpoints evaluated like Improve checkpoints, and the
reward-hacking check applied to each of them against BC."""

import dagster as dg

from rest_pipeline.core.improve.assess import hacking_verdict
from rest_pipeline.core.online_rl.run import run_online_rl
from rest_pipeline.core.rewards.factory import independent_reward, make_rewards
from rest_pipeline.core.store.experiment import BASE
from rest_pipeline.core.store.records import Evaluation
from rest_pipeline.core.store.side_records import OnlineRL
from rest_pipeline.core.tables import md_table
from rest_pipeline.orchestration import keys
from rest_pipeline.orchestration.instance import interrupts_not_retried
from rest_pipeline.orchestration.placement import placement
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import ExperimentSpec


def online_rl_asset(spec: ExperimentSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=keys.online_rl_key(spec),
        group_name=keys.group(spec),
        deps=[
            keys.policy_key(spec, 0, 0),
            keys.eval_key(spec, 0, 0),
            *keys.reward_deps(spec),
            *([keys.branch_point_key(spec)] if spec.branch is not None else []),
        ],
        code_version=keys.code_version(spec, "online_rl", "reward", "seed"),
        **placement(spec),
        kinds={"pytorch"},
        retry_policy=dg.RetryPolicy(max_retries=1),
        description=(
            "Online RL (PPO) from the BC policy with the training reward model, KL-penalised to BC; a checkpoint "
            "at every compute mark, evaluated like an Improve checkpoint. Resumes from its last save point."
        ),
    )
    @interrupts_not_retried
    def online_rl(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        store = storage.store(spec)
        record = run_online_rl(spec, store, make_rewards(spec, store.reward_model_dir), context.log.info)
        rows = []
        for m in record.marks:
            ev = store.get(Evaluation, policy=m.name)
            rows.append(
                {"checkpoint": m.name, **m.compute.model_dump(), "kl_to_bc": m.kl_to_bc,
                 **{f"{s}_{spec.reward.model}": v.reward(spec.reward.model) for s, v in ev.splits.items()},
                 **{f"{s}_bleu": v.bleu for s, v in ev.splits.items()}}
            )  # fmt: skip
        last = rows[-1]
        return dg.MaterializeResult(
            metadata={
                "checkpoints": md_table(rows),
                "candidates": last["candidates"],
                "iterations": record.iterations,
                "kl_to_bc": last["kl_to_bc"],
                "path": dg.MetadataValue.path(str(store.online_rl_dir)),
            }
        )

    return online_rl


def online_rl_checks(spec: ExperimentSpec) -> list[dg.AssetChecksDefinition]:
    train, independent = spec.reward.model, independent_reward(spec)

    @dg.asset_check(asset=keys.online_rl_key(spec), name="no_reward_hacking", blocking=False)
    def no_reward_hacking(storage: RestStorage) -> dg.AssetCheckResult:
        """Each PPO checkpoint against BC: training reward up while BLEU and the independent reward fall."""
        store = storage.store(spec)
        base = store.get(Evaluation, policy=BASE)
        verdicts = {m.name: hacking_verdict(spec, store.get(Evaluation, policy=m.name), base, train, independent)
                    for m in store.get(OnlineRL).marks}  # fmt: skip
        return dg.AssetCheckResult(
            passed=all(v.passed for v in verdicts.values()),
            metadata={name: v.explanation for name, v in verdicts.items()},
        )

    return [no_reward_hacking]
