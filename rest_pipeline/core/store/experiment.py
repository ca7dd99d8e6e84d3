"""`ExperimentStore`: the one owner of an experiment's artifacts on disk.

Every stage reads and writes through it. It is composed by job: where things live (layout.py), typed
records in and out of JSON (keeper.py), the branch point (branch.py), the side jobs' records
(side_records.py) and the candidate tables with their DuckDB views (candidates.py, queries.py); this
module adds the pipeline's records (corpus, evaluations, slices, steps, control, Best-of-N, report)
and resolves policy names to checkpoints and lineage.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from rest_pipeline.core.paths import atomic_path, home, is_remote
from rest_pipeline.core.store.branch import BranchPins
from rest_pipeline.core.store.candidates import CandidateTables, lock_down, read_only_statement
from rest_pipeline.core.store.keeper import StaleRecordError
from rest_pipeline.core.store.layout import (
    BASE,
    CONTROL,
    FINAL,
    ONLINE_RL,
    SLICE_ROW_GROUP,
    BranchError,
    is_online_rl,
    parse_policy_name,
    policy_name,
    shard_name,
)
from rest_pipeline.core.store.location import read_table
from rest_pipeline.core.store.records import (
    BCPolicyLink,
    ControlRecord,
    CorpusRecord,
    DecodingEval,
    Evaluation,
    Record,
    Report,
    RewardModelLink,
    RewardModelRecord,
    SliceRecord,
    StepRecord,
)
from rest_pipeline.core.store.side_records import OnlineRL, SideRecords
from rest_pipeline.spec import ExperimentSpec, SpecError, find_spec, load_spec

__all__ = [  # the policy names and errors callers import from here
    "BASE", "CONTROL", "FINAL", "ONLINE_RL", "BranchError", "ExperimentStore", "StaleRecordError",
    "is_online_rl", "parse_policy_name", "policy_name", "shard_name",
]  # fmt: skip


@dataclass(frozen=True)
class ExperimentStore(BranchPins, SideRecords, CandidateTables):
    """An experiment's folder. A branch store holds its `parent`'s: everything up to grow `branch_grow` (corpus,
    tokenizer, BC, reward model, candidates, scores, earlier steps) is read there, never copied or written."""

    root: Path
    parent: ExperimentStore | None = None
    branch_grow: int = 0

    @classmethod
    def open(cls, experiment: str, home_dir: Path | None = None) -> ExperimentStore:
        """The store of `experiment` under `home_dir` (default: $REST_HOME or ./data), with its parent's."""
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

    @property
    def reward_model_dir(self) -> Path:
        """The learned reward this experiment uses: the shared model it links to (or an old own folder)."""
        if self.parent:
            return self.parent.reward_model_dir
        link = self.root / "reward_model.json"
        if link.is_file():
            return Path(os.path.normpath(self.resolve(self._read(link, RewardModelLink, "the reward model link").path)))
        return self.root / "reward_model"

    def link_bc_policy(self, link: BCPolicyLink) -> Path:
        return self._write(self.root / "bc_policy.json", link)

    def bc_policy_link(self) -> BCPolicyLink | None:
        """How the BC policy was trained (key, stop rule); None for stores made before BC was shared."""
        if self.parent:
            return self.parent.bc_policy_link()
        path = self.root / "bc_policy.json"
        return self._read(path, BCPolicyLink, "the BC policy link") if path.is_file() else None

    def link_reward_model(self, key: str, path: Path) -> Path:
        return self._write(self.root / "reward_model.json", RewardModelLink(key=key, path=self.rel(path)))

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

    def write_slice(self, record: SliceRecord, rows: duckdb.DuckDBPyRelation) -> SliceRecord:
        """The slice's rows, from DuckDB straight to Parquet in row groups the trainer reads one at a time,
        and its record; `record.path` is filled in here."""
        path = self.slice_dir(record.grow, record.step) / "part.parquet"
        self.check_writable(path)
        with atomic_path(path) as tmp:
            rows.project(f"*, {int(record.step)} AS step").write_parquet(str(tmp), row_group_size=SLICE_ROW_GROUP)
        record = record.model_copy(update={"path": self.rel(path)})
        self._write(self._slice_file(record.grow, record.step), record)
        return record

    def _parent_holds(self, cls: type[Record], address: dict[str, object]) -> bool:
        """A branch reads its parent's corpus and BC evaluation, and the steps, slices and evaluations of the
        grows before its own."""
        if self.parent is None:
            return False
        if cls in (CorpusRecord, DecodingEval):
            return True
        if cls in (StepRecord, SliceRecord):
            return self._from_parent(int(address["grow"]), inclusive=False)
        policy = str(address.get("policy", ""))
        if cls is not Evaluation or policy == CONTROL or is_online_rl(policy):
            return False
        grow, _ = self._named(policy)
        return grow == 0 or self._from_parent(grow, inclusive=False)

    def _address(self, cls: type[Record], record: Record | None, **address: object) -> dict[str, object]:
        out = super()._address(cls, record, **address)
        if cls is Evaluation:  # 'final' is the step it stands for
            out["policy"] = self.canonical(str(out["policy"]))
        return out

    def slice_rows(self, grow: int, step: int) -> pd.DataFrame:
        """The slice in pandas, for people and small slices; training streams `slice_pairs`."""
        return read_table(self.resolve(self.get(SliceRecord, grow=grow, step=step).path))

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
        return [self.get(StepRecord, grow=g, step=i) for g, i in self._step_names()]

    def _readable_steps(self) -> list[StepRecord]:
        """The step records that read: a damaged one (`rest verify` names it) never blocks a query."""
        out = []
        for g, i in self._step_names():
            try:
                out.append(self.get(StepRecord, grow=g, step=i))
            except (StaleRecordError, FileNotFoundError):
                continue
        return out

    def write_report(self, record: Report, markdown: str) -> Path:
        with atomic_path(self.report_markdown) as tmp:
            tmp.write_text(markdown)
        self._write(self._report_file(), record)
        return self.report_markdown

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
            rec = self.find(ControlRecord)
            if rec is None:
                raise FileNotFoundError(f"{self._control_file()}: the control has not run (asset control)")
            return self.resolve(rec.checkpoint)
        if is_online_rl(name):
            marks = {m.name: m for m in self.get(OnlineRL).marks}
            if name not in marks:
                raise FileNotFoundError(f"{self.online_rl_dir}: no PPO checkpoint {name} (has {', '.join(marks)})")
            return self.resolve(marks[name].checkpoint)
        grow, step = self._named(name)
        if grow == 0:
            return self.base_policy_dir
        return self.resolve(self.get(StepRecord, grow=grow, step=step).checkpoint)

    def lineage(self, grow: int, step: int) -> list[StepRecord]:
        """The step records from (grow, step) back to the BC policy, newest first (follows `parent`)."""
        chain: list[StepRecord] = []
        name = policy_name(grow, step)
        while name != BASE:
            g, i = self._named(name)
            rec = self.get(StepRecord, grow=g, step=i)
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
        rows = [r.model_dump(exclude={"history", "hyperparameters"}) for r in self._readable_steps()]
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
