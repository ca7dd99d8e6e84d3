"""The branch point: the first asset of a branch, downstream of every parent asset the branch reuses.
It pins what the branch reads from its parent (content hashes), so the asset graph and `rest lineage`
show where the branch left its parent, and a later change of the parent is refused, not trained on."""

import dagster as dg

from rest_pipeline.core.improve.chain import all_steps
from rest_pipeline.core.store.queries import grow_sizes
from rest_pipeline.orchestration import keys
from rest_pipeline.orchestration.metadata import md_table
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import ExperimentSpec


def branch_point_asset(spec: ExperimentSpec) -> dg.AssetsDefinition:
    b = spec.branch
    assert b is not None
    reused = [
        keys.corpus_key(spec),
        keys.tokenizer_key(spec),
        keys.policy_key(spec, 0, 0),
        keys.eval_key(spec, 0, 0),
        *keys.reward_deps(spec),
        *[k for g in range(1, b.grow + 1) for k in (keys.candidates_key(spec, g), keys.rewards_key(spec, g))],
        *[keys.policy_key(spec, g, i) for g, i in all_steps(spec) if g < b.grow],
    ]

    @dg.asset(
        key=keys.branch_point_key(spec),
        group_name=keys.group(spec),
        deps=reused,
        code_version=keys.code_version(spec, "branch"),
        kinds={"parquet"},
        description=f"Branch of '{b.parent}' at {b.at}: reuses its corpus, tokenizer, BC policy, reward model and "
        f"the candidates and scores of grows 1-{b.grow} in place (pinned by content hash, never written).",
    )
    def branch_point(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        store = storage.store(spec)
        pin = store.pin_parent()
        counts = grow_sizes(store, up_to_grow=b.grow)[["grow", "candidates"]]
        context.log.info(f"branch {spec.name}: {len(pin.hashes)} files of {pin.parent} pinned at {b.at}")
        return dg.MaterializeResult(
            metadata={
                "parent": pin.parent,
                "at": b.at,
                "pinned_files": len(pin.hashes),
                "reused_candidates": md_table(counts.to_dict("records")),
                "pins": md_table([{"file": k, "sha256": v} for k, v in sorted(pin.hashes.items())][:40]),
            },
            data_version=dg.DataVersion(keys.code_version(spec, extra=sorted(pin.hashes.items()))),
        )

    return branch_point
