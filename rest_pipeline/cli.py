"""`rest`: the command line. `rest main` materializes an experiment headless in the same
Dagster instance the web UI reads, so every run shows up there afterwards."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from rest_pipeline.core.paths import home
from rest_pipeline.core.spec_check import checked_specs, load_checked_spec
from rest_pipeline.core.store.experiment import ExperimentStore, StaleRecordError
from rest_pipeline.core.store.records import BCPolicyLink, CorpusRecord, DecodingEval, Report
from rest_pipeline.spec import ExperimentSpec, SpecError, find_spec, load_spec


def open_store(spec: ExperimentSpec) -> ExperimentStore:
    """The experiment's store, found the way the Dagster resource finds it ($REST_HOME or ./data)."""
    return ExperimentStore.for_spec(spec, home())


INTERRUPTS = ("KeyboardInterrupt", "DagsterExecutionInterruptedError")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _failures(instance, run_id: str) -> list:
    """The errors of a run's failed steps (and of the run itself)."""
    import dagster as dg

    errors = []
    for kind in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
        for record in instance.get_records_for_run(run_id, of_type=kind).records:
            data = record.event_log_entry.dagster_event.event_specific_data
            error = getattr(data, "error", None)
            if error is not None:
                errors.append((record.event_log_entry.step_key, error))
    return errors


def _was_interrupted(instance, run_id: str) -> bool:
    def chain(error):
        while error is not None:
            yield error
            error = error.cause or error.context

    return any(e.cls_name in INTERRUPTS for _, err in _failures(instance, run_id) for e in chain(err))


def _what_ran(instance, experiment: str) -> str:
    """' during <steps>' for the experiment's newest run, to say what was interrupted."""
    import dagster as dg

    from rest_pipeline.orchestration.instance import EXPERIMENT

    records = instance.get_run_records(filters=dg.RunsFilter(tags={EXPERIMENT: experiment}), limit=1)
    if not records:
        return ""
    steps = sorted({s for s, _ in _failures(instance, records[0].dagster_run.run_id) if s})
    return f" during {', '.join(steps)}" if steps else ""


def _main_one(name: str, args: argparse.Namespace) -> int:
    from rest_pipeline.orchestration.headless import materialize_experiment
    from rest_pipeline.orchestration.instance import (
        EXPERIMENT,
        ExperimentBusy,
        experiment_lock,
        open_instance,
        process_tags,
        reap_dead_runs,
    )

    spec = load_checked_spec(name)
    if args.control:
        spec = spec.model_copy(update={"improve": spec.improve.model_copy(update={"control": True})})
    instance = open_instance()
    reap_dead_runs(instance)
    t0 = time.perf_counter()
    try:
        with experiment_lock(instance, spec.name, wait=args.wait):
            print(
                f"rest: materializing experiment '{spec.name}' (Dagster instance: {instance.root_directory})",
                flush=True,
            )
            # SIGTERM ends the run like Ctrl-C: the step is not retried, its saved work stays.
            signal.signal(signal.SIGTERM, _interrupt)
            tags = {**process_tags(), EXPERIMENT: spec.name}
            _repair_before_run(spec)
            sys.stderr = _NoInterruptTraces(sys.__stderr__)
            try:
                results = materialize_experiment(spec, instance, until=args.until, tags=tags)
            finally:
                sys.stderr = sys.__stderr__
    except ExperimentBusy as e:
        print(f"rest: {e}", file=sys.stderr)
        return 3
    except ValueError as e:
        print(f"rest: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        results = None
    wall = time.perf_counter() - t0
    interrupted = results is None or any(_was_interrupted(instance, r.run_id) for r in results if not r.success)
    if interrupted:
        print(
            f"\nrest: interrupted after {wall:.0f}s{_what_ran(instance, spec.name)}; finished assets and "
            f"saved training are kept: `./scripts/rest main {spec.name}` resumes from there",
            file=sys.stderr,
        )
        return 130
    failed = [r for r in results if not r.success]
    if failed:
        print(f"rest: run {failed[0].run_id} FAILED after {wall:.0f}s; see `rest ui` or the log above", file=sys.stderr)
        return 1
    store = open_store(spec)
    first = f" (first: {results[0].run_id})" if results else " (nothing left to do)"
    print(f"rest: {len(results)} run(s) succeeded in {wall / 60:.1f} min{first}")
    if store.exists(DecodingEval):  # not yet, after `--until` an earlier asset
        print(f"  base policy checkpoint : {store.base_policy_dir}")
        print(f"  evaluation (hypotheses): {store.decoding_eval_dir}")
        for s in store.get(DecodingEval).rows:
            print(f"  {s.split:>5} {s.decoding.name:<7} BLEU {s.bleu:6.2f}  chrF {s.chrf:6.2f}  ({s.sentences} sents)")
    if store.exists(Report):
        from rest_pipeline.core.tables import md_table

        report = store.get(Report)
        print(f"\nReST report: {store.report_markdown}")
        print(md_table(report.table1))
        for f in report.findings:
            print(f"  {'YES' if f.holds else 'NO '} {f.finding}: {f.evidence}")
        if report.control:
            for split, d in report.control.rest_minus_control.items():
                r = d.get(f"reward_{spec.reward.model}")
                print(f"  ReST final minus originals-only control, {split}: reward {r:+.4f}, BLEU {d['bleu']:+.2f}")
        print(f"  final checkpoint: {store.policy('final')}")
        print(f"  lineage of the final checkpoint: ./scripts/rest lineage {spec.name}")
    print("  open the web UI with: ./scripts/rest ui")
    return 0


class _NoInterruptTraces:
    """stderr for `rest main`: a Dagster log record of a step stopped by Ctrl-C or SIGTERM keeps its message
    and loses its stack trace (the interruption is expected; `rest main` says what to do in one line)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        interrupted = ("interrupted (", "DagsterExecutionInterruptedError", "Execution was interrupted")
        if any(mark in text for mark in interrupted):
            # Dagster's records carry "Stack Trace:"; a library's own log record of the same interruption
            # (SQLAlchemy closing a connection as the signal lands) a plain traceback.
            for trace in ("Stack Trace:", "Traceback (most recent call last):"):
                if trace in text:
                    text = text[: text.index(trace)].rstrip() + "\n"
                    break
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _repair_before_run(spec: ExperimentSpec) -> None:
    """A damaged artifact is treated like a stale one: moved aside (named here) and re-made by this run."""
    from rest_pipeline.core.verify import repair, verify_store

    store = open_store(spec)
    if not store.root.is_dir():
        return
    damage = verify_store(store, quick=True)
    moved = dict(repair(store, damage))
    for d in damage:
        if d.moves in moved:
            print(f"rest: {d.path}: {d.why}; moved aside to {moved[d.moves]}; this run re-makes it", flush=True)


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every artifact of an experiment's store; with --repair, move the damaged ones aside."""
    from rest_pipeline.core.verify import repair, verify_store

    spec = load_checked_spec(args.experiment)
    store = open_store(spec)
    damage = verify_store(store)
    if not damage:
        print(f"rest: {store.root}: every artifact checked, none damaged")
        return 0
    moved = dict(repair(store, damage)) if args.repair else {}
    for d in damage:
        where = f"; moved aside to {moved[d.moves]}" if d.moves in moved else ""
        print(f"rest: {d.path}: {d.why}{where}")
    if args.repair:
        print(f"rest: `rest main {args.experiment}` re-makes what was moved aside")
        return 0
    print(f"rest: {len(damage)} damaged; `rest verify {args.experiment} --repair` moves them aside, then "
          f"`rest main {args.experiment}` re-makes them (rest main does both by itself)")  # fmt: skip
    return 1


def cmd_main(args: argparse.Namespace) -> int:
    """Materialize each named experiment in turn; several of them are then compared side by side."""
    names = args.experiments or ["default"]
    for name in names:
        rc = _main_one(name, args)
        if rc:
            return rc
    if len(names) > 1 and not args.until:
        return cmd_compare(argparse.Namespace(experiments=names))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Finished experiments side by side (the paper's loss-ablation table), written under data/comparisons/."""
    from rest_pipeline.core.compare import compare, render
    from rest_pipeline.core.paths import atomic_path

    runs = [(spec, open_store(spec)) for spec in (load_spec(find_spec(n)) for n in args.experiments)]
    try:
        rows = compare(runs)
    except (FileNotFoundError, ValueError) as e:
        print(f"rest: {e}", file=sys.stderr)
        return 2
    text = render(rows)
    out = home() / "comparisons" / ("-".join(args.experiments) + ".md")
    with atomic_path(out) as tmp:
        tmp.write_text(f"# {' vs '.join(args.experiments)}\n\n{text}")
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(rows, indent=1))
    print(text)
    print(f"rest: comparison written to {out}")
    return 0


def cmd_check_spec(args: argparse.Namespace) -> int:
    """A spec validated; then the spec resolved (--json), or what will run, on how many pairs, how long."""
    from rest_pipeline.core.corpus.validate import CorpusError
    from rest_pipeline.core.plan import describe

    spec = load_checked_spec(args.spec)
    if args.json:
        print(json.dumps(spec.model_dump(mode="json"), indent=1))
        return 0
    print(f"{args.spec}: valid experiment spec '{spec.name}'")
    try:
        for line in describe(spec, estimate=not args.no_estimate):
            print(f"  {line}", flush=True)
    except CorpusError as e:
        print(f"rest: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_check_reward(args: argparse.Namespace) -> int:
    """Each reward of an experiment under test: damaged variants of BC's valid outputs, a verdict per family."""
    import pandas as pd

    from rest_pipeline.core.evaluation.reward_probes import probe_rewards, probe_table
    from rest_pipeline.core.rewards.factory import make_rewards

    spec = load_checked_spec(args.experiment)
    store = open_store(spec)
    try:
        records = probe_rewards(spec, store, make_rewards(spec, store.reward_model_dir), log=lambda m: None)
    except FileNotFoundError as e:
        print(
            f"rest: {e}; `rest main {args.experiment} --until base_policy_rewards` makes what this needs",
            file=sys.stderr,
        )
        return 2
    for r in records:
        bar = f"fails {', '.join(r.failing)}" if r.failing else "passes"
        print(f"\nreward {r.reward} ({r.reward_version}) on {r.hypotheses}: {bar} (bar: prefers or ties "
              f"a damaged variant on at most {r.max_prefer_or_tie:.0%} of sentences, reward.probe)")  # fmt: skip
        with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 40):
            print(probe_table(r).to_string(index=False))
    return 1 if any(r.failing for r in records) else 0


def cmd_new(args: argparse.Namespace) -> int:
    """Write a commented spec for the user's own data (and model, and reward)."""
    from rest_pipeline.core.corpus.validate import CorpusError
    from rest_pipeline.core.spec_template import new_spec

    out = Path(args.out or f"{args.name}.yaml")
    if out.stem != args.name:
        print(f"rest: the spec file must be named {args.name}.yaml (the experiment's name), got {out}", file=sys.stderr)
        return 2
    if out.exists() and not args.force:
        print(f"rest: {out} exists; edit it, or pass --force to write it again", file=sys.stderr)
        return 2
    data = Path(args.data)
    if not data.exists():
        print(f"rest: --data {data}: no such file or folder", file=sys.stderr)
        return 2
    if args.model and not (Path(args.model) / "config.json").is_file():
        print(f"rest: --model {args.model}: not a Hugging Face model folder (no config.json)", file=sys.stderr)
        return 2
    try:
        text = new_spec(
            args.name, data, out, model=args.model, reward=args.reward,
            source_lang=args.source_lang, target_lang=args.target_lang,
        )  # fmt: skip
    except CorpusError as e:
        print(f"rest: --data {data}: {e}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"rest: wrote {out}; next: `rest check-spec {out}` then `rest main {out}`")
    return 0


def cmd_serve_reward(args: argparse.Namespace) -> int:
    """Serve one of our rewards over the reward protocol (docs/reward_protocol.md) until Ctrl-C."""
    from rest_pipeline.core.rewards.base import RewardError, load_reward
    from rest_pipeline.core.rewards.factory import make_reward
    from rest_pipeline.core.rewards.serve import RewardServer

    try:
        if args.experiment:
            spec = load_checked_spec(args.experiment)
            model = make_reward(args.reward, spec, open_store(spec).reward_model_dir)
        elif args.reward in ("learned", "comet", "http"):
            print(f"rest: reward '{args.reward}' belongs to an experiment; add --experiment <name>", file=sys.stderr)
            return 2
        else:
            model = load_reward(args.reward)
        server = RewardServer(model, args.host, args.port)
    except (RewardError, OSError) as e:
        print(f"rest: {e}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"rest: serving reward '{model.name}' ({model.version}) on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("rest: reward server stopped", flush=True)
    finally:
        server.server_close()
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    errors: list[SpecError] = []
    for spec in checked_specs(errors):
        print(f"{spec.name:<15} {spec.description}")
    for e in errors:
        print(f"rest: skipped: {e}", file=sys.stderr)
    return 2 if errors else 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from rest_pipeline.core.corpus.fetch import FetchError, fetch
    from rest_pipeline.core.corpus.registry import DATASETS, HUMAN_JUDGEMENTS

    names = args.datasets or sorted(DATASETS)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        print(
            f"rest: unknown dataset {', '.join(unknown)}; the registry has {', '.join(sorted(DATASETS))}",
            file=sys.stderr,
        )
        return 2
    try:
        for n in names:
            for split_name, split in DATASETS[n].splits.items():
                for f in (split.source, split.target):
                    try:
                        print(f"{n}/{split_name}: {fetch(f)}")
                    except FetchError:
                        if f.sha256 is not None:
                            raise
                        if n in args.datasets:  # asked for by name: say how the missing file is made
                            print(f"rest: {n}: {DATASETS[n].notes}", file=sys.stderr)
                            raise
                        print(f"{n}/{split_name}: not here (made by a script: `rest fetch {n}` says how)")
        if not args.datasets:
            print(f"human_judgements: {fetch(HUMAN_JUDGEMENTS)}")
    except FetchError as e:  # a checksum mismatch or a missing file: one line that names it
        print(f"rest: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    """Read-only SQL over an experiment's candidate store (views: candidates, scores, scored)."""
    import duckdb
    import pandas as pd

    from rest_pipeline.core.store.candidates import QueryError
    from rest_pipeline.core.store.queries import CANNED, canned_query

    spec = load_spec(find_spec(args.experiment))
    store = open_store(spec)
    reward = args.reward or spec.reward.model
    try:
        df = canned_query(store, args.sql, reward) if args.sql in CANNED else store.user_query(args.sql)
    except QueryError as e:
        print(f"rest: {e}; canned queries: {', '.join(CANNED)}", file=sys.stderr)
        return 2
    except duckdb.Error as e:  # a file outside the store refused, or a damaged table file
        print(
            f"rest: query refused or failed: {str(e).splitlines()[0]}\n"
            f"rest: if a table file is damaged, `rest verify {args.experiment}` names it and --repair moves it aside",
            file=sys.stderr,
        )
        return 2
    with pd.option_context(
        "display.max_rows", args.limit, "display.max_columns", 20, "display.width", 200, "display.max_colwidth", 60
    ):
        print(df.head(args.limit).to_string(index=False))
    return 0


def render_lineage(
    chain: list,
    base_checkpoint: Path,
    base_hash: str,
    bc: BCPolicyLink | None = None,
    data_files: dict | None = None,
    engines: dict[int, list[dict]] | None = None,
) -> str:
    """A chain of step records (newest first) for people, ending at the BC policy and the data it learned
    from; `engines`: per grow, the sampling engines its shards ran (engine, version, weights)."""
    lines = []
    for r in chain:
        lines.append(f"{r.name}  [{r.status}]  checkpoint {r.checkpoint_hash}  {r.checkpoint}")
        if r.skip_reason:
            lines.append(f"    skipped: {r.skip_reason}")
        lines.append(
            f"    slice: {r.slice_rule} {r.slice_parameter:g} -> {r.slice_kept} pairs "
            f"({r.slice_kept_fraction:.1%} of samples)  {r.slice_path}"
        )
        lines.append(f"    parent: {r.parent} ({r.parent_hash}); fine-tuning loss {r.loss}, lr {r.lr:.2e}")
        lines.append(f"    validation reward: parent {r.parent_valid_reward} -> {r.valid_reward}")
        lines.append(f"    grow {r.grow}: sampled by {r.grow_policy} with {r.grow_decoding}")
        for engine in (engines or {}).get(r.grow, []):
            lines.append("    engine: " + ", ".join(f"{k} {v}" for k, v in engine.items()))
        lines.append(f"    reward: {r.reward_model} ({r.reward_version}); corpus {r.corpus_hash}")
    lines.append(f"base (BC policy)  checkpoint {base_hash}  {base_checkpoint}")
    if bc is not None:
        lines.append(
            f"    BC training {bc.key} (shared by content: {bc.path}): {bc.epochs:g} epochs, {bc.steps} updates, "
            f"{bc.precision}; stopped by {bc.stopped_because}" + ("  [CUT BY ITS CLOCK]" if bc.clock_cut else "")
        )
        if bc.pretrained:
            lines.append(f"    started from {bc.pretrained} (weights {bc.pretrained_hash})")
    for path, sha in (data_files or {}).items():
        lines.append(f"data file {path}  sha256 {sha}")
    return "\n".join(lines)


def cmd_rate(args: argparse.Namespace) -> int:
    """Serve the rating page for a round of test items: BC against the named checkpoints, side by side."""
    import getpass

    from rest_pipeline.core.human.ratings import RatingBook, RatingError
    from rest_pipeline.core.human.rounds import RoundError, make_round
    from rest_pipeline.web.rating import serve

    spec = load_spec(find_spec(args.experiment))
    store = open_store(spec)
    rater = args.rater or getpass.getuser()
    try:
        record = make_round(
            store,
            args.checkpoint or ["final"],
            items=args.items,
            seed=args.seed,
            stratify=args.stratify,
            reward=spec.reward.model,
        )
        RatingBook.check_rater(rater)
    except (RoundError, RatingError, StaleRecordError, FileNotFoundError) as e:
        print(f"rest: {e}", file=sys.stderr)
        return 2
    book = RatingBook(store, record)
    print(
        f"rest: round {record.round_id}: {record.items} {record.split} items, systems hidden as A/B/...; "
        f"ratings go to {store.ratings_dir(record.round_id)}",
        flush=True,
    )
    print(f"rest: rating page on http://127.0.0.1:{args.port}/?rater={rater} (Ctrl-C stops it)", flush=True)
    serve(book, args.port)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A checkpoint as a plain Hugging Face folder (LoRA adapters merged) that `from_pretrained` loads."""
    from rest_pipeline.core.policy.model import export_merged

    experiment, _, name = args.checkpoint.partition("/")
    store = open_store(load_spec(find_spec(experiment)))
    try:
        source = store.policy(name or "final")
        out = export_merged(source, Path(args.out))
    except (ValueError, FileNotFoundError, StaleRecordError) as e:
        print(f"rest: {e}", file=sys.stderr)
        return 2
    print(f"rest: {store.rel(source)} exported to {out} (load with from_pretrained)")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    """The chain of a checkpoint back to the BC policy, from the store's step records (and Dagster's)."""
    from rest_pipeline.core.policy.model import weights_hash
    from rest_pipeline.core.store.experiment import BASE, parse_policy_name

    experiment, _, rest = args.checkpoint.partition("/")
    spec = load_spec(find_spec(experiment))
    store = open_store(spec)
    try:
        grow, step = parse_policy_name(rest) or store.final_step()
        if grow == 0:
            raise FileNotFoundError(f"{store.root}: no Improve step materialized yet (the chain starts at BC)")
        chain = store.lineage(grow, step)
    except (ValueError, FileNotFoundError, StaleRecordError) as e:
        print(f"rest: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.model_dump(exclude={"history"}) for r in chain], indent=1))
    else:
        base = store.policy(BASE)
        files = store.get(CorpusRecord).files
        engines = {g: store.sampling_engines(g) for g in sorted({r.grow for r in chain})}
        print(render_lineage(chain, store.rel(base), weights_hash(base), store.bc_policy_link(), files, engines))
    if args.dagster:
        from rest_pipeline.orchestration.instance import open_instance
        from rest_pipeline.orchestration.lineage import dagster_chain

        rows = dagster_chain(open_instance(), spec, grow, step)
        print("\nDagster (asset graph + latest materializations):")
        for r in rows:
            print(f"  {r['asset']}  data_version {r['data_version']}  parent {r['parent']}  {r['path']}")
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    """Candidate explorer: every candidate of one source, its rewards, and the slices that kept it."""
    import pandas as pd

    from rest_pipeline.core.store.queries import source_candidates

    found = source_candidates(open_store(load_spec(find_spec(args.experiment))), args.source)
    if found is None:
        print(f"rest: no candidates for source '{args.source}'", file=sys.stderr)
        return 2
    source_id, source, df = found
    print(f"source {source_id}: {source}")
    with pd.option_context("display.max_rows", 500, "display.width", 220, "display.max_colwidth", 70):
        print(df.head(args.limit).to_string(index=False))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from rest_pipeline.orchestration.instance import open_instance, reap_dead_runs

    instance = open_instance()
    reap_dead_runs(instance)
    dh = instance.root_directory
    root = Path(__file__).resolve().parent.parent
    cmd = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-w",
        str(root / "workspace.yaml"),
        "-h",
        "127.0.0.1",
        "-p",
        str(args.port),
    ]
    print(f"rest: Dagster UI on http://127.0.0.1:{args.port} (DAGSTER_HOME={dh})", flush=True)
    os.chdir(root)
    # Started in the background by a non-interactive shell, this process inherits SIGINT ignored, and an
    # ignored signal stays ignored across exec: dagster dev maps SIGTERM onto SIGINT, so it would never stop.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.execv(sys.executable, cmd)  # replace this process: signals reach dagster dev directly


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("main", help="materialize experiments' whole graphs headless (several: then compare them)")
    p.add_argument("experiments", nargs="*", help="experiment names (default: default)")
    p.add_argument(
        "--control", action="store_true", help="also run the originals-only control (as improve.control: true)"
    )
    p.add_argument(
        "--until",
        action="append",
        metavar="ASSET",
        help="materialize only this asset (e.g. grow_1/rewards) and what it depends on; repeatable",
    )
    p.add_argument("--wait", action="store_true", help="if another `rest main` holds the experiment, queue behind it")
    p.set_defaults(func=cmd_main)
    p = sub.add_parser("compare", help="finished experiments side by side (e.g. the loss ablation's branches)")
    p.add_argument("experiments", nargs="+", help="the first is the baseline the others are compared with")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("check-spec", help="validate a spec (name or path): what runs, on how many pairs, how long")
    p.add_argument("spec")
    p.add_argument("--json", action="store_true", help="print the spec resolved as JSON instead")
    p.add_argument("--no-estimate", action="store_true", help="skip timing the policy on this machine")
    p.set_defaults(func=cmd_check_spec)
    p = sub.add_parser("new", help="write a commented spec for your own data (and model, and reward)")
    p.add_argument("name", help="the experiment's name (the spec is <name>.yaml)")
    p.add_argument("--data", required=True, help="train file (.tsv/.jsonl/.parquet) or a save_to_disk folder")
    p.add_argument("--model", help="a local Hugging Face model folder to start from (default: a Marian from scratch)")
    p.add_argument("--reward", default="chrf", help="chrf, bleu, learned, package.module:factory, or a server URL")
    p.add_argument("--source-lang", default="src")
    p.add_argument("--target-lang", default="tgt")
    p.add_argument("--out", help="where to write the spec (default: ./<name>.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite an existing spec")
    p.set_defaults(func=cmd_new)
    p = sub.add_parser("check-reward", help="the experiment's rewards under test: a verdict per damage family")
    p.add_argument("experiment")
    p.set_defaults(func=cmd_check_reward)
    p = sub.add_parser("serve-reward", help="serve a reward model over HTTP on 127.0.0.1 (reward.model: http)")
    p.add_argument("reward", help="chrf, bleu, a plugin, or learned/comet with --experiment")
    p.add_argument("--experiment", help="the experiment whose reward model to serve (for learned, comet)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8700, help="0 picks a free port (printed)")
    p.set_defaults(func=cmd_serve_reward)
    p = sub.add_parser("list", help="list the experiments the code location knows")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("fetch", help="download (or verify the mirror of) registered datasets")
    p.add_argument("datasets", nargs="*")
    p.set_defaults(func=cmd_fetch)
    p = sub.add_parser("query", help="read-only SQL (or a canned query name) over the candidate store")
    p.add_argument(
        "sql",
        help="SELECT ... over candidates/scores/scored, or: reward_distribution, "
        "yield_per_threshold, top_k_per_source, duplicate_rate, distinct_per_source",
    )
    p.add_argument("--experiment", default="default")
    p.add_argument("--reward", default=None, help="reward column for canned queries (default: the spec's)")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_query)
    p = sub.add_parser("rate", help="serve the page that rates checkpoints' translations against BC's (0-6)")
    p.add_argument("experiment")
    p.add_argument(
        "--checkpoint",
        action="append",
        help="grow_<g>/improve_<i> or final (repeat for several; default: final), rated against BC",
    )
    p.add_argument("--items", type=int, default=100, help="test sentences in the round")
    p.add_argument("--rater", default=None, help="your name as the ratings record it (default: $USER)")
    p.add_argument("--seed", type=int, default=0, help="which items, and their systems' order")
    p.add_argument(
        "--stratify",
        default="random",
        help="random, or disagree: items where the reward model and sentence BLEU prefer different systems",
    )
    p.add_argument("--port", type=int, default=8765)
    p.set_defaults(func=cmd_rate)
    p = sub.add_parser("export", help="a checkpoint as a plain HF folder (LoRA adapters merged)")
    p.add_argument("checkpoint", help="<experiment>[/base|/grow_<g>/improve_<i>|/final], default: the final one")
    p.add_argument("--out", required=True, help="folder to write (replaced if it exists)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("lineage", help="chain of a checkpoint back to the BC policy")
    p.add_argument("checkpoint", help="<experiment>[/grow_<g>/improve_<i>|/final], default: the final one")
    p.add_argument("--json", action="store_true", help="print the lineage rows as JSON")
    p.add_argument("--dagster", action="store_true", help="also print Dagster's view of the same chain")
    p.set_defaults(func=cmd_lineage)
    p = sub.add_parser("explore", help="candidates of one source (id or text fragment) with rewards and slices")
    p.add_argument("source")
    p.add_argument("--experiment", default="default")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_explore)
    p = sub.add_parser("verify", help="check every artifact of an experiment; --repair moves damaged ones aside")
    p.add_argument("experiment")
    p.add_argument("--repair", action="store_true", help="move damaged artifacts aside for `rest main` to re-make")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("ui", help="serve the Dagster web UI on 127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=cmd_ui)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, StaleRecordError) as e:
        print(f"rest: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
