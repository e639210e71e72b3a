"""The arena's vote file, leaderboard and export: bad vote lines name their file, line and field; the
leaderboard's ratings are `ratings`' (checked against sklearn there) with a hand count of games; the
export is preference rows that the data doctor accepts and `task: dpo` trains on."""

import json
import random

import pytest

import tunelab
from tunelab.errors import TunelabError
from tunelab.evaluation import arena
from tunelab.runs import RunDir

PROMPTS = [f"What is {a} plus {b}?" for a, b in [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 1), (2, 9)]]


def votes_file(tmp_path, n=24):
    path = tmp_path / arena.VOTES_FILE
    rng = random.Random(3)
    for i in range(n):
        prompt = PROMPTS[i % len(PROMPTS)]
        a, b = arena.draw_pair(["tuned", "tuned:base", "other"], rng)
        answer = {"tuned": "The answer is right.", "tuned:base": "I am not sure.", "other": "Maybe seven?"}
        order = ["tuned", "other", "tuned:base"]
        vote = "a" if order.index(a) < order.index(b) else "b"
        if i % 7 == 6:
            vote = "tie" if i % 2 else "both_bad"
        arena.record_vote(path, arena.make_vote(prompt, (a, answer[a] + f" ({i})"), (b, answer[b] + f" ({i})"), vote,
                                                who="tester"))  # fmt: skip
    return path


def test_votes_round_trip_and_the_leaderboard_ranks_the_consistent_winner_first(tmp_path):
    votes = arena.read_votes(votes_file(tmp_path))
    assert len(votes) == 24 and {v["who"] for v in votes} == {"tester"}
    board = arena.leaderboard(votes, metrics={"tuned": {"rougeL": 30.0}}, resamples=200)
    assert [r["model"] for r in board] == ["tuned", "other", "tuned:base"]
    assert board[0]["metrics"] == {"rougeL": 30.0}
    for row in board:
        assert row["bt_low"] <= row["bt"] <= row["bt_high"] and row["elo_low"] <= row["elo_high"]
        hand = [v for v in votes if row["model"] in (v["a"]["model"], v["b"]["model"])]
        assert row["games"] == len(hand)


@pytest.mark.parametrize("line,field", [
    ("{not json", None),
    (json.dumps({"prompt": "p", "a": {"model": "x", "output": "1"}, "b": {"model": "y"}, "vote": "a"}), "b"),
    (json.dumps({"prompt": "p", "a": {"model": "x", "output": "1"}, "b": {"model": "y", "output": "2"}, "vote": "A"}), "vote"),
    (json.dumps({"prompt": "p", "a": {"model": "x", "output": "1"}, "b": {"model": "x", "output": "2"}, "vote": "a"}), "b.model"),
])  # fmt: skip
def test_a_bad_vote_line_names_file_line_and_field(tmp_path, line, field):
    path = votes_file(tmp_path, n=2)
    with path.open("a") as f:
        f.write(line + "\n")
    with pytest.raises(TunelabError) as err:
        arena.read_votes(path)
    assert err.value.file == str(path) and err.value.line == 3 and err.value.field == field


def test_export_keeps_decided_votes_only(tmp_path):
    path = votes_file(tmp_path)
    votes = arena.read_votes(path)
    rows = arena.preference_rows(votes)
    decided = [v for v in votes if v["vote"] in ("a", "b")]
    assert len(rows) == len(decided) > 0
    for row, v in zip(rows, decided, strict=True):
        win = v[v["vote"]]
        assert row["chosen"] == win["output"] and row["chosen_model"] == win["model"]
        assert row["rejected"] != row["chosen"]


def test_export_is_preference_data_that_dpo_trains_on(tmp_path, tiny_model):
    from tunelab.data.doctor import check_file
    from tunelab.stages.registry import STAGES

    out = tmp_path / "prefs.jsonl"
    n = arena.export_preferences(votes_file(tmp_path, n=40), out)
    report = check_file(out, task="dpo", task_shapes=STAGES["dpo"].shapes)
    assert not [p for p in report.problems if p.severity == "error"], [str(p) for p in report.problems]
    assert report.to_dict()["sources"][0]["shape"] == "preference"
    result = tunelab.train({
        "name": "from-arena", "output_dir": str(tmp_path / "runs"), "model": str(tiny_model), "task": "dpo",
        "method": "lora", "data": {"train": str(out), "max_length": 48, "split": {"validation": 0.0, "test": 0.2}},
        "training": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "save_steps": None, "eval_steps": None,
                     "precision": "fp32"},
        "evaluation": {"max_new_tokens": 4, "probes": None},
    })  # fmt: skip
    assert n >= 30 and RunDir(result.run_dir).is_complete and result.results["metrics"]["tuned"]["n"] > 0


def test_export_leaves_out_blank_answers(tmp_path):
    path = tmp_path / arena.VOTES_FILE
    arena.record_vote(path, arena.make_vote("p", ("x", ""), ("y", "an answer"), "a"))
    arena.record_vote(path, arena.make_vote("p", ("x", "an answer"), ("y", "  "), "a"))
    arena.record_vote(path, arena.make_vote("p", ("x", "one"), ("y", "two"), "b"))
    assert arena.preference_rows(arena.read_votes(path)) == [
        {"prompt": "p", "chosen": "two", "rejected": "one", "chosen_model": "y", "rejected_model": "x",
         "vote_id": arena.read_votes(path)[2]["id"]}]  # fmt: skip


def test_export_without_decided_votes_says_so(tmp_path):
    path = tmp_path / arena.VOTES_FILE
    arena.record_vote(path, arena.make_vote("p", ("x", "1"), ("y", "2"), "tie"))
    with pytest.raises(TunelabError, match="no decided votes"):
        arena.export_preferences(path, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_draw_pair_needs_two_and_randomises_order():
    with pytest.raises(TunelabError):
        arena.draw_pair(["only"])
    rng = random.Random(0)
    firsts = {arena.draw_pair(["x", "y"], rng)[0] for _ in range(20)}
    assert firsts == {"x", "y"}
