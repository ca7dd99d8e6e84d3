"""A reward model served apart from the policy, behind a tiny JSON protocol (docs/reward_protocol.md):

    GET  /info   -> {"name": str, "version": str, "needs_reference": bool, "normalisation": str}
    POST /score  {"sources": [...], "hypotheses": [...], "references": [...] | null} -> {"scores": [...]}

Batches go out `max_in_flight` at a time, each retried with exponential back-off; an answer of the wrong
length, with NaN or non-numbers is refused (RewardError naming the server and batch), so a broken server
never leaves a shard half-scored. The server's reported name and version are part of this reward's
version, so the score cache never mixes the scores of two servers.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from rest_pipeline.core.rewards.base import RewardError
from rest_pipeline.spec import HttpRewardSpec

PROTOCOL = "rest-reward/1"


class HttpReward:
    """The `http` reward: scores from a server that speaks the protocol above."""

    name = "http"

    def __init__(self, spec: HttpRewardSpec, name: str = "http"):
        self.name = name
        self.spec = spec
        self.url = spec.url.rstrip("/")
        info = self._call("GET", "/info", None, what="its /info")
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("name"), str)
            or not isinstance(info.get("version"), str)
        ):
            raise RewardError(f"reward server {self.url}: /info must answer {{name, version, ...}}, got {info!r:.200}")
        self.server = f"{info['name']}@{info['version']}"
        self.version = f"{PROTOCOL}:{self.server}:ref={spec.needs_reference}"
        self.needs_reference = spec.needs_reference
        self.normalisation = str(info.get("normalisation", "as served"))
        if info.get("needs_reference") and not spec.needs_reference:
            raise RewardError(
                f"reward server {self.url} ({self.server}) needs references; set reward.http.needs_reference: true"
            )

    def _call(self, method: str, path: str, payload: dict | None, what: str) -> object:
        """One request with retries and back-off; the answer's JSON, or a RewardError saying what failed."""
        data = None if payload is None else json.dumps(payload).encode()
        last = ""
        for attempt in range(self.spec.retries + 1):
            if attempt:
                time.sleep(min(0.5 * 2 ** (attempt - 1), 30.0))
            request = urllib.request.Request(
                self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.spec.timeout_s) as resp:  # noqa: S310 (http/https)
                    body = resp.read()
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[:200].decode(errors='replace')}"
                if 400 <= e.code < 500 and e.code != 429:
                    break  # the request is wrong; asking again will not help
                continue
            except (urllib.error.URLError, OSError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
                continue
            try:
                return json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RewardError(f"reward server {self.url}: {what} is not JSON: {body[:200]!r}") from None
        raise RewardError(
            f"reward server {self.url}: {what} failed after {self.spec.retries + 1} tries ({last}); is it running? "
            "(`rest serve-reward chrf --port N` serves one of ours; reward.http.url says where)"
        )

    def _batch(self, start: int, sources, hypotheses, references) -> np.ndarray:
        n = len(sources)
        answer = self._call(
            "POST",
            "/score",
            {"sources": list(sources), "hypotheses": list(hypotheses), "references": references},
            what=f"scoring inputs {start}-{start + n - 1}",
        )
        scores = answer.get("scores") if isinstance(answer, dict) else None
        if not isinstance(scores, list) or len(scores) != n:
            got = f"{len(scores)} scores" if isinstance(scores, list) else f"{answer!r:.120}"
            raise RewardError(f"reward server {self.url} ({self.server}): answered {got} for a batch of {n} inputs")
        for i, s in enumerate(scores):
            if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s):
                raise RewardError(
                    f"reward server {self.url} ({self.server}): score {start + i} is {s!r}, not a finite number"
                )
        return np.asarray(scores, dtype=np.float64)

    def score(self, sources: Sequence[str], hypotheses: Sequence[str], references: Sequence[str] | None) -> np.ndarray:
        if self.needs_reference and references is None:
            raise RewardError(f"reward '{self.name}' needs references")
        size = self.spec.batch_size
        starts = range(0, len(sources), size)
        with ThreadPoolExecutor(max_workers=self.spec.max_in_flight) as pool:
            parts = pool.map(
                lambda i: self._batch(
                    i,
                    sources[i : i + size],
                    hypotheses[i : i + size],
                    list(references[i : i + size]) if self.needs_reference and references is not None else None,
                ),
                starts,
            )
            return np.concatenate(list(parts)) if len(sources) else np.zeros(0)
