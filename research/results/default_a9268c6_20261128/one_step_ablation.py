"""One Improve step from the BC policy on grow 1's candidates, per slice rule: the ablation behind
default.yaml's filter (research/log.md, "One-step filter ablation"). Needs a finished default run's
experiment folder (BC policy, reward model, grow 1 scored); writes nothing into it but the
validation-reward cache, and trains into --work.

    cd research/results/default_a9268c6_20261128
    python one_step_ablation.py ../../../data/experiments/default percentile:100
    python one_step_ablation.py ../../../data/experiments/default threshold:0.7 '{"average_last": 3}'
    python one_step_ablation.py ../../../data/experiments/default originals

Prints one JSON line: the selection reward of the best checkpoint (on default.yaml's
`validate_pairs` validation sentences, what an Improve step keeps by) and greedy reward on the
full validation set. The slice table in research/log.md was measured before Improve steps annealed over
their budget and when default.yaml judged steps on the first 400 sentences; pass
'{"validate_pairs": 400}' to judge the same way (the schedule now always anneals).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from rest_pipeline.core.improve import finetune as ft
from rest_pipeline.core.improve.filtering import read_grow, select
from rest_pipeline.core.policy.model import load_policy
from rest_pipeline.core.policy.tokenizer import load_tokenizer
from rest_pipeline.core.rewards.factory import make_reward
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.core.training.bc import train_bc
from rest_pipeline.spec import find_spec, load_spec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("experiment_dir", type=Path)
    ap.add_argument("rule", help="threshold:TAU, percentile:P, interpolated:GAMMA, or originals")
    ap.add_argument("train", nargs="?", default="{}", help="JSON overrides of improve.train (e.g. lr)")
    ap.add_argument("--lr", type=float, default=3e-4, help="improve.train.lr of default.yaml")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "one_step_ablation")
    args = ap.parse_args()

    spec = load_spec(find_spec("default"))
    store = ExperimentStore(args.experiment_dir)
    reward = make_reward(spec.reward.model, spec, store.reward_model_dir)
    if args.rule == "originals":
        rows = select(read_grow(store, 1, spec.reward.model), "threshold", 2.0, mix_originals=True)
    else:
        rule, parameter = args.rule.split(":")
        rows = select(read_grow(store, 1, spec.reward.model), rule, float(parameter), mix_originals=True, dedupe=True)
    train = spec.improve.train.model_copy(update={"lr": args.lr, **json.loads(args.train)})
    shutil.rmtree(args.work, ignore_errors=True)
    parent = store.base_policy_dir
    result = train_bc(
        load_policy(parent),
        load_tokenizer(parent),
        (list(rows.source), list(rows.hypothesis)),
        ft.validation_set(spec, store),
        train,
        args.work,
        seed=spec.seed + 2,
        max_length=spec.tokenizer.max_length,
        fingerprint=args.rule,
        log=lambda _: None,
        reward_fn=ft.make_reward_fn(reward),
    )
    full_train = spec.improve.train.model_copy(update={"validate_pairs": None})
    full = spec.model_copy(update={"improve": spec.improve.model_copy(update={"train": full_train})})
    out = {
        "rule": args.rule,
        "train": json.loads(args.train),
        "pairs": len(rows),
        "samples": int((rows.origin == "sample").sum()),
        "updates": result.steps,
        "subset_reward": result.best_metric,
        "parent_subset_reward": ft.valid_reward(spec, store, parent, reward),
        "valid_reward": ft.valid_reward(full, store, result.best_dir, reward),
        "parent_valid_reward": ft.valid_reward(full, store, parent, reward),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
