"""Dagster's view of a checkpoint's chain: walk the asset graph's policy assets upstream and
read each one's latest materialization (data version = weights hash, parent, path)."""

import dagster as dg

from rest_pipeline.core.improve.chain import parent_of
from rest_pipeline.orchestration.keys import policy_key
from rest_pipeline.spec import ExperimentSpec


def dagster_chain(instance: dg.DagsterInstance, spec: ExperimentSpec, grow: int, step: int) -> list[dict]:
    rows = []
    while grow > 0:
        key = policy_key(spec, grow, step)
        event = instance.get_latest_materialization_event(key)
        if event is None:
            raise LookupError(f"{key.to_user_string()} has never been materialized in this instance")
        mat = event.asset_materialization
        meta = mat.metadata
        rows.append(
            {
                "asset": key.to_user_string(),
                "grow": grow,
                "step": step,
                "parent": meta["parent"].value,
                "status": meta["status"].value,
                "path": meta["path"].value,
                "data_version": mat.tags.get("dagster/data_version"),
                "run_id": event.run_id,
            }
        )
        grow, step = parent_of(spec, grow, step)
    return rows
