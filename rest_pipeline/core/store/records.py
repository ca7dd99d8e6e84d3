"""Typed, frozen records of everything an experiment stores besides tensors and tables.

Each record is a pydantic model that the `ExperimentStore` alone writes (atomically) and
reads (validated). Paths inside a record are relative to the experiment folder, so a results
folder can be moved, copied or published and still be read. `schema_version` changes whenever
a record's shape does; the store refuses records of another version with a message that says
which asset to re-materialize, instead of misreading them.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from rest_pipeline.spec import DecodingSpec

SCHEMA_VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Record(_Frozen):
    """A top-level record: one JSON file, versioned. ADDRESS names the fields that place it in the store
    (its file comes from the layout, `ExperimentLayout.record_file`); WHAT says what it is in errors."""

    ADDRESS: ClassVar[tuple[str, ...]] = ()
    WHAT: ClassVar[str] = ""
    schema_version: int = SCHEMA_VERSION


# -- corpus and reward model --------------------------------------------------------------------


class SplitRecord(_Frozen):
    role: str  # train | valid | test
    name: str  # the dataset's split name, e.g. test_2016_flickr
    file: str  # relative path of the Parquet split
    rows: int
    skipped: dict[str, int]
    source_file: str  # file names of the verified raw files (where they live depends on the machine)
    target_file: str


class CorpusRecord(Record):
    WHAT = "the corpus (asset corpus)"
    dataset: str  # a registered dataset's name, or 'files' for the user's own
    splits: dict[str, SplitRecord]
    # The user's data files (data.files) as the spec names them -> sha256 at first read (a folder: of its
    # files). A file that changes later is refused by name, never mixed with what was made from it.
    files: dict[str, str] = {}


class RewardModelRecord(Record):
    """The learned reward's held-out quality, as its training reported it."""

    kendall_tau: float
    pearson: float
    valid_kendall_tau: float
    train_rows: int
    valid_rows: int
    test_rows: int
    epochs: int
    seconds: float
    normalisation: str
    repeat_raises_score_fraction: float


class RewardModelLink(Record):
    """Which shared, content-addressed reward model an experiment trains and scores with."""

    key: str
    path: str  # relative to the experiment folder: <home>/reward_models/<key>


class BCPolicyLink(Record):
    """Which shared, content-addressed BC training an experiment's base policy is, and how it ended:
    stopped by its validation rule or counts (reproducible), or cut by the opt-in clock (not)."""

    key: str  # content address: corpus, tokenizer, policy, bc settings, seed, precision
    path: str  # relative to the experiment folder: <home>/bc_policies/<key>
    steps: int
    epochs: float
    stopped_because: str
    clock_cut: bool
    precision: str
    train_seconds: float
    keep_best_by: str
    best_metric: float
    plateau: float | None  # spread (max - min) of the selection metric over the last `patience` validations
    pretrained: str | None = None  # the folder BC started from (policy.pretrained_path), if any
    pretrained_hash: str | None = None  # its weights hash (part of the key)


class BranchRecord(Record):
    """What a branch read from its parent when it was made: content hashes by relative path."""

    parent: str
    at_grow: int
    hashes: dict[str, str]


# -- evaluations ----------------------------------------------------------------------------------


class ScoreSignature(_Frozen):
    """What produced a stored score (sacrebleu's habit, for every number): the decoding or sampling
    that made the outputs, sacrebleu's BLEU and chrF signatures, and each reward's name and version.
    None in records written before scores carried it."""

    decoding: str
    bleu: str | None = None
    chrf: str | None = None
    rewards: dict[str, str] = {}  # reward name -> version


class EvalRow(_Frozen):
    """BLEU/chrF of one split under one decoding setting, with the settings that produced it."""

    split: str
    decoding: DecodingSpec
    bleu: float
    chrf: float
    sentences: int
    seconds: float
    bleu_signature: str
    hypotheses: str  # relative path of the Parquet with every output
    chrf_signature: str | None = None


class DecodingEval(Record):
    """The BC policy under each decoding setting of the spec (greedy, beam, ...)."""

    WHAT = "the BC policy's evaluation (base_policy_eval)"
    key: str
    checkpoint: str
    rows: list[EvalRow]


class SplitScores(_Frozen):
    sentences: int
    bleu: float
    chrf: float
    rewards: dict[str, float]  # mean reward per reward model, on [0, 1]
    distinct_1: float
    distinct_2: float
    mean_length: float
    hypotheses: str  # relative path; per-sentence rewards are columns reward_<name>

    def reward(self, name: str) -> float:
        if name not in self.rewards:
            raise KeyError(f"no '{name}' reward in this evaluation (has {sorted(self.rewards)})")
        return self.rewards[name]


class Diversity(_Frozen):
    samples_per_source: int
    temperature: float
    sources: int
    distinct_samples_per_source: float
    distinct_2_of_samples: float


class Evaluation(Record):
    """A checkpoint judged the way ReST is judged: rewards, BLEU, chrF, diversity of greedy outputs."""

    ADDRESS = ("policy",)
    WHAT = "the evaluation of policy {policy}"
    key: str
    policy: str  # policy name: base, grow_<g>/improve_<i>, control
    checkpoint: str
    decoding: DecodingSpec
    splits: dict[str, SplitScores]
    diversity: Diversity | None = None
    inherited_from: str | None = None  # a step without new weights repeats its parent's evaluation
    signature: ScoreSignature | None = None


# -- Improve --------------------------------------------------------------------------------------


class SliceRecord(Record):
    ADDRESS = ("grow", "step")
    WHAT = "the slice of grow_{grow}/improve_{step}"
    grow: int
    step: int
    rule: str  # threshold | percentile | interpolated
    parameter: float  # tau, percentile p, or gamma
    reward: str
    candidates: int  # |D_g|
    mean_reward: float  # mean reward over D_g
    kept: int  # rows in the slice (filtered + mixed-in originals)
    kept_samples: int
    kept_fraction: float  # kept samples / all samples
    kept_originals: int  # reference pairs in the slice, whether they cleared the bar or were mixed in
    mean_reward_kept: float | None
    sources: int
    sources_covered: int  # sources with at least one sample that cleared the bar
    skip_reason: str | None  # why the step should not train (then the slice is empty)
    path: str  # relative path of the slice's Parquet
    detected: dict[str, int] = {}  # kept samples that look damaged, per cheap detector (improve/filtering.py)

    @property
    def coverage(self) -> float:
        return round(self.sources_covered / max(self.sources, 1), 4)


class StepRecord(Record):
    """The lineage of one Improve checkpoint: everything that went into it."""

    ADDRESS = ("grow", "step")
    WHAT = "the Improve step grow_{grow}/improve_{step}"
    experiment: str
    grow: int
    step: int
    status: str  # improved | not_improved | skipped
    skip_reason: str | None
    checkpoint: str  # the policy this step hands on (its own best, or its parent's if it did not improve)
    checkpoint_hash: str
    trained_checkpoint: str | None  # what training produced, even when it did not beat the parent
    parent: str  # 'base' or 'grow_G/improve_I'
    parent_checkpoint: str
    parent_hash: str
    grow_policy: str  # checkpoint that sampled grow g
    grow_decoding: str  # sampling settings of grow g
    slice_rule: str
    slice_parameter: float
    slice_kept: int
    slice_kept_fraction: float
    slice_path: str
    slice_hash: str
    reward_model: str
    reward_version: str
    corpus_hash: str
    loss: str
    lr: float
    hyperparameters: dict[str, Any]
    parent_valid_reward: float
    valid_reward: float
    best_trained_valid_reward: float | None = None
    train_seconds: float = 0.0
    train_steps: int = 0
    history: list[dict[str, Any]] = []
    # policy.lora: what the trained checkpoint's adapter applies to (store-relative path and weights
    # hash of the parent) and the adapter's own hash; None for a full fine-tune.
    lora: dict[str, Any] | None = None
    validation_signature: ScoreSignature | None = None  # what valid_reward and parent_valid_reward are

    @property
    def name(self) -> str:
        return f"grow_{self.grow}/improve_{self.step}"


class ControlStep(_Frozen):
    mirrors: str  # the ReST step whose rate and budget this step copies, e.g. grow_1/improve_3
    grow: int
    lr: float
    pairs: int  # original pairs of that grow's sources
    status: str  # improved | not_improved
    parent_valid_reward: float
    valid_reward: float
    train_steps: int
    checkpoint: str  # what this step hands on


class ControlRecord(Record):
    """BC fine-tuned step for step like the final ReST chain, on the original pairs only."""

    WHAT = "the control (control)"
    steps: list[ControlStep]
    checkpoint: str
    rest_minus_control: dict[str, dict[str, float]]  # per split, per metric (bleu, chrf, reward_<name>)
    control_minus_bc: dict[str, dict[str, float]]
    validation_signature: ScoreSignature | None = None  # what the steps' valid rewards are


class BestOfNCurve(_Frozen):
    checkpoint: str
    curve: dict[int, float]  # N -> mean over sources of the best reward among N samples


class NMatch(_Frozen):
    rest_n: int
    rest_reward: float
    bc_n_reached: int | None  # the largest N at which BC does no better


class BestOfN(Record):
    WHAT = "Best-of-N (best_of_n)"
    key: str
    reward: str
    sources: int
    ns: list[int]
    curves: dict[str, BestOfNCurve]  # bc, rest
    matching: list[NMatch]
    rest_small_n_reaches_bc_larger_n: bool
    signature: ScoreSignature | None = None  # the sampling and the reward version of the curves


class Finding(_Frozen):
    finding: str
    holds: bool
    evidence: str


class Report(Record):
    WHAT = "the report (report)"
    checkpoints: list[dict[str, Any]]  # table rows; their columns depend on the reward names
    table1: list[dict[str, Any]]
    best_of_n: BestOfN
    control: ControlRecord | None
    significance: list[dict[str, Any]]
    findings: list[Finding]
    grow_samples: list[dict[str, Any]] = []  # per grow, the expected Best-of-k of its samples (report.py)
    reward_agreement: list[dict[str, Any]] = []  # per grow, the training reward's picks by the independent one
