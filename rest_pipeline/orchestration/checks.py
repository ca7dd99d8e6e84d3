"""Asset checks: guarantees a later stage relies on, verified on every materialization. Blocking
checks stop automation at the asset that failed them."""

import json

import dagster as dg

from rest_pipeline.core.corpus.splits import ROLES
from rest_pipeline.core.grow.run import grow_sources, shard_of
from rest_pipeline.core.improve.assess import hacking_verdict
from rest_pipeline.core.improve.chain import own_steps, parent_of
from rest_pipeline.core.policy.model import LINEAGE_FILE, adapter_parent, is_checkpoint
from rest_pipeline.core.rewards.factory import independent_reward, reward_names
from rest_pipeline.core.store.experiment import policy_name
from rest_pipeline.core.store.location import read_table
from rest_pipeline.core.store.records import Evaluation, SliceRecord, StepRecord
from rest_pipeline.orchestration import keys
from rest_pipeline.orchestration.metadata import md_table
from rest_pipeline.orchestration.resources import RestStorage
from rest_pipeline.spec import DecodingSpec, ExperimentSpec


def experiment_checks(spec: ExperimentSpec) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset=keys.corpus_key(spec), name="splits_clean", blocking=True)
    def splits_clean(storage: RestStorage) -> dg.AssetCheckResult:
        """Every split is non-empty, ids are unique, and no pair has an empty side."""
        store = storage.store(spec)
        problems = []
        for role in ROLES:
            df = store.split(role)
            if df.empty:
                problems.append(f"{role} is empty")
            if df.source_id.duplicated().any():
                problems.append(f"{role} has duplicate source ids")
            if (df.source.str.strip() == "").any() or (df.target.str.strip() == "").any():
                problems.append(f"{role} has empty sentences")
        return dg.AssetCheckResult(passed=not problems, metadata={"problems": "; ".join(problems) or "none"})

    @dg.asset_check(asset=keys.policy_key(spec, 0, 0), name="loads_with_transformers", blocking=True)
    def loads_with_transformers(storage: RestStorage) -> dg.AssetCheckResult:
        """The checkpoint loads with plain `from_pretrained` (seq2seq or causal LM) and translates a sentence."""
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        from rest_pipeline.core.policy.generate import translate
        from rest_pipeline.core.policy.tokenizer import load_tokenizer

        store = storage.store(spec)
        auto = AutoModelForCausalLM if spec.policy.kind == "causal_lm" else AutoModelForSeq2SeqLM
        model = auto.from_pretrained(str(store.base_policy_dir))
        tok = load_tokenizer(store.base_policy_dir)
        source = store.split("valid").source.iloc[0]
        out = translate(model, tok, [source], DecodingSpec(name="greedy", max_new_tokens=64))[0]
        return dg.AssetCheckResult(
            passed=bool(out.strip()),
            metadata={"source": source, "translation": out, "class": type(model).__name__},
        )

    probe = spec.reward.probe

    @dg.asset_check(asset=keys.eval_key(spec, 0, 0), name="rewards_not_fooled", blocking=probe.block)
    def rewards_not_fooled(storage: RestStorage) -> dg.AssetCheckResult:
        """Each reward ranks BC's valid outputs above their damaged variants (repeated, truncated, the source
        copied, ... core/rewards/probes.py) on all but `reward.probe.max_prefer_or_tie` of sentences; chrF and
        sentence BLEU beside it. Warns, or blocks what follows when `reward.probe.block`."""
        from rest_pipeline.core.evaluation.reward_probes import probe_rewards, probe_table
        from rest_pipeline.core.rewards.factory import make_rewards

        store = storage.store(spec)
        records = probe_rewards(spec, store, make_rewards(spec, store.reward_model_dir))
        failing = [f"{r.reward}: {', '.join(r.failing)}" for r in records if r.failing]
        meta = {
            f"{r.reward} (version {r.reward_version})": md_table(probe_table(r).to_dict("records")) for r in records
        }
        meta["failing"] = "; ".join(failing) or "none"
        severity = dg.AssetCheckSeverity.ERROR if probe.block else dg.AssetCheckSeverity.WARN
        return dg.AssetCheckResult(passed=not failing, severity=severity, metadata=meta)

    checks = [splits_clean, loads_with_transformers, rewards_not_fooled]
    if "learned" not in reward_names(spec):
        return checks

    @dg.asset_check(
        asset=keys.reward_model_key(spec),
        name="not_fooled",
        blocking=probe.block,
        additional_deps=[keys.eval_key(spec, 0, 0)],  # the probes damage BC's valid outputs
    )
    def not_fooled(storage: RestStorage) -> dg.AssetCheckResult:
        """The learned reward's verdict per damage family, on its own page (the same probes as the check
        `rewards_not_fooled` on the BC policy's rewards, computed once)."""
        from rest_pipeline.core.evaluation.reward_probes import probe_rewards, probe_table
        from rest_pipeline.core.rewards.factory import make_reward

        store = storage.store(spec)
        if not store.exists(Evaluation, policy="base"):  # e.g. `rest main --until grow_1/rewards`
            return dg.AssetCheckResult(
                passed=True,
                description="not probed yet: BC's rewards (base_policy_rewards) are not materialized",
                metadata={"verdict": "not probed yet", "failing": "not probed yet"},
            )
        (record,) = probe_rewards(spec, store, [make_reward("learned", spec, store.reward_model_dir)])
        severity = dg.AssetCheckSeverity.ERROR if probe.block else dg.AssetCheckSeverity.WARN
        return dg.AssetCheckResult(
            passed=not record.failing,
            severity=severity,
            metadata={"verdict": md_table(probe_table(record).to_dict("records")),
                      "failing": ", ".join(record.failing) or "none", "probed": record.hypotheses},
        )  # fmt: skip

    return [*checks, not_fooled]


def grow_checks(spec: ExperimentSpec, grow: int = 1) -> list[dg.AssetChecksDefinition]:
    def shards_checked(context: dg.AssetCheckExecutionContext) -> list[int]:
        # The shard this run materialized; the others may be stale until their own run re-samples them.
        op = context.op_execution_context
        return [int(op.partition_key)] if op.has_partition_key else list(range(spec.grow.shards))

    @dg.asset_check(asset=keys.candidates_key(spec, grow), name="n_candidates_per_source", blocking=True)
    def n_candidates_per_source(context: dg.AssetCheckExecutionContext, storage: RestStorage) -> dg.AssetCheckResult:
        """Every source of the shard has exactly N samples, plus its reference when configured."""
        store = storage.store(spec)
        problems: list[str] = []
        for shard in shards_checked(context):
            if not store.has_candidates(grow, shard):
                continue
            df = store.read_candidates(grow, shard)
            expected = set(shard_of(grow_sources(spec, store, grow), spec.grow.shards, shard).source_id)
            if set(df.source_id) != expected:
                problems.append(f"shard {shard}: sources differ from the corpus shard")
            counts = df[df.origin == "sample"].groupby("source_id").size()
            if (counts != spec.grow.sampling.n).any():
                problems.append(f"shard {shard}: {(counts != spec.grow.sampling.n).sum()} sources without N")
            refs = df[df.origin == "reference"].source_id.nunique()
            if spec.grow.include_references and refs != len(expected):
                problems.append(f"shard {shard}: {len(expected) - refs} reference candidates missing")
        return dg.AssetCheckResult(passed=not problems, metadata={"problems": "; ".join(problems) or "none"})

    @dg.asset_check(asset=keys.rewards_key(spec, grow), name="rewards_valid", blocking=True)
    def rewards_valid(context: dg.AssetCheckExecutionContext, storage: RestStorage) -> dg.AssetCheckResult:
        """No NaN/inf, all within [0, 1], one score per candidate for each reward model."""
        store = storage.store(spec)
        problems: list[str] = []
        for shard in shards_checked(context):
            if not store.has_candidates(grow, shard):
                continue
            ids = set(store.read_candidates(grow, shard).candidate_id)
            for r in reward_names(spec):
                path = store.scores_file(r, grow, shard)
                if not path.is_file():
                    continue
                s = read_table(path)
                if s.score.isna().any() or not s.score.between(0, 1).all():
                    problems.append(f"{r} shard {shard}: scores NaN or outside [0,1]")
                if set(s.candidate_id) != ids:
                    problems.append(f"{r} shard {shard}: scores do not cover the candidates exactly")
        return dg.AssetCheckResult(passed=not problems, metadata={"problems": "; ".join(problems) or "none"})

    return [n_candidates_per_source, rewards_valid]


def improve_checks(spec: ExperimentSpec) -> list[dg.AssetChecksDefinition]:
    return [c for g, i in own_steps(spec) for c in _step_checks(spec, g, i)]


def _step_checks(spec: ExperimentSpec, grow: int, step: int) -> list[dg.AssetChecksDefinition]:
    parent = policy_name(*parent_of(spec, grow, step))
    name = policy_name(grow, step)
    train, independent = spec.reward.model, independent_reward(spec)

    @dg.asset_check(asset=keys.eval_key(spec, grow, step), name="no_reward_hacking", blocking=True)
    def no_reward_hacking(storage: RestStorage) -> dg.AssetCheckResult:
        """Training reward up while BLEU and the independent reward fall beyond the spec's margins stops the loop."""
        store = storage.store(spec)
        v = hacking_verdict(
            spec, store.get(Evaluation, policy=name), store.get(Evaluation, policy=parent), train, independent
        )
        return dg.AssetCheckResult(
            passed=v.passed,
            metadata={
                "verdict": v.explanation,
                "train_reward_delta": v.train_reward_delta,
                "bleu_delta": v.bleu_delta,
                "independent_delta": v.independent_delta,
            },
        )

    @dg.asset_check(asset=keys.policy_key(spec, grow, step), name="lineage_complete", blocking=True)
    def lineage_complete(storage: RestStorage) -> dg.AssetCheckResult:
        """The step record names its parent, slice, reward version and data, and the checkpoint exists."""
        store = storage.store(spec)
        rec = store.get(StepRecord, grow=grow, step=step)
        fields = ("parent_checkpoint", "slice_path", "slice_hash", "reward_version", "corpus_hash", "grow_policy")
        missing = [k for k in (*fields, "grow_decoding") if not getattr(rec, k)]
        if rec.parent != parent:
            missing.append(f"parent is {rec.parent}, expected {parent}")
        if not is_checkpoint(store.resolve(rec.checkpoint)):
            missing.append(f"checkpoint {rec.checkpoint} missing")
        elif (store.resolve(rec.checkpoint) / LINEAGE_FILE).is_file():
            try:  # a LoRA adapter: its parent must be there, unchanged
                adapter_parent(store.resolve(rec.checkpoint))
            except FileNotFoundError as e:
                missing.append(str(e))
        return dg.AssetCheckResult(
            passed=not missing,
            metadata={"problems": "; ".join(missing) or "none", "record": json.dumps(rec.model_dump())[:2000]},
        )

    @dg.asset_check(asset=keys.slice_key(spec, grow, step), name="slice_usable", blocking=False)
    def slice_usable(storage: RestStorage) -> dg.AssetCheckResult:
        """Warns when the slice is empty or skipped (the step then hands its parent on)."""
        stats = storage.store(spec).get(SliceRecord, grow=grow, step=step)
        return dg.AssetCheckResult(
            passed=stats.skip_reason is None,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"skip_reason": stats.skip_reason or "none", "kept": stats.kept},
        )

    return [no_reward_hacking, lineage_complete, slice_usable]
