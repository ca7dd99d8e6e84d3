"""`reward`: the training reward model and the independent ones scored beside it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rest_pipeline.spec.base import _Strict
from rest_pipeline.spec.grow import ComputeType


class HttpRewardSpec(_Strict):
    """A reward model served apart from the policy (docs/reward_protocol.md): batched POSTs to `url`."""

    url: str  # e.g. http://127.0.0.1:8700 (the server answers GET /info and POST /score)
    batch_size: int = Field(64, ge=1, le=100_000)
    timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(3, ge=0, le=20)  # per batch, with exponential back-off from 0.5 s
    max_in_flight: int = Field(4, ge=1, le=256)  # batches posted at once
    needs_reference: bool = True  # sent the references (also part of the score cache's key)

    @model_validator(mode="after")
    def _scheme(self) -> HttpRewardSpec:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"reward.http.url must start with http:// or https://, got '{self.url}'")
        return self


PROBE_FAMILIES = (
    "repeat", "truncate", "copy_source", "drop_word", "change_number", "swap_entity", "negate", "shuffle", "empty",
    "hallucinate",
)  # fmt: skip


class RewardProbeSpec(_Strict):
    """Reward models under test (core/rewards/probes.py): damaged variants of BC's valid outputs. A family
    the reward prefers (or ties) on more than `max_prefer_or_tie` of sentences fails the check on the BC
    policy's rewards: a warning, or a block on what follows when `block`."""

    sentences: int = Field(300, ge=10)
    families: list[Literal[PROBE_FAMILIES]] = ["repeat", "truncate", "copy_source", "empty", "hallucinate"]  # type: ignore[valid-type]
    max_prefer_or_tie: float = Field(0.05, ge=0.0, le=1.0)
    block: bool = False


class RewardSpec(_Strict):
    """Which reward model trains the policy, and which others are scored alongside it."""

    # A built-in (chrf, bleu, comet, learned, http), an installed plugin, or 'package.module:factory'. A
    # reward named by import path is called by the factory's name ('factory') everywhere after loading:
    # its scores' column, slices, reports; the path itself moves to `imports`.
    model: str = "learned"
    extra: list[str] = []  # independent rewards scored too (e.g. chrf as a reward-hacking check)
    imports: dict[str, str] = {}  # name -> 'package.module:factory', filled from model and extra
    comet_path: str | None = None  # a local COMET checkpoint directory for model 'comet'
    learned_max_rows: int | None = Field(None, ge=50)  # subsample the judgements (smoke runs)
    learned_epochs: int = Field(60, ge=1)
    # How the learned reward embeds sentences, in training and scoring: COMET's torch code, or the same
    # encoder on CTranslate2 (int8 on CPU, float16 on CUDA): ~2x the sentences per second.
    engine: Literal["torch", "ctranslate2"] = "torch"
    compute_type: ComputeType = "int8"
    http: HttpRewardSpec | None = None  # the served reward, for model (or extra) 'http'
    probe: RewardProbeSpec = RewardProbeSpec()

    @model_validator(mode="before")
    @classmethod
    def _one_name_per_reward(cls, data: object) -> object:
        """Each reward gets one name, the same in the spec, the store and the reports: an import path
        'pkg.mod:factory' is called 'factory', a name the store can use as a column."""
        if not isinstance(data, dict):
            return data
        imports = dict(data.get("imports") or {})

        def named(value: object, field: str) -> object:
            if not isinstance(value, str) or ":" not in value:
                return value
            name = value.rsplit(":", 1)[1]
            if not name.isidentifier():
                raise ValueError(f"{field}: '{value}' must end in ':<factory>', a Python name")
            if imports.get(name, value) != value:
                raise ValueError(f"{field}: '{value}' and '{imports[name]}' would both be called '{name}'")
            imports[name] = value
            return name

        out = dict(data)
        if "model" in out:
            out["model"] = named(out["model"], "reward.model")
        if isinstance(out.get("extra"), list):
            out["extra"] = [named(v, f"reward.extra[{i}]") for i, v in enumerate(out["extra"])]
        if imports:
            out["imports"] = imports
        return out

    @model_validator(mode="after")
    def _comet_path(self) -> RewardSpec:
        """Whether each reward name resolves is checked by core/spec_check.py (it needs the plugins)."""
        if "comet" in (self.model, *self.extra) and not self.comet_path:
            raise ValueError("reward.comet_path must name a local COMET checkpoint folder for reward 'comet'")
        if "http" in (self.model, *self.extra) and self.http is None:
            raise ValueError("reward 'http' needs reward.http: {url: http://host:port, ...}")
        return self
