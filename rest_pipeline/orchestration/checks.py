"""Asset checks: guarantees a later stage relies on, verified on every materialization."""

import dagster as dg
import pandas as pd

from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import DecodingSpec, ExperimentSpec


def experiment_checks(spec: ExperimentSpec) -> list[dg.AssetChecksDefinition]:
    name = spec.name

    @dg.asset_check(asset=dg.AssetKey([name, "corpus"]), name="splits_clean", blocking=True)
    def splits_clean(storage: RestStorage) -> dg.AssetCheckResult:
        """Every split is non-empty, ids are unique, and no pair has an empty side."""
        layout = storage.layout(spec)
        problems = []
        for role in ("train", "valid", "test"):
            df = pd.read_parquet(layout.corpus / f"{role}.parquet")
            if df.empty:
                problems.append(f"{role} is empty")
            if df.source_id.duplicated().any():
                problems.append(f"{role} has duplicate source ids")
            if (df.source.str.strip() == "").any() or (df.target.str.strip() == "").any():
                problems.append(f"{role} has empty sentences")
        return dg.AssetCheckResult(passed=not problems, metadata={"problems": "; ".join(problems) or "none"})

    @dg.asset_check(asset=dg.AssetKey([name, "base_policy"]), name="loads_with_transformers", blocking=True)
    def loads_with_transformers(storage: RestStorage) -> dg.AssetCheckResult:
        """The checkpoint loads with plain `from_pretrained` and translates a sentence."""
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer  # noqa: F401 (the point of the check)

        from rest_pipeline.core.policy.generate import translate
        from rest_pipeline.core.policy.tokenizer import load_tokenizer

        layout = storage.layout(spec)
        model = AutoModelForSeq2SeqLM.from_pretrained(str(layout.base_policy))
        tok = load_tokenizer(layout.base_policy)
        source = pd.read_parquet(layout.corpus / "valid.parquet").source.iloc[0]
        out = translate(model, tok, [source], DecodingSpec(name="greedy", max_new_tokens=64))[0]
        return dg.AssetCheckResult(
            passed=bool(out.strip()),
            metadata={"source": source, "translation": out, "class": type(model).__name__},
        )

    return [splits_clean, loads_with_transformers]


def grow_checks(spec: ExperimentSpec, grow: int = 1) -> list[dg.AssetChecksDefinition]:
    from rest_pipeline.core.grow.run import grow_sources, shard_of
    from rest_pipeline.core.rewards.factory import reward_names
    from rest_pipeline.core.store.candidates import CandidateStore

    name = spec.name
    cand_key = dg.AssetKey([name, f"grow_{grow}", "candidates"])
    reward_key = dg.AssetKey([name, f"grow_{grow}", "rewards"])

    def shards_checked(context: dg.AssetCheckExecutionContext) -> list[int]:
        # The shard this run materialized; the others may be stale until their own run re-samples them.
        op = context.op_execution_context
        return [int(op.partition_key)] if op.has_partition_key else list(range(spec.grow.shards))

    @dg.asset_check(asset=cand_key, name="n_candidates_per_source", blocking=True)
    def n_candidates_per_source(context: dg.AssetCheckExecutionContext, storage: RestStorage) -> dg.AssetCheckResult:
        """Every source of the shard has exactly N samples, plus its reference when configured."""
        layout = storage.layout(spec)
        store = CandidateStore(layout.store)
        problems: list[str] = []
        for shard in shards_checked(context):
            if not store.has_candidates(grow, shard):
                continue
            df = store.read_candidates(grow, shard)
            expected = set(shard_of(grow_sources(spec, layout.corpus, grow), spec.grow.shards, shard).source_id)
            if set(df.source_id) != expected:
                problems.append(f"shard {shard}: sources differ from the corpus shard")
            counts = df[df.origin == "sample"].groupby("source_id").size()
            if (counts != spec.grow.samples_per_source).any():
                problems.append(f"shard {shard}: {(counts != spec.grow.samples_per_source).sum()} sources without N")
            refs = df[df.origin == "reference"].source_id.nunique()
            if spec.grow.include_references and refs != len(expected):
                problems.append(f"shard {shard}: {len(expected) - refs} reference candidates missing")
        return dg.AssetCheckResult(passed=not problems, metadata={"problems": "; ".join(problems) or "none"})

    @dg.asset_check(asset=reward_key, name="rewards_valid", blocking=True)
    def rewards_valid(context: dg.AssetCheckExecutionContext, storage: RestStorage) -> dg.AssetCheckResult:
        """No NaN/inf, all within [0, 1], one score per candidate for each reward model."""
        store = CandidateStore(storage.layout(spec).store)
        problems: list[str] = []
        for shard in shards_checked(context):
            if not store.has_candidates(grow, shard):
                continue
            ids = set(store.read_candidates(grow, shard).candidate_id)
            for r in reward_names(spec):
                path = store.scores_file(r, grow, shard)
                if not path.is_file():
                    continue
                s = pd.read_parquet(path)
                if s.score.isna().any() or not s.score.between(0, 1).all():
                    problems.append(f"{r} shard {shard}: scores NaN or outside [0,1]")
                if set(s.candidate_id) != ids:
                    problems.append(f"{r} shard {shard}: scores do not cover the candidates exactly")
        return dg.AssetCheckResult(passed=not problems, metadata={"problems": "; ".join(problems) or "none"})

    return [n_candidates_per_source, rewards_valid]
