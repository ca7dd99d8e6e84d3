"""Improve assets: per (grow g, step i) a slice, a checkpoint and its evaluation; then Best-of-N
and the report. The lineage of every checkpoint is the path through these assets."""

import dataclasses
import json

import dagster as dg
import pandas as pd

from rest_pipeline.core.improve import evaluation as ev
from rest_pipeline.core.improve.filtering import build_slice
from rest_pipeline.core.improve.step import parent_of, run_improve_step, step_name, step_number
from rest_pipeline.core.report import build_report
from rest_pipeline.core.rewards.factory import make_reward, make_rewards, reward_names
from rest_pipeline.orchestration.assets import GPU_POOL
from rest_pipeline.orchestration.automation import step_condition
from rest_pipeline.orchestration.grow_assets import eval_key, policy_key
from rest_pipeline.orchestration.metadata import md_table
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import ExperimentSpec


def improve_version(spec: ExperimentSpec, *fields: str, sections: tuple[str, ...] = ()) -> str:
    """Code version from only the spec fields an asset reads, so a change stales exactly its dependents."""
    import hashlib

    payload = {f: getattr(spec.improve, f) for f in fields}
    text = json.dumps(payload, sort_keys=True, default=lambda o: o.model_dump(mode="json"))
    own = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{spec.section_hash(*sections)[:12]}-{own}" if sections else own


def slice_key(spec: ExperimentSpec, grow: int, step: int) -> dg.AssetKey:
    return dg.AssetKey([spec.name, f"grow_{grow}", f"improve_{step}", "slice"])


def _reward_deps(spec: ExperimentSpec) -> list[dg.AssetKey]:
    return [dg.AssetKey([spec.name, "reward_model"])] if "learned" in reward_names(spec) else []


def independent_reward(spec: ExperimentSpec) -> str | None:
    others = [r for r in reward_names(spec) if r != spec.reward.model]
    return others[0] if others else None


def _eval_metadata(summary: dict) -> dict[str, object]:
    """Numeric metadata per split (the UI plots these over materializations) plus a table."""
    meta: dict[str, object] = {}
    for split, row in summary["splits"].items():
        for k, v in row.items():
            if isinstance(v, int | float):
                meta[f"{split}_{k}"] = v
    if "diversity" in summary:
        meta["distinct_samples_per_source"] = summary["diversity"]["distinct_samples_per_source"]
    meta["scores"] = md_table(
        [{"split": s, **{k: v for k, v in r.items() if k != "hypotheses_path"}} for s, r in summary["splits"].items()]
    )
    if "inherited_from" in summary:
        meta["inherited_from"] = dg.MetadataValue.path(summary["inherited_from"])
    return meta


def base_rewards_asset(spec: ExperimentSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=eval_key(spec, 0, 0),
        group_name=spec.name,
        automation_condition=step_condition(spec),
        deps=[policy_key(spec, 0, 0), *_reward_deps(spec)],
        code_version=improve_version(
            spec, "diversity_samples", "diversity_sources", sections=("reward", "evaluation", "grow")
        )
        + "-eval-v1",
        pool=GPU_POOL,
        kinds={"sacrebleu", "comet"},
        description="The BC policy under the same evaluation as every Improve checkpoint: rewards, BLEU, chrF, "
        "diversity. The baseline of the reward-hacking check and of the report.",
    )
    def base_policy_rewards(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        layout = storage.layout(spec)
        summary = ev.evaluate_step(spec, layout, 0, 0, make_rewards(spec, layout.reward_model), context.log.info)
        return dg.MaterializeResult(metadata=_eval_metadata(summary))

    return base_policy_rewards


def improve_step_assets(spec: ExperimentSpec, grow: int, step: int) -> list[dg.AssetsDefinition]:
    name = spec.name
    parent = parent_of(spec, grow, step)
    parameter = spec.improve.schedule[step - 1]
    imp = spec.improve

    @dg.asset(
        key=slice_key(spec, grow, step),
        group_name=name,
        automation_condition=step_condition(spec),
        deps=[dg.AssetKey([name, f"grow_{grow}", "rewards"])],
        # v2: per-source bars from the samples alone.
        code_version=spec.section_hash("reward") + f"-{imp.filter}-{parameter}-{imp.mix_originals}"
        f"-{imp.first_threshold_above_mean}-{imp.dedupe}-v2",
        kinds={"parquet", "duckdb"},
        description=f"Grow {grow}, Improve {step}: candidates clearing {imp.filter} {parameter} "
        f"under reward '{spec.reward.model}'" + (" plus the original pairs." if imp.mix_originals else "."),
    )
    def slice_(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        from rest_pipeline.core.store.candidates import CandidateStore

        layout = storage.layout(spec)
        store = CandidateStore(layout.store)
        stats = build_slice(
            store,
            grow,
            step,
            spec.reward.model,
            imp.filter,
            parameter,
            mix_originals=imp.mix_originals,
            require_above_mean=imp.first_threshold_above_mean,
            dedupe=imp.dedupe,
        )
        context.log.info(f"slice {step_name(grow, step)}: {stats}")
        meta = {k: v for k, v in dataclasses.asdict(stats).items() if v is not None and k != "path"}
        meta["skip_reason"] = stats.skip_reason or "none"
        meta["coverage"] = round(stats.sources_covered / max(stats.sources, 1), 4)
        meta["path"] = dg.MetadataValue.path(stats.path)
        rows = pd.read_parquet(stats.path)
        if len(rows):
            best = rows.sort_values("reward", ascending=False).head(4)
            worst = rows[rows.kept_by == "filter"].sort_values("reward").head(4)
            meta["best_and_worst_kept"] = md_table(
                pd.concat([best, worst])[["source", "hypothesis", "origin", "reward"]].to_dict("records")
            )
        return dg.MaterializeResult(metadata=meta)

    @dg.asset(
        key=policy_key(spec, grow, step),
        group_name=name,
        automation_condition=step_condition(spec),
        deps=[slice_key(spec, grow, step), policy_key(spec, *parent), eval_key(spec, *parent), *_reward_deps(spec)],
        code_version=improve_version(
            spec, "loss", "train", "lr_decay", "grow_lr_decay", "min_improvement", "steps", sections=("reward",)
        )
        + f"-step{step_number(imp, grow, step)}-seed{spec.seed}",
        pool=GPU_POOL,
        retry_policy=dg.RetryPolicy(max_retries=1),
        kinds={"pytorch", "transformers"},
        description=f"Grow {grow}, Improve {step}: the parent checkpoint fine-tuned ({imp.loss}) on the slice; "
        "keeps the best validation reward, or hands the parent on if it did not improve.",
    )
    def policy(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        layout = storage.layout(spec)
        reward = make_reward(spec.reward.model, spec, layout.reward_model)
        rec = run_improve_step(spec, layout, grow, step, reward, log=context.log.info)
        history = [{k: v for k, v in r.items() if k not in {"validate_seconds", "best"}} for r in rec.history]
        lineage = {
            k: v for k, v in dataclasses.asdict(rec).items() if k not in {"history", "hyperparameters", "experiment"}
        }
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
                "hyperparameters": dg.MetadataValue.json(rec.hyperparameters),
                "validation_history": md_table(history),
                "path": dg.MetadataValue.path(rec.checkpoint),
            },
            data_version=dg.DataVersion(rec.checkpoint_hash),
        )

    @dg.asset(
        key=eval_key(spec, grow, step),
        group_name=name,
        automation_condition=step_condition(spec),
        deps=[policy_key(spec, grow, step), eval_key(spec, *parent), *_reward_deps(spec)],
        code_version=improve_version(
            spec, "diversity_samples", "diversity_sources", sections=("reward", "evaluation", "grow")
        )
        + "-eval-v1",
        pool=GPU_POOL,
        kinds={"sacrebleu", "comet"},
        description=f"Grow {grow}, Improve {step}: rewards, BLEU, chrF and diversity of the checkpoint.",
    )
    def evaluation(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        layout = storage.layout(spec)
        summary = ev.evaluate_step(spec, layout, grow, step, make_rewards(spec, layout.reward_model), context.log.info)
        return dg.MaterializeResult(metadata=_eval_metadata(summary))

    return [slice_, policy, evaluation]


def best_of_n_asset(spec: ExperimentSpec) -> dg.AssetsDefinition:
    final = ev.final_step(spec)

    @dg.asset(
        key=[spec.name, "best_of_n"],
        group_name=spec.name,
        automation_condition=step_condition(spec),
        deps=[policy_key(spec, 0, 0), policy_key(spec, *final), eval_key(spec, *final), *_reward_deps(spec)],
        code_version=improve_version(spec, "best_of_n", "best_of_n_sources", sections=("reward", "grow")) + "-bon-v1",
        pool=GPU_POOL,
        kinds={"comet"},
        description="Best-of-N reward on valid for the BC policy and the final ReST policy, "
        f"N in {spec.improve.best_of_n}.",
    )
    def best_of_n(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        layout = storage.layout(spec)
        reward = make_reward(spec.reward.model, spec, layout.reward_model)
        res = ev.best_of_n_curves(spec, layout, reward, context.log.info)
        meta: dict[str, object] = {
            f"{label}_best_of_{n}": v for label in ("bc", "rest") for n, v in res[label]["curve"].items()
        }
        meta["rest_small_n_reaches_bc_larger_n"] = res["rest_small_n_reaches_bc_larger_n"]
        meta["matching"] = md_table(res["matching"])
        meta["path"] = dg.MetadataValue.path(str(layout.best_of_n))
        return dg.MaterializeResult(metadata=meta)

    return best_of_n


def control_key(spec: ExperimentSpec) -> dg.AssetKey:
    return dg.AssetKey([spec.name, "control"])


def control_asset(spec: ExperimentSpec) -> dg.AssetsDefinition:
    final = ev.final_step(spec)

    @dg.asset(
        key=control_key(spec),
        group_name=spec.name,
        # Always in the graph (a click away in the UI); automated and part of `rest main` only when asked.
        automation_condition=step_condition(spec) if spec.improve.control else None,
        deps=[policy_key(spec, 0, 0), eval_key(spec, 0, 0), policy_key(spec, *final), eval_key(spec, *final)]
        + _reward_deps(spec),
        code_version=improve_version(spec, "train", "lr_decay", "grow_lr_decay", "min_improvement")
        + f"-control-v1-seed{spec.seed}",
        pool=GPU_POOL,
        retry_policy=dg.RetryPolicy(max_retries=1),
        kinds={"pytorch", "transformers"},
        description="Control: the BC policy fine-tuned for the same Improve steps as the final ReST checkpoint "
        "(same rates, budgets and keep-the-best rule) on the original pairs only. ReST's gain over this "
        "control is owed to its reward-filtered samples, not to training longer.",
    )
    def control(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        from rest_pipeline.core.improve.control import run_control

        layout = storage.layout(spec)
        res = run_control(spec, layout, make_rewards(spec, layout.reward_model), context.log.info)
        meta: dict[str, object] = {
            f"{split}_{k}": v for split, row in res["splits"].items() for k, v in row.items() if isinstance(v, float)
        }
        for split, row in res["rest_minus_control"].items():
            meta[f"rest_minus_control_{split}_reward_{spec.reward.model}"] = row.get(f"reward_{spec.reward.model}")
            meta[f"rest_minus_control_{split}_bleu"] = row.get("bleu")
        meta["steps"] = md_table(res["steps"])
        meta["checkpoint"] = dg.MetadataValue.path(res["checkpoint"])
        return dg.MaterializeResult(metadata=meta)

    return control


def report_asset(spec: ExperimentSpec) -> dg.AssetsDefinition:
    steps = [(g, i) for g in range(1, spec.improve.grows + 1) for i in range(1, spec.improve.steps + 1)]

    @dg.asset(
        key=[spec.name, "report"],
        group_name=spec.name,
        automation_condition=step_condition(spec),
        deps=[
            dg.AssetKey([spec.name, "best_of_n"]),
            dg.AssetKey([spec.name, "base_policy_eval"]),
            eval_key(spec, 0, 0),
            *[eval_key(spec, g, i) for g, i in steps],
            *([control_key(spec)] if spec.improve.control else []),
        ],
        code_version="report-v3",
        kinds={"markdown"},
        description="Markdown report with PNG plots: the paper's findings checked on this run, reward and BLEU "
        "per checkpoint, reward histograms per grow, Best-of-N curves, and a table shaped like the paper's Table 1.",
    )
    def report(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        import base64

        layout = storage.layout(spec)
        path = build_report(spec, layout, spec.reward.model, independent_reward(spec))
        built = json.loads((layout.report / "report.json").read_text())  # what the report shows, computed once
        context.log.info(f"report written to {path}")
        png = base64.b64encode((layout.report / "reward_per_checkpoint.png").read_bytes()).decode()
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(path)),
                "findings": md_table(built["findings"]),
                "table_1": md_table(built["table1"]),
                "checkpoints": md_table(built["checkpoints"]),
                "final_minus_bc_grows_and_control": md_table(built["significance"]),
                "reward_per_checkpoint": dg.MetadataValue.md(f"![reward](data:image/png;base64,{png})"),
                "report_json": dg.MetadataValue.path(str(layout.report / "report.json")),
            }
        )

    return report


def all_improve_assets(spec: ExperimentSpec) -> list[dg.AssetsDefinition]:
    assets = [base_rewards_asset(spec)]
    for g in range(1, spec.improve.grows + 1):
        for i in range(1, spec.improve.steps + 1):
            assets += improve_step_assets(spec, g, i)
    return [*assets, best_of_n_asset(spec), control_asset(spec), report_asset(spec)]


def improve_checks(spec: ExperimentSpec) -> list[dg.AssetChecksDefinition]:
    checks = []
    train, ind = spec.reward.model, independent_reward(spec)
    for g in range(1, spec.improve.grows + 1):
        for i in range(1, spec.improve.steps + 1):
            checks += _step_checks(spec, g, i, train, ind)
    return checks


def _step_checks(spec: ExperimentSpec, grow: int, step: int, train: str, ind: str | None) -> list:
    parent = parent_of(spec, grow, step)

    @dg.asset_check(asset=eval_key(spec, grow, step), name="no_reward_hacking", blocking=True)
    def no_reward_hacking(storage: RestStorage) -> dg.AssetCheckResult:
        """Training reward up while BLEU and the independent reward fall beyond the spec's margins stops the loop."""
        layout = storage.layout(spec)
        v = ev.hacking_verdict(spec, ev.read_summary(layout, grow, step), ev.read_summary(layout, *parent), train, ind)
        return dg.AssetCheckResult(
            passed=v.passed,
            metadata={
                "verdict": v.explanation,
                "train_reward_delta": v.train_reward_delta,
                "bleu_delta": v.bleu_delta,
                "independent_delta": v.independent_delta,
            },
        )

    @dg.asset_check(asset=policy_key(spec, grow, step), name="lineage_complete", blocking=True)
    def lineage_complete(storage: RestStorage) -> dg.AssetCheckResult:
        """The step record names its parent, slice, reward version and data, and the checkpoint exists."""
        from pathlib import Path

        from rest_pipeline.core.improve.step import read_step

        rec = read_step(storage.layout(spec), grow, step)
        missing = [
            k
            for k in (
                "parent_checkpoint",
                "slice_path",
                "slice_hash",
                "reward_version",
                "corpus_hash",
                "grow_policy",
                "grow_decoding",
            )
            if not getattr(rec, k)
        ]
        if rec.parent != step_name(*parent):
            missing.append(f"parent is {rec.parent}, expected {step_name(*parent)}")
        if not (Path(rec.checkpoint) / "model.safetensors").is_file():
            missing.append(f"checkpoint {rec.checkpoint} missing")
        return dg.AssetCheckResult(
            passed=not missing,
            metadata={"problems": "; ".join(missing) or "none", "record": json.dumps(dataclasses.asdict(rec))[:2000]},
        )

    @dg.asset_check(asset=slice_key(spec, grow, step), name="slice_usable", blocking=False)
    def slice_usable(storage: RestStorage) -> dg.AssetCheckResult:
        """Warns when the slice is empty or skipped (the step then hands its parent on)."""
        from rest_pipeline.core.improve.filtering import read_slice
        from rest_pipeline.core.store.candidates import CandidateStore

        stats, _ = read_slice(CandidateStore(storage.layout(spec).store), grow, step)
        return dg.AssetCheckResult(
            passed=stats.skip_reason is None,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"skip_reason": stats.skip_reason or "none", "kept": stats.kept},
        )

    return [no_reward_hacking, lineage_complete, slice_usable]
