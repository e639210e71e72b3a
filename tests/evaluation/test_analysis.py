"""Error analysis without a model: regressions, worst N, the slice field and per-slice differences."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.fakes import rows, scored
from tunelab.errors import TunelabError
from tunelab.evaluation.analysis import MIN_SLICE_FOR_CI, analyse, slice_field

REFS = [f"answer number {i}" for i in range(12)]
TOPICS = [{"topic": "big" if i < 8 else "small", "id_text": f"row {i}"} for i in range(12)]


def _compare(base_out: list[str], tuned_out: list[str], **kwargs):
    data = rows(REFS, meta=TOPICS)
    results = [scored("base", base_out, data, is_base=True), scored("tuned", tuned_out, data)]
    return analyse(results, data, baseline="base", primary="rougeL", resamples=200, out_dir=Path("out"), **kwargs)


def test_regressions_worst_and_counts() -> None:
    base_out = list(REFS)
    tuned_out = [REFS[i] if i % 4 else "nothing" for i in range(12)]  # rows 0, 4, 8 regress
    tuned_out[5] = "answer"  # a partial regression, smaller than the others
    comp = _compare(base_out, tuned_out, worst=2)
    assert comp.counts["tuned"] == {"worse": 4, "better": 0, "tied": 8}
    assert [r["id"] for r in comp.regressions["tuned"]] == [1, 5, 9, 6]  # largest drop first, then by row
    assert all(r["drop"] < 0 for r in comp.regressions["tuned"])
    assert [r["id"] for r in comp.worst["tuned"]] == [1, 5] and len(comp.worst["base"]) == 2
    assert comp.regressions["tuned"][0]["topic"] == "big" and comp.regressions["tuned"][0]["tuned"] == "nothing"
    assert comp.to_json()["counts"] == comp.counts and comp.notes[0] == "12 rows: 12 test rows"


def test_slices_detected_and_small_ones_get_no_interval() -> None:
    comp = _compare(list(REFS), ["nothing"] * 12)
    assert comp.slices is not None and comp.slices["field"] == "topic"  # id_text: 12 distinct values, too many
    big, small = comp.slices["rows"]
    assert (big["topic"], big["n"], small["topic"], small["n"]) == ("big", 8, "small", 4)
    assert 4 < MIN_SLICE_FOR_CI <= 8
    assert {"low", "high"} <= set(big["deltas"]["tuned"]) and set(small["deltas"]["tuned"]) == {"delta"}
    assert small["deltas"]["tuned"]["delta"] == pytest.approx(-100.0)


def test_slice_field_requested_must_exist() -> None:
    data = rows(REFS, meta=TOPICS)
    assert slice_field(data, "id_text") == "id_text"
    with pytest.raises(TunelabError, match="no row has a field 'colour'"):
        slice_field(data, "colour")
    assert slice_field(rows(REFS), None) is None
