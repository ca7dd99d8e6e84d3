"""`ExperimentStore`: the one owner of an experiment's artifacts on disk.

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

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import duckdb
import pandas as pd
from pydantic import ValidationError

from rest_pipeline.core.paths import atomic_path, home, is_remote
from rest_pipeline.core.store.candidates import CandidateTables, lock_down, read_only_statement
from rest_pipeline.core.store.location import TablePath, is_url, read_table, tables_root, url_path
from rest_pipeline.core.store.records import (
    SCHEMA_VERSION,
    BCPolicyLink,
    BestOfN,
    BranchRecord,
    ControlRecord,
    CorpusRecord,
    DecodingEval,
    Evaluation,
    HumanEval,
    OnlineRL,
    RatingRound,
    Record,
    Report,
    RewardModelLink,
    RewardModelRecord,
    ShardCost,
    SliceRecord,
    StepRecord,
)
from rest_pipeline.spec import ExperimentSpec, SpecError, find_spec, load_spec

R = TypeVar("R", bound=Record)

BASE = "base"
FINAL = "final"
CONTROL = "control"
ONLINE_RL = "ppo"  # checkpoints of the online-RL baseline: ppo/c<candidates sampled so far>


def is_online_rl(policy: str) -> bool:
    return re.fullmatch(rf"{ONLINE_RL}/c\d+", policy) is not None


class StaleRecordError(RuntimeError):
    """A record written by another version of rest-pipeline: re-materialize the asset that writes it."""


class BranchError(RuntimeError):
    """A branch's parent changed since the branch was made, or a write would touch the parent."""


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


@dataclass(frozen=True)
class ExperimentStore(CandidateTables):
    """An experiment's folder. A branch store also holds its `parent`'s store: everything up to grow
    `branch_grow` (corpus, tokenizer, BC policy, reward model, those grows' candidates and scores, and
    the Improve steps of earlier grows) is read from the parent in place, never copied or written."""

    root: Path
    parent: ExperimentStore | None = None
    branch_grow: int = 0

    @classmethod
    def open(cls, experiment: str, home_dir: Path | None = None) -> ExperimentStore:
        """The store of `experiment` under `home_dir` (default: $REST_HOME or ./data), as its spec says
        (a branch's store comes with its parent's); a folder without a spec is read as it is."""
        try:
            spec = load_spec(find_spec(experiment))
        except SpecError:
            return cls(Path(home_dir or home()).resolve() / "experiments" / experiment)
        return cls.for_spec(spec, home_dir)

    @classmethod
    def for_spec(cls, spec: ExperimentSpec, home_dir: Path | None = None) -> ExperimentStore:
        base = Path(home_dir or home()).resolve() / "experiments"
        if spec.branch is None:
            return cls(base / spec.name)
        return cls(base / spec.name, cls(base / spec.branch.parent), spec.branch.grow)

    def _from_parent(self, grow: int, inclusive: bool) -> bool:
        """Whether grow `grow`'s artifacts of this kind belong to the parent."""
        return self.parent is not None and (grow < self.branch_grow or (inclusive and grow == self.branch_grow))

    @property
    def experiment(self) -> str:
        return self.root.name

    # -- paths relative to the experiment folder ------------------------------------------------
    def rel(self, path: Path | str) -> str:
        """A path as records store it: relative to the experiment folder (a branch's parent is a sibling)."""
        if is_remote(path) or is_url(str(path)):
            return str(path)  # a table on object storage: its URL
        p = Path(path)
        return Path(os.path.relpath(p, self.root)).as_posix() if p.is_absolute() else p.as_posix()

    def resolve(self, rel: str) -> Path:
        return url_path(rel) if is_url(rel) else self.root / rel

    # -- folders of the stages ------------------------------------------------------------------
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

    def link_bc_policy(self, link: BCPolicyLink) -> Path:
        return self._write(self.root / "bc_policy.json", link)

    def bc_policy_link(self) -> BCPolicyLink | None:
        """How the BC policy was trained (key, stop rule); None for stores made before BC was shared."""
        if self.parent:
            return self.parent.bc_policy_link()
        path = self.root / "bc_policy.json"
        return self._read(path, BCPolicyLink, "the BC policy link") if path.is_file() else None

    @property
    def base_policy_dir(self) -> Path:
        return self.parent.base_policy_dir if self.parent else self.root / "policies" / "base"

    @property
    def reward_model_dir(self) -> Path:
        """The learned reward this experiment uses: the shared model it links to (an older store's own
        `reward_model/` folder when it has no link)."""
        if self.parent:
            return self.parent.reward_model_dir
        link = self.root / "reward_model.json"
        if link.is_file():
            return Path(os.path.normpath(self.resolve(self._read(link, RewardModelLink, "the reward model link").path)))
        return self.root / "reward_model"

    @property
    def reward_models_root(self) -> Path:
        """Reward models by content address, shared by every experiment of this home."""
        return self.root.parent.parent / "reward_models"

    def link_reward_model(self, key: str, path: Path) -> Path:
        return self._write(self.root / "reward_model.json", RewardModelLink(key=key, path=self.rel(path)))

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

    def candidate_files(self) -> list[Path]:
        own = super().candidate_files()
        if self.parent is None:
            return own
        return [p for p in self.parent.candidate_files() if _grow_of(p) <= self.branch_grow] + [
            p for p in own if _grow_of(p) > self.branch_grow
        ]

    def score_files(self) -> list[Path]:
        own = super().score_files()
        if self.parent is None:
            return own
        return [p for p in self.parent.score_files() if _grow_of(p) <= self.branch_grow] + [
            p for p in own if _grow_of(p) > self.branch_grow
        ]

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

    def write_shard_cost(self, record: ShardCost) -> Path:
        return self._write(self._cost_file(record.grow, record.shard, record.stage), record)

    def shard_cost(self, grow: int, shard: int, stage: str) -> ShardCost | None:
        path = self._cost_file(grow, shard, stage)
        return self._read(path, ShardCost, "a shard's cost") if path.is_file() else None

    def drop_shard_cost(self, grow: int, shard: int, stage: str) -> None:
        """Forget a cost that no longer describes the shard (its candidates were re-sampled)."""
        path = self._cost_file(grow, shard, stage)
        self.check_writable(path)
        path.unlink(missing_ok=True)

    def shard_costs(self, grow: int) -> list[ShardCost]:
        """The sampling and scoring costs recorded for a grow's shards (none for stores made before them)."""
        folder = self._cost_file(grow, 0, "sample").parent
        return [self._read(f, ShardCost, "a shard's cost") for f in sorted(folder.glob("*.json"))]

    @property
    def online_rl_dir(self) -> Path:
        """PPO's resume point, its checkpoints at compute marks and its record."""
        return self.root / "online_rl"

    def write_online_rl(self, record: OnlineRL) -> Path:
        return self._write(self.online_rl_dir / "online_rl.json", record)

    def online_rl(self) -> OnlineRL:
        return self._read(self.online_rl_dir / "online_rl.json", OnlineRL, "the online-RL baseline (online_rl)")

    def has_online_rl(self) -> bool:
        return self._reusable(self.online_rl_dir / "online_rl.json", OnlineRL) is not None

    @property
    def human_dir(self) -> Path:
        """Rating rounds, ratings and their analysis (human_eval)."""
        return self.root / "human_eval"

    def rating_round_dir(self, round_id: str) -> Path:
        return self.human_dir / "rounds" / round_id

    def ratings_dir(self, round_id: str) -> Path:
        return self.human_dir / "ratings" / f"round={round_id}"

    # -- record files (the only place their names are spelled) ----------------------------------
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

    def _branch_file(self) -> Path:
        return self.root / "branch.json"

    @property
    def report_markdown(self) -> Path:
        return self.report_dir / "report.md"

    # -- typed records ------------------------------------------------------------------------
    def _write(self, path: Path, record: Record) -> Path:
        self.check_writable(path)
        with atomic_path(path) as tmp:
            tmp.write_text(record.model_dump_json(indent=1))
        return path

    def _read(self, path: Path, cls: type[R], what: str) -> R:
        """A record, validated; a record of another schema version is refused, never misread."""
        if not path.is_file():
            raise FileNotFoundError(f"{path}: {what} not materialized")
        data = json.loads(path.read_text())
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != SCHEMA_VERSION:
            raise StaleRecordError(
                f"{path}: written by another rest-pipeline version (record schema {version}, this version "
                f"reads {SCHEMA_VERSION}); re-materialize {what} (`./scripts/rest main {self.experiment}` "
                "does: training resumes from its saved results, evaluations are recomputed)"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise StaleRecordError(f"{path}: not a valid {cls.__name__} record ({e.error_count()} errors): {e}") from e

    def _adopt(self, record: R) -> R:
        """A parent's record with its paths re-rooted to this folder (records hold relative paths)."""

        def move(p: str | None) -> str | None:
            return None if p is None else self.rel(self.parent.resolve(p))

        if isinstance(record, StepRecord):
            names = ("checkpoint", "trained_checkpoint", "parent_checkpoint", "grow_policy", "slice_path")
            return record.model_copy(update={n: move(getattr(record, n)) for n in names})
        if isinstance(record, Evaluation):
            splits = {k: v.model_copy(update={"hypotheses": move(v.hypotheses)}) for k, v in record.splits.items()}
            return record.model_copy(update={"checkpoint": move(record.checkpoint), "splits": splits})
        if isinstance(record, DecodingEval):
            rows = [r.model_copy(update={"hypotheses": move(r.hypotheses)}) for r in record.rows]
            return record.model_copy(update={"checkpoint": move(record.checkpoint), "rows": rows})
        if isinstance(record, SliceRecord):
            return record.model_copy(update={"path": move(record.path)})
        if isinstance(record, CorpusRecord):
            splits = {k: v.model_copy(update={"file": move(v.file)}) for k, v in record.splits.items()}
            return record.model_copy(update={"splits": splits})
        return record

    def _reusable(self, path: Path, cls: type[R]) -> R | None:
        """A record to reuse if it is there and current; a missing, stale or broken one is simply redone."""
        try:
            return self._read(path, cls, cls.__name__)
        except (FileNotFoundError, StaleRecordError, json.JSONDecodeError):
            return None

    def write_corpus(self, record: CorpusRecord) -> Path:
        return self._write(self._corpus_file(), record)

    def corpus(self) -> CorpusRecord:
        if self.parent is not None:
            return self._adopt(self.parent.corpus())
        return self._read(self._corpus_file(), CorpusRecord, f"the corpus ({self.experiment}/corpus)")

    def split(self, role: str) -> pd.DataFrame:
        path = self.split_file(role)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: corpus split '{role}' not materialized (asset {self.experiment}/corpus)")
        return pd.read_parquet(path)

    def reward_model(self) -> RewardModelRecord:
        """The learned reward's report, as its training wrote it beside the checkpoint."""
        path = self.reward_model_dir / "rest_reward.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the learned reward model is not trained (asset reward_model)")
        report = {k: v for k, v in json.loads(path.read_text())["report"].items() if k != "path"}
        return RewardModelRecord.model_validate(report)

    def write_decoding_eval(self, record: DecodingEval) -> Path:
        return self._write(self._decoding_eval_file(), record)

    def has_decoding_eval(self) -> bool:
        return self._decoding_eval_file().is_file()

    def decoding_eval(self) -> DecodingEval:
        if self.parent is not None:
            return self._adopt(self.parent.decoding_eval())
        return self._read(self._decoding_eval_file(), DecodingEval, "the BC policy's evaluation (base_policy_eval)")

    def reusable_decoding_eval(self, key: str) -> DecodingEval | None:
        rec = self._reusable(self._decoding_eval_file(), DecodingEval)
        return rec if rec is not None and rec.key == key else None

    def write_evaluation(self, record: Evaluation) -> Path:
        return self._write(self._evaluation_file(record.policy), record)

    def evaluation(self, policy: str) -> Evaluation:
        policy = self.canonical(policy)
        if self.parent is not None and policy != CONTROL and not is_online_rl(policy):
            grow, _ = self._named(policy)
            if grow == 0 or self._from_parent(grow, inclusive=False):
                return self._adopt(self.parent.evaluation(policy))
        return self._read(self._evaluation_file(policy), Evaluation, f"the evaluation of policy {policy}")

    def reusable_evaluation(self, policy: str, key: str) -> Evaluation | None:
        rec = self._reusable(self._evaluation_file(policy), Evaluation)
        return rec if rec is not None and rec.key == key else None

    def write_rating_round(self, record: RatingRound) -> Path:
        return self._write(self.rating_round_dir(record.round_id) / "round.json", record)

    def rating_round(self, round_id: str) -> RatingRound:
        return self._read(self.rating_round_dir(round_id) / "round.json", RatingRound, f"rating round {round_id}")

    def rating_rounds(self) -> list[RatingRound]:
        return [self.rating_round(p.parent.name) for p in sorted(self.human_dir.glob("rounds/*/round.json"))]

    def write_human_eval(self, record: HumanEval) -> Path:
        return self._write(self.human_dir / "human_eval.json", record)

    def human_eval(self) -> HumanEval:
        return self._read(self.human_dir / "human_eval.json", HumanEval, "the human evaluation (human_eval)")

    def has_human_eval(self) -> bool:
        return self._reusable(self.human_dir / "human_eval.json", HumanEval) is not None

    def write_slice(self, record: SliceRecord, rows: pd.DataFrame) -> SliceRecord:
        """The slice's rows and its record; `record.path` is filled in here."""
        path = self.slice_dir(record.grow, record.step) / "part.parquet"
        self.check_writable(path)
        with atomic_path(path) as tmp:
            rows.assign(step=record.step).to_parquet(tmp, index=False)
        record = record.model_copy(update={"path": self.rel(path)})
        self._write(self._slice_file(record.grow, record.step), record)
        return record

    def slice(self, grow: int, step: int) -> SliceRecord:
        if self._from_parent(grow, inclusive=False):
            return self._adopt(self.parent.slice(grow, step))
        return self._read(self._slice_file(grow, step), SliceRecord, f"the slice of grow_{grow}/improve_{step}")

    def slice_rows(self, grow: int, step: int) -> pd.DataFrame:
        return read_table(self.resolve(self.slice(grow, step).path))

    def write_step(self, record: StepRecord) -> Path:
        """The one writer of a checkpoint's lineage: the `lineage` view is read from these records."""
        return self._write(self._step_file(record.grow, record.step), record)

    def step(self, grow: int, step: int) -> StepRecord:
        if self._from_parent(grow, inclusive=False):
            return self._adopt(self.parent.step(grow, step))
        return self._read(self._step_file(grow, step), StepRecord, f"the Improve step grow_{grow}/improve_{step}")

    def _step_names(self) -> list[tuple[int, int]]:
        """(grow, step) of every step record this store reads: its own and, for a branch, the parent's before it."""
        own = [
            parse_policy_name(f"{p.parent.parent.name}/{p.parent.name}") or (0, 0)
            for p in self.root.glob("policies/grow_*/improve_*/step.json")
        ]
        if self.parent is None:
            return sorted(own)
        inherited = [(g, i) for g, i in self.parent._step_names() if self._from_parent(g, inclusive=False)]
        return sorted(inherited + [(g, i) for g, i in own if not self._from_parent(g, inclusive=False)])

    def steps(self) -> list[StepRecord]:
        """Every step record, in (grow, step) order (a branch's lineage crosses into its parent's)."""
        return [self.step(g, i) for g, i in self._step_names()]

    def write_best_of_n(self, record: BestOfN) -> Path:
        return self._write(self._best_of_n_file(), record)

    def best_of_n(self) -> BestOfN:
        return self._read(self._best_of_n_file(), BestOfN, "Best-of-N (best_of_n)")

    def reusable_best_of_n(self, key: str) -> BestOfN | None:
        rec = self._reusable(self._best_of_n_file(), BestOfN)
        return rec if rec is not None and rec.key == key else None

    def write_control(self, record: ControlRecord) -> Path:
        return self._write(self._control_file(), record)

    def control(self) -> ControlRecord | None:
        """The originals-only control, or None when it never ran."""
        path = self._control_file()
        return self._read(path, ControlRecord, "the control (control)") if path.is_file() else None

    def write_report(self, record: Report, markdown: str) -> Path:
        with atomic_path(self.report_markdown) as tmp:
            tmp.write_text(markdown)
        self._write(self._report_file(), record)
        return self.report_markdown

    def report(self) -> Report:
        return self._read(self._report_file(), Report, "the report (report)")

    def has_report(self) -> bool:
        return self._report_file().is_file()

    def cached_valid_reward(self, key: str) -> float | None:
        path = self._valid_rewards_file()
        value = json.loads(path.read_text()).get(key) if path.is_file() else None
        if value is None and self.parent is not None:
            return self.parent.cached_valid_reward(key)  # read only: the parent's cache is never written
        return value

    def remember_valid_reward(self, key: str, value: float) -> None:
        path = self._valid_rewards_file()
        cache = json.loads(path.read_text()) if path.is_file() else {}
        cache[key] = value
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(cache, indent=1))

    # -- the branch point -------------------------------------------------------------------------
    def parent_fingerprint(self) -> dict[str, str]:
        """Content hashes of everything a branch reads from its parent, by path relative to the branch."""
        if self.parent is None:
            raise BranchError(f"{self.root}: not a branch")
        p = self.parent
        files = [p.split_file(r) for r in ("train", "valid", "test")]
        files += sorted(f for f in p.tokenizer_dir.glob("*") if f.is_file())
        files += [p.base_policy_dir / "model.safetensors", p._evaluation_file(BASE)]
        files += sorted(f for f in (p.reward_model_dir / "checkpoints").glob("*.ckpt"))
        files += [f for f in p.candidate_files() + p.score_files() if _grow_of(f) <= self.branch_grow]
        files += [p._step_file(g, i) for g, i in p._step_names() if g < self.branch_grow]
        missing = [self.rel(f) for f in files if not f.is_file()]
        if missing:
            raise BranchError(
                f"{self.experiment} branches from {p.experiment} at grow_{self.branch_grow}, but the parent does "
                f"not hold {', '.join(missing[:5])}: materialize it first "
                f"(`./scripts/rest main {p.experiment} --until grow_{self.branch_grow}/rewards`)"
            )
        return {self.rel(f): hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in files}

    def pin_parent(self) -> BranchRecord:
        """Record what the branch reads from its parent; an existing pin must still hold."""
        if self._branch_file().is_file():
            return self.verify_parent()
        record = BranchRecord(
            parent=self.parent.experiment if self.parent else "",
            at_grow=self.branch_grow,
            hashes=self.parent_fingerprint(),
        )
        self._write(self._branch_file(), record)
        return record

    def verify_parent(self) -> BranchRecord:
        """The branch's pin, after checking that the parent still holds exactly what was pinned."""
        pin = self._read(self._branch_file(), BranchRecord, f"the branch point of {self.experiment} (branch_point)")
        now = self.parent_fingerprint()
        changed = sorted(k for k in pin.hashes.keys() & now.keys() if pin.hashes[k] != now[k])
        gone, new = sorted(pin.hashes.keys() - now.keys()), sorted(now.keys() - pin.hashes.keys())
        if changed or gone or new:
            parts = [f"changed: {', '.join(changed)}" if changed else "", f"gone: {', '.join(gone)}" if gone else ""]
            parts.append(f"new: {', '.join(new)}" if new else "")
            raise BranchError(
                f"{self.experiment}: its parent {pin.parent} changed since the branch was made at "
                f"grow_{pin.at_grow} ({'; '.join(x for x in parts if x)}). The branch's results no longer follow "
                f"from the parent; delete {self.root} to branch again from the parent as it is now"
            )
        return pin

    # -- policies and their lineage -----------------------------------------------------------
    def final_step(self) -> tuple[int, int]:
        """(grow, step) of the last step the store holds: its checkpoint is what the loop handed on."""
        found = self._step_names()
        return found[-1] if found else (0, 0)

    def canonical(self, policy: str) -> str:
        """'final' -> the name of the step it stands for; other names unchanged (validated)."""
        if policy == CONTROL or is_online_rl(policy):
            return policy
        return policy_name(*self._named(policy))

    def _named(self, policy: str) -> tuple[int, int]:
        parsed = parse_policy_name(policy)
        return self.final_step() if parsed is None else parsed

    def policy(self, name: str) -> Path:
        """The checkpoint folder of a policy name: base, grow_<g>/improve_<i>, final or control."""
        if name == CONTROL:
            rec = self.control()
            if rec is None:
                raise FileNotFoundError(f"{self._control_file()}: the control has not run (asset control)")
            return self.resolve(rec.checkpoint)
        if is_online_rl(name):
            marks = {m.name: m for m in self.online_rl().marks}
            if name not in marks:
                raise FileNotFoundError(f"{self.online_rl_dir}: no PPO checkpoint {name} (has {', '.join(marks)})")
            return self.resolve(marks[name].checkpoint)
        grow, step = self._named(name)
        if grow == 0:
            return self.base_policy_dir
        return self.resolve(self.step(grow, step).checkpoint)

    def lineage(self, grow: int, step: int) -> list[StepRecord]:
        """The step records from (grow, step) back to the BC policy, newest first (follows `parent`)."""
        chain: list[StepRecord] = []
        name = policy_name(grow, step)
        while name != BASE:
            rec = self.step(*self._named(name))
            chain.append(rec)
            name = rec.parent
        return chain

    def readable_dirs(self) -> list[Path]:
        """The folders SQL from users may read: this experiment's (and its tables' URL when they live on
        object storage) and, for a branch, its parent's."""
        own = [self.root, *([self.tables_root] if is_remote(self.tables_root) else [])]
        return [*own, *(self.parent.readable_dirs() if self.parent else [])]

    def connect(self, read_only: bool = True) -> duckdb.DuckDBPyConnection:
        """DuckDB over the candidate tables, plus `lineage`: one row per step record (history left out).
        Locked down (core/store/candidates.py `lock_down`) unless a caller asks for read_only=False."""
        rows = [r.model_dump(exclude={"history", "hyperparameters"}) for r in self.steps()]
        con = super().connect()
        ratings = sorted(self.human_dir.glob("ratings/round=*/rater=*/*.parquet"))
        if ratings:  # people's ratings (rest rate): one file per rated item
            con.read_parquet([str(p) for p in ratings], hive_partitioning=False).create_view("ratings")
        if rows:
            con.register("lineage_records", pd.DataFrame(rows))
            con.execute("CREATE VIEW lineage AS SELECT * FROM lineage_records")
        return lock_down(con, self.readable_dirs()) if read_only else con

    def user_query(self, sql: str) -> pd.DataFrame:
        """SQL from a person (`rest query`): exactly one read-only statement, on a locked-down connection."""
        return self.connect(read_only=True).execute(read_only_statement(sql)).df()
