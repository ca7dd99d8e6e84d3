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
