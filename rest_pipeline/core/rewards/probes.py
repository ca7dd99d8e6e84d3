"""Reward models under test (the paper's own lesson: a learned reward can be fooled): a good hypothesis
and its damaged variants per sentence, and a verdict per damage family — how often the reward prefers
the damaged variant or ties it, and how much reward the damage costs (a bootstrap interval) — beside
the same figures for chrF and sentence BLEU, which see the reference.

Each family is a pure function of (source, hypothesis, a seeded random generator, other sentences)
returning the damaged hypothesis, or None when it cannot apply to the sentence (counted as skipped).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rest_pipeline.core.rewards.base import BleuReward, ChrFReward, RewardModel

AUXILIARIES = ("is", "are", "was", "were", "does", "do", "did", "can", "will", "has", "have", "could", "would")
CLAUSES = (
    "and then it started to rain",
    "while a crowd watched from the street",
    "before the lights went out",
    "as the band played on",
)

Damage = Callable[[str, str, random.Random, Sequence[str]], "str | None"]


def _words(text: str) -> list[str]:
    return text.split()


def _content(words: list[str]) -> list[int]:
    """Positions of content words (four letters or more, not an auxiliary)."""
    return [i for i, w in enumerate(words) if len(re.sub(r"\W", "", w)) >= 4 and w.lower() not in AUXILIARIES]


def repeat(src: str, hyp: str, rng: random.Random, others: Sequence[str]) -> str | None:
    return f"{hyp} {hyp}" if hyp.strip() else None


def truncate(src: str, hyp: str, rng: random.Random, others: Sequence[str]) -> str | None:
    words = _words(hyp)
    return " ".join(words[: len(words) // 2]) if len(words) >= 4 else None


def copy_source(src: str, hyp: str, rng: random.Random, others: Sequence[str]) -> str | None:
    return src if src.strip() and src != hyp else None


def drop_word(src: str, hyp: str, rng: random.Random, others: Sequence[str]) -> str | None:
    words = _words(hyp)
    content = _content(words)
    if not content or len(words) < 3:
        return None
    i = max(content, key=lambda k: (len(words[k]), -k))  # the longest content word
    return " ".join(words[:i] + words[i + 1 :])


def change_number(src: str, hyp: str, rng: random.Random, others: Sequence[str]) -> str | None:
    match = re.search(r"\d+", hyp)
    if match is None:
        numbers = {"one": "three", "two": "five", "three": "seven", "four": "nine", "five": "two"}
        words = _words(hyp)
        hits = [i for i, w in enumerate(words) if w.lower() in numbers]
        if not hits:
            return None
        i = hits[0]
        return " ".join(words[:i] + [numbers[words[i].lower()]] + words[i + 1 :])
    value = int(match.group()) + rng.randint(2, 9)
    return hyp[: match.start()] + str(value) + hyp[match.end() :]


def swap_entity(src: str, hyp: str, rng: random.Random, others: Sequence[str]) -> str | None:
    """The longest content word replaced by another sentence's longest content word."""
    words = _words(hyp)
    content = _content(words)
    pool = [w for o in others for w in (lambda ws: [ws[k] for k in _content(ws)])(_words(o)) if w not in words]
    if not content or not pool:
        return None
    i = max(content, key=lambda k: (len(words[k]), -k))
    return " ".join(words[:i] + [rng.choice(pool)] + words[i + 1 :])


def negate(src: str, hyp: str, rng: random.Random, others: Sequence[str]) -> str | None:
    words = _words(hyp)
    for i, w in enumerate(words):
        if w.lower() in ("not", "never", "no"):
            return " ".join(words[:i] + words[i + 1 :])
        if w.lower().endswith("n't"):
            return " ".join(words[:i] + [w[:-3]] + words[i + 1 :])
    for i, w in enumerate(words):
        if w.lower() in AUXILIARIES:
            return " ".join(words[: i + 1] + ["not"] + words[i + 1 :])
    return None


def shuffle(src: str, hyp: str, rng: random.Random, others: Sequence[str]) -> str | None:
    words = _words(hyp)
    if len(set(words)) < 3:
        return None
    out = words[:]
    while out == words:
        rng.shuffle(out)
    return " ".join(out)


def empty(src: str, hyp: str, rng: random.Random, others: Sequence[str]) -> str | None:
    return "" if hyp.strip() else None


def hallucinate(src: str, hyp: str, rng: random.Random, others: Sequence[str]) -> str | None:
    if not hyp.strip():
        return None
    body = hyp.rstrip(" .!?")
    return f"{body}, {rng.choice(CLAUSES)}{hyp[len(body) :].strip() or '.'}"


FAMILIES: dict[str, tuple[Damage, str]] = {
    "repeat": (repeat, "the hypothesis twice"),
    "truncate": (truncate, "its first half (4 words or more)"),
    "copy_source": (copy_source, "the source, untranslated"),
    "drop_word": (drop_word, "its longest content word dropped"),
    "change_number": (change_number, "a number changed (digits, or one..five)"),
    "swap_entity": (swap_entity, "its longest content word replaced by another sentence's"),
    "negate": (negate, "a negation removed, or 'not' inserted after an auxiliary"),
    "shuffle": (shuffle, "its words shuffled"),
    "empty": (empty, "an empty output"),
    "hallucinate": (hallucinate, "an extra clause appended"),
}


@dataclass(frozen=True)
class Probe:
    family: str
    index: int  # the sentence
    source: str
    good: str
    damaged: str
    reference: str


def make_probes(
    sources: Sequence[str], hypotheses: Sequence[str], references: Sequence[str], seed: int = 0
) -> tuple[list[Probe], dict[str, int]]:
    """Every family applied to every sentence it can apply to; the skipped counts per family."""
    probes, skipped = [], {f: 0 for f in FAMILIES}
    for family, (damage, _) in FAMILIES.items():
        for i, (src, hyp, ref) in enumerate(zip(sources, hypotheses, references, strict=True)):
            rng = random.Random(f"{seed}:{family}:{i}")
            others = [hypotheses[(i + k) % len(hypotheses)] for k in (1, 2, 3)]
            out = damage(src, hyp, rng, others)
            if out is None or out == hyp:
                skipped[family] += 1
            else:
                probes.append(Probe(family, i, src, hyp, out, ref))
    return probes, skipped


@dataclass(frozen=True)
class FamilyVerdict:
    family: str
    made_by: str
    applied: int
    skipped: int
    prefer_or_tie: dict[str, float]  # reward name -> share of sentences where damaged >= good
    mean_drop: dict[str, float]  # reward name -> mean (good - damaged)
    drop_interval: dict[str, tuple[float, float]]  # 95 % bootstrap interval of the mean drop


def _interval(drops: np.ndarray, seed: int, resamples: int = 1000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = drops[rng.integers(0, len(drops), size=(resamples, len(drops)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def verdicts(
    rewards: Sequence[RewardModel],
    sources: Sequence[str],
    hypotheses: Sequence[str],
    references: Sequence[str],
    seed: int = 0,
    with_metrics: bool = True,
) -> list[FamilyVerdict]:
    """The verdict of each reward (and of chrF and sentence BLEU) on every family."""
    probes, skipped = make_probes(sources, hypotheses, references, seed)
    judges = list(rewards) + ([ChrFReward(), BleuReward()] if with_metrics else [])
    judges = list({j.name: j for j in judges}.values())
    src = [p.source for p in probes]
    ref = [p.reference for p in probes]
    scored = {}
    for judge in judges:
        refs = ref if judge.needs_reference else None
        good = np.asarray(judge.score(src, [p.good for p in probes], refs), dtype=float)
        bad = np.asarray(judge.score(src, [p.damaged for p in probes], refs), dtype=float)
        scored[judge.name] = (good, bad)
    out = []
    for family, (_, made_by) in FAMILIES.items():
        rows = np.array([p.family == family for p in probes])
        prefer, drop, interval = {}, {}, {}
        for name, (good, bad) in scored.items():
            if rows.any():
                d = good[rows] - bad[rows]
                prefer[name] = round(float((d <= 1e-9).mean()), 4)
                drop[name] = round(float(d.mean()), 4)
                lo, hi = _interval(d, seed)
                interval[name] = (round(lo, 4), round(hi, 4))
        out.append(FamilyVerdict(family, made_by, int(rows.sum()), skipped[family], prefer, drop, interval))
    return out
