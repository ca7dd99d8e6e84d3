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


def dagster_home() -> Path:
    """The persistent instance shared by `rest main` and `rest ui` (DAGSTER_HOME wins)."""
    path = Path(os.environ.get("DAGSTER_HOME") or home() / "dagster_home").resolve()
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(path)
    return path


def cmd_main(args: argparse.Namespace) -> int:
    import dagster as dg

    from rest_pipeline.orchestration.headless import materialize_experiment

    spec = load_spec(find_spec(args.experiment))
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
