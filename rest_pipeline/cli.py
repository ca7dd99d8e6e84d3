"""`rest`: the command line. `rest main` materializes an experiment headless in the same
Dagster instance the web UI reads, so every run shows up there afterwards."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rest_pipeline.core.paths import home
from rest_pipeline.spec import SpecError, all_specs, find_spec, load_spec

# The `gpu` pool admits one step at a time across all runs (generation and training share the device);
# raise it with `dagster instance concurrency set gpu N` or by editing this file.
INSTANCE_CONFIG = """telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
"""


def dagster_home() -> Path:
    """The persistent instance shared by `rest main` and `rest ui` (DAGSTER_HOME wins)."""
    path = Path(os.environ.get("DAGSTER_HOME") or home() / "dagster_home").resolve()
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists() or "concurrency:" not in config.read_text():
        config.write_text(INSTANCE_CONFIG)
    os.environ["DAGSTER_HOME"] = str(path)
    return path


def cmd_main(args: argparse.Namespace) -> int:
    import dagster as dg

    from rest_pipeline.orchestration.headless import materialize_experiment

    spec = load_spec(find_spec(args.experiment))
    if args.control:
        spec = spec.model_copy(update={"improve": spec.improve.model_copy(update={"control": True})})
    dh = dagster_home()
    instance = dg.DagsterInstance.get()
    t0 = time.perf_counter()
    print(f"rest: materializing experiment '{spec.name}' (Dagster instance: {dh})", flush=True)
    results = materialize_experiment(spec, instance)
    wall = time.perf_counter() - t0
    failed = [r for r in results if not r.success]
    if failed:
        print(f"rest: run {failed[0].run_id} FAILED after {wall:.0f}s; see `rest ui` or the log above", file=sys.stderr)
        return 1
    result = results[0]
    from rest_pipeline.core.base_policy import Layout

    layout = Layout.of(spec)
    print(f"rest: {len(results)} run(s) succeeded in {wall / 60:.1f} min (first: {result.run_id})")
    print(f"  base policy checkpoint : {layout.base_policy}")
    print(f"  evaluation (hypotheses): {layout.base_eval}")
    from rest_pipeline.core.evaluation.evaluate import read_scores

    scores = read_scores(layout.base_eval)
    for s in scores:
        print(
            f"  {s['split']:>5} {s['decoding']:<7} BLEU {s['bleu']:6.2f}  chrF {s['chrf']:6.2f}"
            f"  ({s['sentences']} sents)"
        )
    report = layout.report / "report.json"
    if report.is_file():
        from rest_pipeline.core.report import md_table

        print(f"\nReST report: {layout.report / 'report.md'}")
        data = json.loads(report.read_text())
        print(md_table(data["table1"]))
        for f in data.get("findings", []):
            print(f"  {'YES' if f['holds'] else 'NO '} {f['finding']}: {f['evidence']}")
        if data.get("control"):
            for split, d in data["control"]["rest_minus_control"].items():
                r = d.get(f"reward_{spec.reward.model}")
                print(f"  ReST final minus originals-only control, {split}: reward {r:+.4f}, BLEU {d['bleu']:+.2f}")
        print(f"  lineage of the final checkpoint: ./scripts/rest lineage {spec.name}")
    print("  open the web UI with: ./scripts/rest ui")
    return 0


def cmd_check_spec(args: argparse.Namespace) -> int:
    spec = load_spec(find_spec(args.spec))
    print(json.dumps(spec.model_dump(mode="json"), indent=1))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for spec in all_specs():
        print(f"{spec.name:<12} {spec.description}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from rest_pipeline.core.corpus.fetch import fetch
    from rest_pipeline.core.corpus.registry import DATASETS, HUMAN_JUDGEMENTS

    names = args.datasets or sorted(DATASETS)
    for n in names:
        for split_name, split in DATASETS[n].splits.items():
            for f in (split.source, split.target):
                print(f"{n}/{split_name}: {fetch(f)}")
    if not args.datasets:
        print(f"human_judgements: {fetch(HUMAN_JUDGEMENTS)}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    """Read-only SQL over an experiment's candidate store (views: candidates, scores, scored)."""
    import pandas as pd

    from rest_pipeline.core.base_policy import Layout
    from rest_pipeline.core.store.candidates import CANNED, CandidateStore, canned_query

    spec = load_spec(find_spec(args.experiment))
    store = CandidateStore(Layout.of(spec).store)
    reward = args.reward or spec.reward.model
    if args.sql in CANNED:
        df = canned_query(store, args.sql, reward)
    else:
        con = store.connect()
        first = args.sql.lstrip().split(None, 1)[0].upper() if args.sql.strip() else ""
        if first not in {"SELECT", "WITH", "DESCRIBE", "SUMMARIZE", "SHOW", "FROM"}:
            print(
                f"rest: only read-only queries are allowed (got {first or 'nothing'}); canned: {', '.join(CANNED)}",
                file=sys.stderr,
            )
            return 2
        df = con.execute(args.sql).df()
    with pd.option_context(
        "display.max_rows", args.limit, "display.max_columns", 20, "display.width", 200, "display.max_colwidth", 60
    ):
        print(df.head(args.limit).to_string(index=False))
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    """The chain of a checkpoint back to the BC policy, from the store's lineage table (and Dagster's)."""
    from rest_pipeline.core.base_policy import Layout
    from rest_pipeline.core.evaluation.policy_eval import weights_hash
    from rest_pipeline.core.improve.evaluation import final_step
    from rest_pipeline.core.improve.lineage import parse_checkpoint, render, store_chain
    from rest_pipeline.core.store.candidates import CandidateStore

    experiment, _, rest = args.checkpoint.partition("/")
    spec = load_spec(find_spec(experiment))
    try:
        grow, step = parse_checkpoint(rest) or final_step(spec)
        layout = Layout.of(spec)
        chain = store_chain(CandidateStore(layout.store), spec, grow, step)
    except (ValueError, FileNotFoundError) as e:
        print(f"rest: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(chain.to_json(orient="records", indent=1))
    else:
        print(render(chain, str(layout.base_policy), weights_hash(layout.base_policy)))
    if args.dagster:
        import dagster as dg

        from rest_pipeline.orchestration.lineage import dagster_chain

        dagster_home()
        rows = dagster_chain(dg.DagsterInstance.get(), spec, grow, step)
        print("\nDagster (asset graph + latest materializations):")
        for r in rows:
            print(f"  {r['asset']}  data_version {r['data_version']}  parent {r['parent']}  {r['path']}")
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    """Candidate explorer: every candidate of one source, its rewards, and the slices that kept it."""
    import pandas as pd

    from rest_pipeline.core.base_policy import Layout
    from rest_pipeline.core.store.candidates import CandidateStore

    spec = load_spec(find_spec(args.experiment))
    con = CandidateStore(Layout.of(spec).store).connect()
    has_slices = "slices" in {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    kept = (
        ", (SELECT string_agg(DISTINCT 'g' || s.grow || 'i' || s.step, ' ' ORDER BY 'g' || s.grow || 'i' || s.step) "
        "FROM slices s WHERE s.candidate_id = c.candidate_id) AS kept_in"
        if has_slices
        else ""
    )
    df = con.execute(
        f"SELECT c.* EXCLUDE (experiment, source, reference, pair_hash, policy, decoding, shard){kept} "
        "FROM scored c WHERE c.source_id = ? OR c.source ILIKE ? ORDER BY grow, origin, candidate_id",
        [args.source, f"%{args.source}%"],
    ).df()
    if df.empty:
        print(f"rest: no candidates for source '{args.source}'", file=sys.stderr)
        return 2
    src = con.execute("SELECT any_value(source) FROM candidates WHERE source_id = ?", [df.source_id.iloc[0]]).fetchone()
    print(f"source {df.source_id.iloc[0]}: {src[0]}")
    with pd.option_context("display.max_rows", 500, "display.width", 220, "display.max_colwidth", 70):
        print(df.head(args.limit).to_string(index=False))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    dh = dagster_home()
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
    os.execv(sys.executable, cmd)  # replace this process: signals reach dagster dev directly


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("main", help="materialize an experiment's whole graph headless")
    p.add_argument("experiment", nargs="?", default="default")
    p.add_argument(
        "--control", action="store_true", help="also run the originals-only control (as improve.control: true)"
    )
    p.set_defaults(func=cmd_main)
    p = sub.add_parser("check-spec", help="validate a spec (name or path) and print it resolved")
    p.add_argument("spec")
    p.set_defaults(func=cmd_check_spec)
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
    p = sub.add_parser("lineage", help="chain of a checkpoint back to the BC policy")
    p.add_argument("checkpoint", help="<experiment>[/grow_<g>/improve_<i>], default: the experiment's final one")
    p.add_argument("--json", action="store_true", help="print the lineage rows as JSON")
    p.add_argument("--dagster", action="store_true", help="also print Dagster's view of the same chain")
    p.set_defaults(func=cmd_lineage)
    p = sub.add_parser("explore", help="candidates of one source (id or text fragment) with rewards and slices")
    p.add_argument("source")
    p.add_argument("--experiment", default="default")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_explore)
    p = sub.add_parser("ui", help="serve the Dagster web UI on 127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=cmd_ui)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SpecError as e:
        print(f"rest: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
