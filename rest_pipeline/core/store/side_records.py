"""The records of the jobs beside ReST's loop, and their reads and writes: what each Grow shard cost
(compute accounting), the online-RL baseline, and human rating rounds and their analysis."""

from __future__ import annotations

from typing import Any

from rest_pipeline.core.store.keeper import RecordKeeper
from rest_pipeline.core.store.records import Record, _Frozen

# -- human ratings ------------------------------------------------------------------------------


class RatingRound(Record):
    """A set of test items rated side by side: BC and the chosen checkpoints, in a per-item order the
    rater never sees. The items (sources, each system's output and reward) are a Parquet file beside it."""

    ADDRESS = ("round_id",)
    WHAT = "rating round {round_id}"
    round_id: str
    split: str
    systems: list[str]  # policy names; the first is the BC policy ("base")
    checkpoints: list[str]  # their checkpoint folders, relative to the experiment
    items: int
    seed: int
    stratify: str  # random | disagree (reward model and sentence BLEU prefer different systems)
    reward: str  # the training reward whose per-item scores the agreement analysis uses
    items_file: str


class SystemRating(_Frozen):
    system: str
    ratings: int
    items: int
    mean: float


class HumanDelta(_Frozen):
    """A checkpoint against BC on the items both were rated on: the paper's "human evaluation difference"."""

    system: str
    items: int
    human_delta: float  # mean over items of (checkpoint - BC) rating, 0-6 scale
    low: float  # 95 % bootstrap interval over items
    high: float
    reward_delta: float  # the reward model's difference on the same items, [0, 1] scale


class HumanEval(Record):
    WHAT = "the human evaluation (human_eval)"
    rounds: list[str]
    raters: list[str]
    ratings: int
    systems: list[SystemRating]
    deltas: list[HumanDelta]
    reward: str
    kendall_tau_human_vs_reward: float | None  # mean per (rater, item) over items with >= 2 distinct ratings
    reward_prefers_lower_rated: float | None  # share of pairs humans ranked where the reward model ranks opposite
    pairs_compared: int
    inter_rater_kendall_tau: float | None  # mean over pairs of raters, on the (item, system) both rated
    inter_rater_exact: float | None  # share of those ratings that are equal
    inter_rater_items: int
    plot: str | None


# -- the online-RL baseline and compute accounting ------------------------------------------------


class ComputeUsed(_Frozen):
    """Compute a policy cost so far, counted alike for ReST and PPO (core/online_rl/rest_compute.py)."""

    candidates: int  # sequences sampled
    reward_calls: int  # reward-model evaluations after de-duplication and the score cache
    target_tokens: int  # target tokens in training updates, every epoch counted
    seconds: float  # wall time of sampling, scoring and training on the machine that ran it


class OnlineRLMark(_Frozen):
    name: str  # ppo/c<candidates>
    checkpoint: str
    parent: str  # the policy PPO started from (base)
    reward_version: str
    compute: ComputeUsed
    iteration: int
    mean_sample_reward: float
    kl_to_bc: float


PHASES = ("sample", "score", "update")  # how a PPO iteration's wall seconds are split (OnlineRL.phase_seconds)


class OnlineRL(Record):
    WHAT = "the online-RL baseline (online_rl)"
    algorithm: str  # ppo
    settings: dict[str, Any]
    advantage: str  # how advantages were estimated, in words
    iterations: int
    marks: list[OnlineRLMark]
    history: list[dict[str, Any]]
    # Where PPO's seconds went, summed over the iterations timed by phase: {"iterations", "sample",
    # "score", "update"} (empty for runs made before phases were timed).
    phase_seconds: dict[str, float] = {}


class ShardCost(Record):
    """What sampling or scoring one Grow shard took (compute accounting of ReST)."""

    ADDRESS = ("grow", "shard", "stage")
    WHAT = "a shard's cost"
    grow: int
    shard: int
    stage: str  # sample | score
    seconds: float
    items: int  # candidates sampled, or reward-model inputs newly scored (after dedup and the cache)
    # sample: the engine that drew them (engine, version, the weights it ran: converted or merged), for lineage
    engine: dict[str, str] = {}


class ProbeRow(_Frozen):
    """One damage family under one reward model, beside chrF and sentence BLEU (core/rewards/probes.py)."""

    family: str
    made_by: str
    applied: int
    skipped: int
    prefer_or_tie: dict[str, float]  # judge -> share of sentences where the damaged variant scores >= the good one
    mean_drop: dict[str, float]  # judge -> mean reward the damage costs
    drop_interval: dict[str, tuple[float, float]]  # 95 % bootstrap interval of that mean


class RewardProbe(Record):
    """A reward model under test: its verdict per damage family, and the families that fail the spec's bar."""

    ADDRESS = ("reward",)
    WHAT = "the probes of reward {reward} (rest check-reward)"
    reward: str
    reward_version: str
    key: str  # the outputs probed, the reward's version and the seed: a probe is reused while they hold
    hypotheses: str  # what the good hypotheses are, e.g. "BC greedy on valid[:300]"
    sentences: int
    max_prefer_or_tie: float
    failing: list[str]  # checked families whose prefer-or-tie share exceeds the bar
    rows: list[ProbeRow]


class SideRecords(RecordKeeper):
    """Shard costs, the online-RL record, rating rounds and the human evaluation of one experiment."""

    def drop_shard_cost(self, grow: int, shard: int, stage: str) -> None:
        """Forget a cost that no longer describes the shard (its candidates were re-sampled)."""
        path = self._cost_file(grow, shard, stage)
        self.check_writable(path)
        path.unlink(missing_ok=True)

    def shard_costs(self, grow: int) -> list[ShardCost]:
        """The sampling and scoring costs recorded for a grow's shards (none for stores made before them)."""
        folder = self._cost_file(grow, 0, "sample").parent
        return [self._read(f, ShardCost, "a shard's cost") for f in sorted(folder.glob("*.json"))]

    def sampling_engines(self, grow: int) -> list[dict[str, str]]:
        """The distinct engines that sampled a grow's shards, as recorded with each shard's cost."""
        distinct: list[dict[str, str]] = []
        for cost in self.shard_costs(grow):
            if cost.stage == "sample" and cost.engine and cost.engine not in distinct:
                distinct.append(dict(cost.engine))
        return distinct

    def rating_rounds(self) -> list[RatingRound]:
        return [
            self.get(RatingRound, round_id=p.parent.name) for p in sorted(self.human_dir.glob("rounds/*/round.json"))
        ]
