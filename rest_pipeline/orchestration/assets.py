"""Asset factory: one set of assets per experiment spec, keyed `<experiment>/<asset>`.

The bodies only call the functional core (`rest_pipeline.core.base_policy`) and turn its
results into metadata; artifacts live on disk in the experiment's folder, never pickled
through an IO manager.
"""

import json

import dagster as dg
import pandas as pd

from rest_pipeline.core import base_policy as core
from rest_pipeline.core.corpus.fetch import sha256_of
from rest_pipeline.core.policy.model import count_parameters, load_policy
from rest_pipeline.orchestration.metadata import dir_size, md_table
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import ExperimentSpec

GPU_POOL = "gpu"


def experiment_assets(spec: ExperimentSpec) -> list[dg.AssetsDefinition]:
    name = spec.name
    group = name

    @dg.asset(
        key=[name, "corpus"],
        group_name=group,
        code_version=spec.section_hash("data"),
        kinds={"parquet"},
        description=f"Validated {spec.data.dataset} splits (train/valid/test) as Parquet with stable source ids.",
    )
    def corpus(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        layout = storage.layout(spec)
        infos = core.build_corpus(spec, layout, storage.mirror())
        rows = [
            {
                "role": i.role,
                "split": i.name,
                "pairs": i.rows,
                "skipped": json.dumps(i.skipped) if i.skipped else "-",
                "source file": i.source_file,
            }
            for i in infos.values()
        ]
        for i in infos.values():
            context.log.info(f"{i.role} ({i.name}): {i.rows} pairs, skipped {i.skipped or 'none'}")
        preview = pd.read_parquet(infos["train"].path).head(5)
        meta: dict[str, object] = {f"{r}_pairs": i.rows for r, i in infos.items()}
        meta.update(
            {
                "skipped_pairs": sum(sum(i.skipped.values()) for i in infos.values()),
                "splits": md_table(rows),
                "preview": md_table(preview.to_dict("records")),
                "path": dg.MetadataValue.path(str(layout.corpus)),
            }
        )
        return dg.MaterializeResult(
            metadata=meta,
            data_version=dg.DataVersion(sha256_of(infos["train"].path)[:16]),
        )

    @dg.asset(
        key=[name, "tokenizer"],
        group_name=group,
        deps=[corpus.key],
        code_version=spec.section_hash("tokenizer", "policy"),
        kinds={"sentencepiece"},
        description="Joint SentencePiece vocabulary packaged as a Hugging Face MarianTokenizer folder.",
    )
    def tokenizer(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        layout = storage.layout(spec)
        path = core.build_tokenizer(spec, layout)
        from rest_pipeline.core.policy.tokenizer import load_tokenizer

        tok = load_tokenizer(path)
        sample = pd.read_parquet(layout.corpus / "train.parquet").source.iloc[0]
        pieces = tok.convert_ids_to_tokens(tok(sample)["input_ids"])
        context.log.info(f"tokenizer: {len(tok)} pieces at {path}")
        return dg.MaterializeResult(
            metadata={
                "vocab_size": len(tok),
                "sample": dg.MetadataValue.md(f"`{sample}`\n\n`{' '.join(pieces)}`"),
                "path": dg.MetadataValue.path(str(path)),
            }
        )

    @dg.asset(
        key=[name, "base_policy"],
        group_name=group,
        deps=[tokenizer.key, corpus.key],
        code_version=spec.section_hash("policy", "bc") + f"-seed{spec.seed}",
        pool=GPU_POOL,
        kinds={"pytorch", "transformers"},
        retry_policy=dg.RetryPolicy(max_retries=1),
        description=(
            "The BC (supervised) policy that ReST starts from: a Hugging Face seq2seq checkpoint "
            "(safetensors). Training resumes from its last save point if the run was killed."
        ),
    )
    def base_policy(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        layout = storage.layout(spec)
        result = core.train_base_policy(spec, layout, log=context.log.info)
        model = load_policy(layout.base_policy)
        history = [{k: v for k, v in r.items() if k != "validate_seconds"} for r in result.history]
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(layout.base_policy)),
                "parameters": count_parameters(model),
                "size_bytes": dir_size(layout.base_policy),
                "steps": result.steps,
                "epochs": result.epochs,
                "train_seconds": result.train_seconds,
                f"best_valid_{result.keep_best_by}_greedy": round(result.best_metric, 3),
                "averaged_checkpoint": result.averaged,
                "stopped_because": result.stopped_because,
                "validation_history": md_table(history),
            }
        )

    @dg.asset(
        key=[name, "base_policy_eval"],
        group_name=group,
        deps=[base_policy.key, corpus.key],
        code_version=spec.section_hash("evaluation"),
        pool=GPU_POOL,
        kinds={"sacrebleu"},
        description="BLEU and chrF (sacrebleu) of the base policy on valid/test, greedy and beam; hypotheses stored.",
    )
    def base_policy_eval(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        layout = storage.layout(spec)
        rows = core.evaluate_base_policy(spec, layout, log=context.log.info)
        meta: dict[str, object] = {}
        for r in rows:
            meta[f"{r.split}_{r.decoding}_bleu"] = r.bleu
            meta[f"{r.split}_{r.decoding}_chrf"] = r.chrf
        meta["scores"] = md_table([{k: v for k, v in r.__dict__.items() if k not in {"hypotheses_path"}} for r in rows])
        last = rows[-1]
        examples = pd.read_parquet(last.hypotheses_path).head(spec.evaluation.examples)
        meta[f"examples_{last.split}_{last.decoding}"] = md_table(
            examples[["source", "reference", "hypothesis"]].to_dict("records")
        )
        meta["path"] = dg.MetadataValue.path(str(layout.base_eval))
        return dg.MaterializeResult(metadata=meta)

    return [corpus, tokenizer, base_policy, base_policy_eval]
