"""The supervised assets of an experiment, keyed `<experiment>/<asset>`: corpus, tokenizer, the BC
policy and its evaluation.

The bodies only call the functional core (`rest_pipeline.core.base_stage`) and turn its
results into metadata; artifacts live in the experiment's store, never pickled through an IO
manager.
"""

import json

import dagster as dg
import pandas as pd

from rest_pipeline.core import base_stage as core
from rest_pipeline.core.corpus.fetch import sha256_of
from rest_pipeline.core.policy.model import count_parameters, load_policy
from rest_pipeline.orchestration import keys
from rest_pipeline.orchestration.instance import interrupts_not_retried
from rest_pipeline.orchestration.metadata import dir_size, md_table
from rest_pipeline.orchestration.placement import placement
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import ExperimentSpec


def experiment_assets(spec: ExperimentSpec) -> list[dg.AssetsDefinition]:
    group = keys.group(spec)

    @dg.asset(
        key=keys.corpus_key(spec),
        group_name=group,
        code_version=keys.code_version(spec, "data"),
        kinds={"parquet"},
        description=f"Validated {spec.data.corpus_name} splits (train/valid/test) as Parquet with stable source ids.",
    )
    def corpus(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        store = storage.store(spec)
        record = core.build_corpus(spec, store, storage.mirror(), log=context.log.warning)
        splits = record.splits.values()
        rows = [
            {
                "role": i.role,
                "split": i.name,
                "pairs": i.rows,
                "skipped": json.dumps(i.skipped) if i.skipped else "-",
                "source file": i.source_file,
            }
            for i in splits
        ]
        for i in splits:
            context.log.info(f"{i.role} ({i.name}): {i.rows} pairs, skipped {i.skipped or 'none'}")
        preview = store.split("train").head(5)
        meta: dict[str, object] = {f"{i.role}_pairs": i.rows for i in splits}
        meta.update(
            {
                "skipped_pairs": sum(sum(i.skipped.values()) for i in splits),
                "splits": md_table(rows),
                "preview": md_table(preview.to_dict("records")),
                "path": dg.MetadataValue.path(str(store.corpus_dir)),
            }
        )
        return dg.MaterializeResult(
            metadata=meta,
            data_version=dg.DataVersion(sha256_of(store.split_file("train"))[:16]),
        )

    @dg.asset(
        key=keys.tokenizer_key(spec),
        group_name=group,
        deps=[corpus.key],
        code_version=keys.code_version(spec, "tokenizer", "policy"),
        kinds={"sentencepiece"},
        description="Joint SentencePiece vocabulary packaged as a Hugging Face MarianTokenizer folder.",
    )
    def tokenizer(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        from rest_pipeline.core.policy.tokenizer import load_tokenizer

        store = storage.store(spec)
        path = core.build_tokenizer(spec, store)
        tok = load_tokenizer(path)
        sample = store.split("train").source.iloc[0]
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
        key=keys.policy_key(spec, 0, 0),
        group_name=group,
        deps=[tokenizer.key, corpus.key],
        code_version=keys.code_version(spec, "policy", "bc", "seed"),
        **placement(spec),
        kinds={"pytorch", "transformers"},
        retry_policy=dg.RetryPolicy(max_retries=1),
        description=(
            "The BC (supervised) policy that ReST starts from: a Hugging Face seq2seq checkpoint "
            "(safetensors). Training resumes from its last save point if the run was killed."
        ),
    )
    @interrupts_not_retried
    def base_policy(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        store = storage.store(spec)
        result = core.train_base_policy(spec, store, log=context.log.info)
        model = load_policy(store.base_policy_dir)
        history = [{k: v for k, v in r.items() if k != "validate_seconds"} for r in result.history]
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(store.base_policy_dir)),
                "parameters": count_parameters(model),
                "size_bytes": dir_size(store.base_policy_dir),
                "steps": result.steps,
                "epochs": result.epochs,
                "train_seconds": result.train_seconds,
                f"best_valid_{result.keep_best_by}_greedy": round(result.best_metric, 3),
                "averaged_checkpoint": result.averaged,
                "stopped_because": result.stopped_because,
                "clock_cut": result.clock_cut,  # True: stopped by the opt-in time budget, not reproducible
                "precision": result.precision,
                "bc_key": store.bc_policy_link().key,  # the shared training under <home>/bc_policies/
                "validation_history": md_table(history),
            }
        )

    @dg.asset(
        key=keys.base_eval_key(spec),
        group_name=group,
        deps=[base_policy.key, corpus.key],
        code_version=keys.code_version(spec, "evaluation"),
        **placement(spec),
        kinds={"sacrebleu"},
        description="BLEU and chrF (sacrebleu) of the base policy on valid/test, greedy and beam; hypotheses stored.",
    )
    def base_policy_eval(context: dg.AssetExecutionContext, storage: RestStorage) -> dg.MaterializeResult:
        store = storage.store(spec)
        rows = core.evaluate_base_policy(spec, store, log=context.log.info).rows
        meta: dict[str, object] = {}
        for r in rows:
            meta[f"{r.split}_{r.decoding.name}_bleu"] = r.bleu
            meta[f"{r.split}_{r.decoding.name}_chrf"] = r.chrf
        meta["scores"] = md_table(
            [
                {
                    "split": r.split,
                    "decoding": r.decoding.name,
                    "num_beams": r.decoding.num_beams,
                    "bleu": r.bleu,
                    "chrf": r.chrf,
                    "sentences": r.sentences,
                    "seconds": r.seconds,
                    "bleu_signature": r.bleu_signature,
                }
                for r in rows
            ]
        )
        last = rows[-1]
        examples = pd.read_parquet(store.resolve(last.hypotheses)).head(spec.evaluation.examples)
        meta[f"examples_{last.split}_{last.decoding.name}"] = md_table(
            examples[["source", "reference", "hypothesis"]].to_dict("records")
        )
        meta["path"] = dg.MetadataValue.path(str(store.decoding_eval_dir))
        return dg.MaterializeResult(metadata=meta)

    return [corpus, tokenizer, base_policy, base_policy_eval]
