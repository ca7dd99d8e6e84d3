"""Where an experiment's artifacts live: every folder and file name of an experiment, and the
policy names, spelled here and nowhere else (`ExperimentStore` in experiment.py reads and writes them).

Every stage reads and writes through it: each path and file name of an experiment is spelled
here and nowhere else, every JSON record is a typed record from `records.py` written atomically,
and every path inside a record is relative to the experiment folder. Tensors and tables keep
their own formats (Hugging Face folders, COMET checkpoints, Parquet); the candidate tables and
their DuckDB views come from `CandidateTables`.

    <experiment>/corpus/{train,valid,test}.parquet, corpus.json
    <experiment>/tokenizer/
    <experiment>/policies/base/ (HF checkpoint), bc_policy.json -> <home>/bc_policies/<key>/ (BC training,
        shared by content: resume point, best/, snapshots/, history.json)
    <experiment>/policies/grow_G/improve_I/{training/, step.json}
    <experiment>/policies/control/{grow_G_improve_I/, eval/, summary.json}, valid_rewards.json
    <experiment>/evaluations/{base/, base_rewards/, grow_G/improve_I/, best_of_n/}
    <experiment>/reward_model.json -> <home>/reward_models/<key>/ (COMET layout, shared by content)
    <experiment>/store/{candidates,scores,cache,slices}/ (hive-style Parquet)
    <experiment>/report/{report.md, report.json, *.png}
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from rest_pipeline.core.paths import is_remote
from rest_pipeline.core.store.location import TablePath, is_url, tables_root, url_path

BASE = "base"
FINAL = "final"
CONTROL = "control"
ONLINE_RL = "ppo"  # checkpoints of the online-RL baseline: ppo/c<candidates sampled so far>
# Rows per row group of a slice file: the chunk a trainer tokenizes and holds at once (~150 MB).
SLICE_ROW_GROUP = 262_144


def is_online_rl(policy: str) -> bool:
    return re.fullmatch(rf"{ONLINE_RL}/c\d+", policy) is not None


def policy_name(grow: int, step: int) -> str:
    """The name of the checkpoint (grow, step) hands on; (0, 0) is the BC policy."""
    return BASE if grow == 0 else f"grow_{grow}/improve_{step}"


def parse_policy_name(name: str) -> tuple[int, int] | None:
    """'grow_2/improve_3' -> (2, 3); 'base' -> (0, 0); 'final' -> None (the last step the store holds)."""
    name = name.strip("/")
    if name == BASE:
        return 0, 0
    if name in ("", FINAL):
        return None
    m = re.fullmatch(r"grow_(\d+)/improve_(\d+)", name)
    if not m:
        raise ValueError(f"policy '{name}': expected base, final or grow_<g>/improve_<i>")
    return int(m.group(1)), int(m.group(2))


def _grow_of(path: Path) -> int:
    """The grow of a hive-style table file (.../grow=G/shard=S/part.parquet)."""
    return next(int(p.split("=", 1)[1]) for p in path.parts if p.startswith("grow="))


def shard_name(shard: int) -> str:
    """The one spelling of a Grow shard: folder names, partition keys and logs."""
    return f"{shard:04d}"


class BranchError(RuntimeError):
    """A branch's parent changed since the branch was made, or a write would touch the parent."""


class ExperimentLayout:
    """The paths of one experiment folder (`root`); a branch reads what its parent owns up to
    `branch_grow` from the parent's folder."""

    root: Path
    parent: ExperimentLayout | None
    branch_grow: int

    def _from_parent(self, grow: int, inclusive: bool) -> bool:
        """Whether grow `grow`'s artifacts of this kind belong to the parent."""
        return self.parent is not None and (grow < self.branch_grow or (inclusive and grow == self.branch_grow))

    @property
    def experiment(self) -> str:
        return self.root.name

    def rel(self, path: Path | str) -> str:
        """A path as records store it: relative to the experiment folder (a branch's parent is a sibling)."""
        if is_remote(path) or is_url(str(path)):
            return str(path)  # a table on object storage: its URL
        p = Path(path)
        return Path(os.path.relpath(p, self.root)).as_posix() if p.is_absolute() else p.as_posix()

    def resolve(self, rel: str) -> Path:
        return url_path(rel) if is_url(rel) else self.root / rel

    @property
    def corpus_dir(self) -> Path:
        return self.parent.corpus_dir if self.parent else self.root / "corpus"

    @property
    def tokenizer_dir(self) -> Path:
        return self.parent.tokenizer_dir if self.parent else self.root / "tokenizer"

    @property
    def bc_policies_root(self) -> Path:
        """BC trainings by content address, shared by every experiment of this home (like reward models)."""
        return self.root.parent.parent / "bc_policies"

    @property
    def base_policy_dir(self) -> Path:
        return self.parent.base_policy_dir if self.parent else self.root / "policies" / "base"

    @property
    def reward_models_root(self) -> Path:
        """Reward models by content address, shared by every experiment of this home."""
        return self.root.parent.parent / "reward_models"

    @property
    def tables_root(self) -> TablePath:
        """`store/` of the experiment folder, or the same layout under REST_TABLES_URL (location.py)."""
        return tables_root(self.experiment, self.root)

    @property
    def decoding_eval_dir(self) -> Path:
        """BLEU/chrF of the BC policy under every decoding setting of the spec."""
        return self.parent.decoding_eval_dir if self.parent else self.root / "evaluations" / "base"

    @property
    def best_of_n_dir(self) -> Path:
        return self.root / "evaluations" / "best_of_n"

    @property
    def control_dir(self) -> Path:
        return self.root / "policies" / "control"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def improve_dir(self, grow: int, step: int) -> Path:
        if self._from_parent(grow, inclusive=False):
            return self.parent.improve_dir(grow, step)
        return self.root / "policies" / f"grow_{grow}" / f"improve_{step}"

    def training_dir(self, grow: int, step: int) -> Path:
        """Resume point and best checkpoint of an Improve step's fine-tuning."""
        return self.improve_dir(grow, step) / "training"

    def control_training_dir(self, grow: int, step: int) -> Path:
        return self.control_dir / f"grow_{grow}_improve_{step}"

    def eval_dir(self, policy: str) -> Path:
        """Where the evaluation of a named policy (base, grow_<g>/improve_<i>, control) lives."""
        if policy == CONTROL:
            return self.control_dir / "eval"
        if is_online_rl(policy):
            return self.root / "evaluations" / policy
        grow, step = self._named(policy)
        if self.parent is not None and (grow == 0 or self._from_parent(grow, inclusive=False)):
            return self.parent.eval_dir(policy)
        if grow == 0:
            return self.root / "evaluations" / "base_rewards"
        return self.root / "evaluations" / f"grow_{grow}" / f"improve_{step}"

    def split_file(self, role: str) -> Path:
        return self.corpus_dir / f"{role}.parquet"

    def candidates_file(self, grow: int, shard: int) -> Path:
        if self._from_parent(grow, inclusive=True):
            return self.parent.candidates_file(grow, shard)
        return self.tables_root / "candidates" / f"grow={grow}" / f"shard={shard_name(shard)}" / "part.parquet"

    def scores_file(self, reward: str, grow: int, shard: int) -> Path:
        if self._from_parent(grow, inclusive=True):
            return self.parent.scores_file(reward, grow, shard)
        return (
            self.tables_root
            / "scores"
            / f"reward={reward}"
            / f"grow={grow}"
            / f"shard={shard_name(shard)}"
            / "part.parquet"
        )

    def cache_dir(self, reward: str) -> Path:
        return self.tables_root / "cache" / f"reward={reward}"

    def slice_dir(self, grow: int, step: int) -> Path:
        if self._from_parent(grow, inclusive=False):
            return self.parent.slice_dir(grow, step)
        return self.tables_root / "slices" / f"grow={grow}" / f"improve={step}"

    def _with_parents(self, own: list[Path], parents: list[Path]) -> list[Path]:
        """A branch's table files: the parent's up to the branch grow, its own after it."""
        if self.parent is None:
            return own
        g = self.branch_grow
        return [p for p in parents if _grow_of(p) <= g] + [p for p in own if _grow_of(p) > g]

    def candidate_files(self) -> list[Path]:
        parents = self.parent.candidate_files() if self.parent else []
        return self._with_parents(super().candidate_files(), parents)

    def score_files(self) -> list[Path]:
        parents = self.parent.score_files() if self.parent else []
        return self._with_parents(super().score_files(), parents)

    def check_writable(self, path: Path) -> None:
        if is_remote(path):
            owned = str(path).startswith(str(self.tables_root) + "/")
        else:
            owned = self.root in Path(path).parents
        if not owned:
            raise BranchError(f"{path}: {self.experiment} does not own this file (a branch never writes its parent)")

    def _cost_file(self, grow: int, shard: int, stage: str) -> Path:
        if self._from_parent(grow, inclusive=True):
            return self.parent._cost_file(grow, shard, stage)
        return self.root / "costs" / f"grow_{grow}" / f"{shard_name(shard)}.{stage}.json"

    @property
    def online_rl_dir(self) -> Path:
        """PPO's resume point, its checkpoints at compute marks and its record."""
        return self.root / "online_rl"

    @property
    def human_dir(self) -> Path:
        """Rating rounds, ratings and their analysis (human_eval)."""
        return self.root / "human_eval"

    def rating_round_dir(self, round_id: str) -> Path:
        return self.human_dir / "rounds" / round_id

    def ratings_dir(self, round_id: str) -> Path:
        return self.human_dir / "ratings" / f"round={round_id}"

    def record_file(self, cls: type, **address: object) -> Path:
        """Where a record of type `cls` at `address` (its ADDRESS fields) lives: the one map of record types
        to files."""
        files = {
            "CorpusRecord": self._corpus_file,
            "DecodingEval": self._decoding_eval_file,
            "Evaluation": self._evaluation_file,
            "SliceRecord": self._slice_file,
            "StepRecord": self._step_file,
            "BestOfN": self._best_of_n_file,
            "ControlRecord": self._control_file,
            "Report": self._report_file,
            "OnlineRL": self._online_rl_file,
            "RatingRound": self._rating_round_file,
            "HumanEval": self._human_eval_file,
            "ShardCost": self._cost_file,
            "RewardProbe": self._reward_probe_file,
        }
        return files[cls.__name__](*address.values())

    def _corpus_file(self) -> Path:
        return self.corpus_dir / "corpus.json"

    def _step_file(self, grow: int, step: int) -> Path:
        return self.improve_dir(grow, step) / "step.json"

    def _evaluation_file(self, policy: str) -> Path:
        return self.eval_dir(policy) / "summary.json"

    def _decoding_eval_file(self) -> Path:
        return self.decoding_eval_dir / "scores.json"

    def _slice_file(self, grow: int, step: int) -> Path:
        return self.slice_dir(grow, step) / "slice.json"

    def _best_of_n_file(self) -> Path:
        return self.best_of_n_dir / "curves.json"

    def _control_file(self) -> Path:
        return self.control_dir / "summary.json"

    def _report_file(self) -> Path:
        return self.report_dir / "report.json"

    def _valid_rewards_file(self) -> Path:
        return self.root / "policies" / "valid_rewards.json"

    def _online_rl_file(self) -> Path:
        return self.online_rl_dir / "online_rl.json"

    def _rating_round_file(self, round_id: str) -> Path:
        return self.rating_round_dir(round_id) / "round.json"

    def _human_eval_file(self) -> Path:
        return self.human_dir / "human_eval.json"

    def _reward_probe_file(self, reward: str) -> Path:
        return self.root / "reward_probes" / f"{reward}.json"

    def _branch_file(self) -> Path:
        return self.root / "branch.json"

    @property
    def report_markdown(self) -> Path:
        return self.report_dir / "report.md"
