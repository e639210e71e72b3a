"""Elo and Bradley–Terry against independent computations: a hand-worked Elo sequence, and
scikit-learn's unpenalised logistic regression for Bradley–Terry (Chatbot Arena's own method)."""

import math

import numpy as np
import pytest

from tunelab.evaluation.ratings import Match, bradley_terry, elo, ratings

VOTES = [  # a fixed vote file's outcomes: x beats y mostly, y beats z mostly, z sometimes beats x
    ("x", "y", "a"), ("x", "y", "a"), ("y", "x", "a"), ("x", "y", "tie"), ("y", "z", "a"), ("y", "z", "a"),
    ("z", "y", "a"), ("y", "z", "both_bad"), ("x", "z", "a"), ("z", "x", "a"), ("x", "z", "a"), ("x", "z", "b"),
    ("z", "x", "b"), ("y", "x", "b"), ("z", "y", "tie"),
]  # fmt: skip
MATCHES = [Match(*v) for v in VOTES]


def test_elo_follows_the_update_rule_by_hand():
    # K = 32 for visible steps. 1: x beats y from 1000/1000: expected 0.5, x +16, y -16.
    # 2: y (984) beats x (1016): expected_y = 1/(1+10^(32/400)) = 0.4540, y += 32·0.5460 = 17.47.
    # 3: x (998.53) ties z (1000): expected_x = 1/(1+10^(1.47/400)) = 0.49788, x += 32·(0.5-0.49788).
    got = elo([Match("x", "y", "a"), Match("y", "x", "a"), Match("x", "z", "tie")], k=32)
    e2 = 1 / (1 + 10 ** (32 / 400))
    x2, y2 = 1016 - 32 * (1 - e2), 984 + 32 * (1 - e2)
    e3 = 1 / (1 + 10 ** ((1000 - x2) / 400))
    assert got["y"] == pytest.approx(y2)
    assert got["x"] == pytest.approx(x2 + 32 * (0.5 - e3))
    assert got["z"] == pytest.approx(1000 - 32 * (0.5 - e3))
    assert sum(got.values()) == pytest.approx(3000)  # Elo is zero-sum


def logistic_regression_ratings(matches, names, prior):
    """Bradley–Terry as Chatbot Arena fits it: unpenalised logistic regression on +1/-1 rows, a tie half
    a win each way; the prior as virtual games against an opponent whose coefficient is fixed at 0."""
    from sklearn.linear_model import LogisticRegression

    rows, ys, weights = [], [], []
    for m in matches:
        row = np.zeros(len(names))
        row[names.index(m.a)], row[names.index(m.b)] = 1, -1
        for y, w in ((1, m.score_a), (0, 1 - m.score_a)):
            if w:
                rows.append(row)
                ys.append(y)
                weights.append(w)
    for i in range(len(names) if prior else 0):
        row = np.zeros(len(names))
        row[i] = 1
        rows += [row, row]
        ys += [1, 0]
        weights += [prior, prior]
    lr = LogisticRegression(C=np.inf, fit_intercept=False, tol=1e-12, max_iter=10_000)
    lr.fit(np.array(rows), np.array(ys), sample_weight=np.array(weights))
    beta = lr.coef_[0] - lr.coef_[0].mean()
    return 1000 + 400 * beta / math.log(10)


@pytest.mark.parametrize("prior", [0.0, 0.5])
def test_bradley_terry_equals_logistic_regression(tmp_path, prior):
    from tunelab.evaluation import arena

    votes = tmp_path / "votes.jsonl"  # the fixed votes as a vote file, read back as the leaderboard reads it
    for a, b, outcome in VOTES:
        arena.record_vote(votes, arena.make_vote("p", (a, f"{a} says"), (b, f"{b} says"), outcome))
    matches = arena.matches(arena.read_votes(votes))
    names = ["x", "y", "z"]
    expected = logistic_regression_ratings(matches, names, prior)
    got = bradley_terry(matches, prior=prior)
    assert [got[n] for n in names] == pytest.approx(list(expected), abs=1e-3)
    if prior:
        board = {r["model"]: r for r in arena.leaderboard(arena.read_votes(votes), resamples=200)}
        assert [board[n]["bt"] for n in names] == pytest.approx(list(expected), abs=1e-3)
        assert all(board[n]["bt_low"] <= board[n]["bt"] <= board[n]["bt_high"] for n in names)


def test_a_model_that_never_lost_has_a_finite_rating_and_leads():
    won_all = [Match("best", "x", "a"), Match("y", "best", "b"), *MATCHES]
    table = ratings(won_all, resamples=200)
    assert table[0].model == "best" and math.isfinite(table[0].rating)


def test_intervals_contain_the_estimate_and_narrow_with_more_votes():
    few = ratings(MATCHES, resamples=300, seed=1)
    many = ratings(MATCHES * 8, resamples=300, seed=1)
    for r in few + many:
        assert r.low <= r.rating <= r.high
    width = {r.model: r.high - r.low for r in few}
    assert all(r.high - r.low < width[r.model] for r in many)


def test_counts_games_and_wins():
    table = {r.model: r for r in ratings(MATCHES, resamples=10)}
    # x: games 1,2,3,4,9,10,11,12,13,14 = 10; wins: 1+1+0+.5+1+0+1+0+1+1 = 6.5
    assert table["x"].games == 10 and table["x"].wins == 6.5
    assert sum(r.games for r in table.values()) == 2 * len(MATCHES)
    assert sum(r.wins for r in table.values()) == len(MATCHES)


def test_elo_intervals_too():
    table = ratings(MATCHES, method="elo", resamples=100)
    assert {r.model for r in table} == {"x", "y", "z"}
    assert all(r.low <= r.high for r in table)
