"""Ratings from pairwise human votes: online Elo and Bradley–Terry, each with bootstrap intervals.

A vote is (model_a, model_b, outcome) with outcome "a", "b" or "tie"; "both bad" counts as a tie, as
in Chatbot Arena. Both ratings are on the Elo scale (400 points = 10:1 odds, 1000 = the average model):

- **Elo** is the online update in vote order (K = 4 by default, as Chatbot Arena uses), so it depends
  on the order; its interval resamples the votes (with replacement, in a fresh random order).
- **Bradley–Terry** is the maximum-likelihood fit of P(i beats j) = s_i / (s_i + s_j) to all votes at
  once, order-free (a tie is half a win each way). Fitted with Hunter's (2004) MM iterations, which
  converge for any connected comparison graph; a small symmetric prior (one tie against a virtual
  opponent of rating 1000) keeps a model that never lost finite. Its interval is the percentile
  bootstrap over votes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SCALE, BASE, INITIAL = 400.0, 10.0, 1000.0
OUTCOMES = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}


@dataclass(frozen=True)
class Match:
    a: str
    b: str
    outcome: str  # a key of OUTCOMES

    @property
    def score_a(self) -> float:
        return OUTCOMES[self.outcome]


@dataclass
class Rating:
    model: str
    rating: float
    low: float  # 95% bootstrap interval
    high: float
    games: int
    wins: float  # ties count half


def elo(matches: Sequence[Match], *, k: float = 4.0, models: Sequence[str] | None = None) -> dict[str, float]:
    """Online Elo in the order given, every model starting at 1000."""
    ratings = {m: INITIAL for m in (models or _models(matches))}
    for match in matches:
        ra, rb = ratings[match.a], ratings[match.b]
        expected_a = 1.0 / (1.0 + BASE ** ((rb - ra) / SCALE))
        delta = k * (match.score_a - expected_a)
        ratings[match.a] = ra + delta
        ratings[match.b] = rb - delta
    return ratings


def bradley_terry(matches: Sequence[Match], *, models: Sequence[str] | None = None, prior: float = 0.5,
                  tol: float = 1e-10, max_iter: int = 10_000) -> dict[str, float]:
    """Maximum-likelihood Bradley–Terry strengths on the Elo scale (mean rating 1000).

    `prior`: pseudo-wins each model gets against (and concedes to) a virtual average opponent, so a
    model that won or lost every game still has a finite rating; 0 is the plain MLE."""
    names = list(models or _models(matches))
    index = {m: i for i, m in enumerate(names)}
    n = len(names)
    if n == 0:
        return {}
    wins = np.zeros((n, n))  # wins[i, j]: how often i beat j (ties half each way)
    for match in matches:
        i, j = index[match.a], index[match.b]
        wins[i, j] += match.score_a
        wins[j, i] += 1.0 - match.score_a
    return dict(zip(names, _fit(wins, prior, tol, max_iter), strict=True))


def _fit(wins: np.ndarray, prior: float, tol: float, max_iter: int) -> np.ndarray:
    """Hunter's MM iterations; the prior's virtual opponent (strength 1) anchors the scale, without it
    the strengths are only defined up to a factor and are renormalised each step. Ratings are centred
    on 1000 at the end (a shift: the differences, which are what the ratings say, are unchanged)."""
    n = wins.shape[0]
    games = wins + wins.T
    total_wins = wins.sum(axis=1) + prior
    strength = np.ones(n)
    for _ in range(max_iter):
        # s_i = W_i / (sum_j n_ij / (s_i + s_j) + 2·prior / (s_i + 1)): real games, then the virtual ones
        denom = (games / (strength[:, None] + strength[None, :])).sum(axis=1) + 2 * prior / (strength + 1.0)
        new = np.where(denom > 0, total_wins / np.where(denom > 0, denom, 1.0), strength)
        if prior == 0:
            new = new / math.exp(np.log(new).mean())
        done = np.max(np.abs(np.log(new) - np.log(strength))) < tol
        strength = new
        if done:
            break
    log_strength = np.log(strength)
    return INITIAL + SCALE * (log_strength - log_strength.mean()) / math.log(BASE)


def ratings(matches: Sequence[Match], *, method: str = "bradley_terry", resamples: int = 1000, seed: int = 0,
            k: float = 4.0) -> list[Rating]:
    """Each model's rating with a 95% percentile-bootstrap interval, best first."""
    if method not in ("bradley_terry", "elo"):
        raise ValueError(f"unknown rating method {method!r}")
    names = _models(matches)
    if not names:
        return []

    def fit(sample: Sequence[Match]) -> dict[str, float]:
        if method == "elo":
            return elo(sample, k=k, models=names)
        return bradley_terry(sample, models=names)

    point = fit(matches)
    rng = np.random.default_rng(seed)
    draws = np.empty((resamples, len(names)))
    for r in range(resamples):
        picks = rng.integers(0, len(matches), size=len(matches))  # with replacement, in random order
        fitted = fit([matches[i] for i in picks])
        draws[r] = [fitted[m] for m in names]
    low, high = np.percentile(draws, [2.5, 97.5], axis=0) if resamples else (np.array([np.nan] * len(names)),) * 2
    out = []
    for i, name in enumerate(names):
        played = [m for m in matches if name in (m.a, m.b)]
        won = sum(m.score_a if m.a == name else 1.0 - m.score_a for m in played)
        out.append(Rating(name, float(point[name]), float(low[i]), float(high[i]), len(played), won))
    return sorted(out, key=lambda r: -r.rating)


def _models(matches: Sequence[Match]) -> list[str]:
    seen: dict[str, None] = {}
    for m in matches:
        seen.setdefault(m.a)
        seen.setdefault(m.b)
    return list(seen)
