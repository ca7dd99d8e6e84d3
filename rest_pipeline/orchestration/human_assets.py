"""Human ratings in the graph: `human_eval` turns what people rated on `rest rate`'s page into the
paper's "human evaluation difference vs BC" and the reward model's agreement with people. It is
materialized by hand (or by the sensor beside it when new ratings arrive), never by `rest main`."""

import dagster as dg

from rest_pipeline.core.human.analysis import HumanEvalError, human_eval_markdown, run_human_eval
from rest_pipeline.core.human.ratings import all_ratings
from rest_pipeline.orchestration import keys
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import ExperimentSpec


def human_eval_asset(spec: ExperimentSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=keys.human_eval_key(spec),
        group_name=keys.group(spec),
        kinds={"duckdb", "parquet"},
        description=(
            "People's 0-6 ratings (rest rate) per checkpoint against BC with bootstrap intervals, how often "
            "the reward model ranks systems as people do, and how raters agree. Materialize after rating."
        ),
    )
    def human_eval(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        store = storage.store(spec)
        try:
            record = run_human_eval(store)
        except HumanEvalError as e:
            raise dg.Failure(str(e)) from None
        meta: dict[str, object] = {
            "ratings": record.ratings,
            "raters": len(record.raters),
            "kendall_tau_human_vs_reward": record.kendall_tau_human_vs_reward,
            "reward_prefers_lower_rated": record.reward_prefers_lower_rated,
            "inter_rater_kendall_tau": record.inter_rater_kendall_tau,
            "summary": dg.MetadataValue.md(human_eval_markdown(record.model_copy(update={"plot": None}))),
            "plot": dg.MetadataValue.path(str(store.human_dir / (record.plot or ""))),
        }
        for d in record.deltas:
            name = d.system.replace("/", "_")
            meta[f"human_delta_{name}"] = d.human_delta
            meta[f"reward_delta_{name}"] = d.reward_delta
        return dg.MaterializeResult(metadata={k: v for k, v in meta.items() if v is not None})

    return human_eval


def new_ratings_sensor(spec: ExperimentSpec) -> dg.SensorDefinition:
    """Re-materialize `human_eval` when the number of stored ratings changes (off until switched on)."""

    @dg.sensor(
        name=f"{spec.name}_new_ratings",
        asset_selection=dg.AssetSelection.assets(keys.human_eval_key(spec)),
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
    )
    def new_ratings(context: dg.SensorEvaluationContext, storage: RestStorage):
        count = len(all_ratings(storage.store(spec)))
        if count and str(count) != (context.cursor or ""):
            context.update_cursor(str(count))
            yield dg.RunRequest(run_key=f"ratings-{count}")

    return new_ratings
