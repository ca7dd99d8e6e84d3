"""Improve assets: per (grow g, step i) a slice, a checkpoint and its evaluation; then Best-of-N,
the originals-only control and the report. The lineage of every checkpoint is the path through
these assets."""

import base64

import dagster as dg

from rest_pipeline.core.improve import assess
from rest_pipeline.core.improve.chain import all_steps, final_step, own_steps, parent_of
from rest_pipeline.core.improve.filtering import slice_for_step
from rest_pipeline.core.improve.step import run_improve_step
from rest_pipeline.core.report import build_report
from rest_pipeline.core.rewards.factory import independent_reward, make_reward, make_rewards
from rest_pipeline.core.store.experiment import policy_name
from rest_pipeline.core.store.queries import slice_extremes
from rest_pipeline.core.store.records import Evaluation, Report
from rest_pipeline.orchestration import keys
from rest_pipeline.orchestration.automation import step_condition
from rest_pipeline.orchestration.instance import interrupts_not_retried
from rest_pipeline.orchestration.metadata import md_table
from rest_pipeline.orchestration.placement import placement
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import ExperimentSpec

# What an evaluation reads of the spec: rewards, evaluation splits, sampling settings of the diversity probe.
EVAL_INPUTS = ("reward", "evaluation", "grow", "tokenizer.max_length", "improve.diversity_samples",
               "improve.diversity_sources", "seed")  # fmt: skip


def eval_metadata(summary: Evaluation) -> dict[str, object]:
    """Numeric metadata per split (the UI plots these over materializations) plus a table."""
    meta: dict[str, object] = {}
    rows = []
    for split, s in summary.splits.items():
        numbers = {"sentences": s.sentences, "bleu": s.bleu, "chrf": s.chrf}
        numbers.update({f"reward_{k}": v for k, v in s.rewards.items()})
        numbers.update(distinct_1=s.distinct_1, distinct_2=s.distinct_2, mean_length=s.mean_length)
        meta.update({f"{split}_{k}": v for k, v in numbers.items()})
        rows.append({"split": split, **numbers})
    if summary.diversity is not None:
        meta["distinct_samples_per_source"] = summary.diversity.distinct_samples_per_source
    meta["scores"] = md_table(rows)
    if summary.inherited_from:
        meta["inherited_from"] = summary.inherited_from
    return meta


def base_rewards_asset(spec: ExperimentSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=keys.eval_key(spec, 0, 0),
        group_name=keys.group(spec),
        automation_condition=step_condition(spec),
        deps=[keys.policy_key(spec, 0, 0), *keys.reward_deps(spec)],
        code_version=keys.code_version(spec, *EVAL_INPUTS),
        **placement(spec),
        kinds={"sacrebleu", "comet"},
        description="The BC policy under the same evaluation as every Improve checkpoint: rewards, BLEU, chrF, "
        "diversity. The baseline of the reward-hacking check and of the report.",
    )
    def base_policy_rewards(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        store = storage.store(spec)
        summary = assess.evaluate_step(spec, store, 0, 0, make_rewards(spec, store.reward_model_dir), context.log.info)
        return dg.MaterializeResult(metadata=eval_metadata(summary))

    return base_policy_rewards


def improve_step_assets(spec: ExperimentSpec, grow: int, step: int) -> list[dg.AssetsDefinition]:
    parent = parent_of(spec, grow, step)
    imp = spec.improve
    parameter = imp.filter.values[step - 1]
    name = policy_name(grow, step)

    @dg.asset(
        key=keys.slice_key(spec, grow, step),
        group_name=keys.group(spec),
        automation_condition=step_condition(spec),
        # A branch's first slices read its parent's grow: through the branch point, which pins it.
        deps=[keys.rewards_key(spec, grow)]
        + ([keys.branch_point_key(spec)] if spec.branch and grow == spec.branch.grow else []),
        # Only this step's filter value: raising another step's bar leaves this slice fresh.
        code_version=keys.code_version(
            spec,
            "reward.model",
            "improve.mix_originals",
            "improve.dedupe",
            extra=imp.filter.model_copy(update={"values": [parameter]}).model_dump(mode="json"),
        ),
        kinds={"parquet", "duckdb"},
        description=f"Grow {grow}, Improve {step}: candidates clearing {imp.filter.kind} {parameter} "
        f"under reward '{spec.reward.model}'" + (" plus the original pairs." if imp.mix_originals else "."),
    )
    def slice_(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        store = storage.store(spec)
        stats = slice_for_step(spec, store, grow, step)
        context.log.info(f"slice {name}: {stats}")
        meta: dict[str, object] = {
            k: v for k, v in stats.model_dump().items() if v is not None and k not in {"path", "schema_version"}
        }
        meta["skip_reason"] = stats.skip_reason or "none"
        meta["coverage"] = stats.coverage
        meta["path"] = dg.MetadataValue.path(str(store.resolve(stats.path)))
        if stats.kept:
            meta["best_and_worst_kept"] = md_table(slice_extremes(store, grow, step).to_dict("records"))
        return dg.MaterializeResult(metadata=meta)

    @dg.asset(
        key=keys.policy_key(spec, grow, step),
        group_name=keys.group(spec),
        automation_condition=step_condition(spec),
        deps=[
            keys.slice_key(spec, grow, step),
            keys.policy_key(spec, *parent),
            keys.eval_key(spec, *parent),
            *keys.reward_deps(spec),
        ],
        code_version=keys.code_version(
            spec,
            "reward.model",
            "improve.loss",
            "improve.train",
            "improve.lr_decay",
            "improve.grow_lr_decay",
            "improve.min_improvement",
            "improve.patience",
            "seed",
            extra=[grow, step],
        ),
        **placement(spec),
        retry_policy=dg.RetryPolicy(max_retries=1),
        kinds={"pytorch", "transformers"},
        description=f"Grow {grow}, Improve {step}: the parent checkpoint fine-tuned ({imp.loss}) on the slice; "
        "keeps the best validation reward, or hands the parent on if it did not improve.",
    )
    @interrupts_not_retried
    def policy(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        store = storage.store(spec)
        reward = make_reward(spec.reward.model, spec, store.reward_model_dir)
        rec = run_improve_step(spec, store, grow, step, reward, log=context.log.info)
        history = [{k: v for k, v in r.items() if k not in {"validate_seconds", "best"}} for r in rec.history]
        lineage = rec.model_dump(exclude={"history", "hyperparameters", "experiment", "schema_version"})
        return dg.MaterializeResult(
            metadata={
                "status": rec.status,
                "skip_reason": rec.skip_reason or "none",
                "parent": rec.parent,
                "valid_reward": rec.valid_reward,
                "parent_valid_reward": rec.parent_valid_reward,
                "slice_kept": rec.slice_kept,
                "lr": rec.lr,
                "train_seconds": rec.train_seconds,
                "train_steps": rec.train_steps,
                "lineage": md_table([{"field": k, "value": v} for k, v in lineage.items()]),
                "lora_adapter": dg.MetadataValue.json(rec.lora or {}),
                "hyperparameters": dg.MetadataValue.json(rec.hyperparameters),
                "validation_history": md_table(history),
                "path": dg.MetadataValue.path(str(store.resolve(rec.checkpoint))),
            },
            data_version=dg.DataVersion(rec.checkpoint_hash),
        )

    @dg.asset(
        key=keys.eval_key(spec, grow, step),
        group_name=keys.group(spec),
        automation_condition=step_condition(spec),
        deps=[keys.policy_key(spec, grow, step), keys.eval_key(spec, *parent), *keys.reward_deps(spec)],
        code_version=keys.code_version(spec, *EVAL_INPUTS),
        **placement(spec),
        kinds={"sacrebleu", "comet"},
        description=f"Grow {grow}, Improve {step}: rewards, BLEU, chrF and diversity of the checkpoint.",
    )
    def evaluation(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        store = storage.store(spec)
        rewards = make_rewards(spec, store.reward_model_dir)
        return dg.MaterializeResult(
            metadata=eval_metadata(assess.evaluate_step(spec, store, grow, step, rewards, context.log.info))
        )

    return [slice_, policy, evaluation]


def best_of_n_asset(spec: ExperimentSpec) -> dg.AssetsDefinition:
    final = final_step(spec)

    @dg.asset(
        key=keys.best_of_n_key(spec),
        group_name=keys.group(spec),
        automation_condition=step_condition(spec),
        deps=[
            keys.policy_key(spec, 0, 0),
            keys.policy_key(spec, *final),
            keys.eval_key(spec, *final),
            *keys.reward_deps(spec),
        ],
        code_version=keys.code_version(
            spec, "reward", "grow", "seed", "tokenizer.max_length", "improve.best_of_n", "improve.best_of_n_sources"
        ),
        **placement(spec),
        kinds={"comet"},
        description="Best-of-N reward on valid for the BC policy and the final ReST policy, "
        f"N in {spec.improve.best_of_n}.",
    )
    def best_of_n(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        from rest_pipeline.core.evaluation.best_of_n import best_of_n_curves

        store = storage.store(spec)
        reward = make_reward(spec.reward.model, spec, store.reward_model_dir)
        res = best_of_n_curves(spec, store, reward, context.log.info)
        meta: dict[str, object] = {
            f"{label}_best_of_{n}": v for label, c in res.curves.items() for n, v in c.curve.items()
        }
        meta["rest_small_n_reaches_bc_larger_n"] = res.rest_small_n_reaches_bc_larger_n
        meta["matching"] = md_table([m.model_dump() for m in res.matching])
        meta["path"] = dg.MetadataValue.path(str(store.best_of_n_dir))
        return dg.MaterializeResult(metadata=meta)

    return best_of_n


def control_asset(spec: ExperimentSpec) -> dg.AssetsDefinition:
    final = final_step(spec)

    @dg.asset(
        key=keys.control_key(spec),
        group_name=keys.group(spec),
        # Always in the graph (a click away in the UI); automated and part of `rest main` only when asked.
        automation_condition=step_condition(spec) if spec.improve.control else None,
        deps=[
            keys.policy_key(spec, 0, 0),
            keys.eval_key(spec, 0, 0),
            keys.policy_key(spec, *final),
            keys.eval_key(spec, *final),
            *keys.reward_deps(spec),
        ],
        code_version=keys.code_version(
            spec, *EVAL_INPUTS, "improve.train", "improve.lr_decay", "improve.grow_lr_decay", "improve.min_improvement"
        ),
        **placement(spec),
        retry_policy=dg.RetryPolicy(max_retries=1),
        kinds={"pytorch", "transformers"},
        description="Control: the BC policy fine-tuned for the same Improve steps as the final ReST checkpoint "
        "(same rates, budgets and keep-the-best rule) on the original pairs only. ReST's gain over this "
        "control is owed to its reward-filtered samples, not to training longer.",
    )
    @interrupts_not_retried
    def control(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        from rest_pipeline.core.improve.control import run_control
        from rest_pipeline.core.store.experiment import CONTROL

        store = storage.store(spec)
        res = run_control(spec, store, make_rewards(spec, store.reward_model_dir), context.log.info)
        meta = eval_metadata(store.get(Evaluation, policy=CONTROL))
        for split, row in res.rest_minus_control.items():
            meta[f"rest_minus_control_{split}_reward_{spec.reward.model}"] = row.get(f"reward_{spec.reward.model}")
            meta[f"rest_minus_control_{split}_bleu"] = row.get("bleu")
        meta["steps"] = md_table([s.model_dump() for s in res.steps])
        meta["checkpoint"] = dg.MetadataValue.path(str(store.resolve(res.checkpoint)))
        return dg.MaterializeResult(metadata=meta)

    return control


def report_asset(spec: ExperimentSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=keys.report_key(spec),
        group_name=keys.group(spec),
        automation_condition=step_condition(spec),
        deps=[
            keys.best_of_n_key(spec),
            keys.base_eval_key(spec),
            keys.eval_key(spec, 0, 0),
            *[keys.eval_key(spec, g, i) for g, i in all_steps(spec)],
            *([keys.control_key(spec)] if spec.improve.control else []),
            *([keys.online_rl_key(spec)] if spec.online_rl.enabled else []),
        ],
        code_version=keys.code_version(spec, "reward", "evaluation.splits", "improve.train.validate_pairs"),
        kinds={"markdown"},
        description="Markdown report with PNG plots: the paper's findings checked on this run, reward and BLEU "
        "per checkpoint, reward histograms per grow, Best-of-N curves, and a table shaped like the paper's Table 1.",
    )
    def report(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        store = storage.store(spec)
        path = build_report(spec, store, spec.reward.model, independent_reward(spec))
        built = store.get(Report)  # what the report shows, computed once
        context.log.info(f"report written to {path}")
        png = base64.b64encode((store.report_dir / "reward_per_checkpoint.png").read_bytes()).decode()
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(path)),
                "findings": md_table([f.model_dump() for f in built.findings]),
                "table_1": md_table(built.table1),
                "checkpoints": md_table(built.checkpoints),
                "final_minus_bc_grows_and_control": md_table(built.significance),
                "reward_per_checkpoint": dg.MetadataValue.md(f"![reward](data:image/png;base64,{png})"),
            }
        )

    return report


def all_improve_assets(spec: ExperimentSpec) -> list[dg.AssetsDefinition]:
    """The experiment's own Improve steps and what follows them (a branch reuses its parent's BC evaluation)."""
    assets = [] if spec.branch else [base_rewards_asset(spec)]
    for g, i in own_steps(spec):
        assets += improve_step_assets(spec, g, i)
    return [*assets, best_of_n_asset(spec), control_asset(spec), report_asset(spec)]
