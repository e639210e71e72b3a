"""`tunelab train` warns, before any model loads, when the planner says the run will not fit."""

from __future__ import annotations

import pytest

import tunelab
import tunelab.planning.preflight as preflight
from tunelab.config import config_from_dict
from tunelab.planning import plan


def test_a_run_that_will_not_fit_is_warned_about_before_the_model_loads(tiny_config, monkeypatch, capsys):
    import tunelab.models.loading as loading

    estimate = plan(tiny_config(), machines=False).memory.peak
    monkeypatch.setattr(preflight, "available_bytes", lambda device: estimate / 2)  # a machine with half of it
    monkeypatch.setenv("TUNELAB_QUIET", "0")
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("stop here: the warning came first"))
    with pytest.raises(pytest.fail.Exception, match="the warning came first"):
        tunelab.train(tiny_config(name="too-big"))
    err = capsys.readouterr().err
    assert "the planner estimates" in err and "will likely run out of memory" in err
    assert f"{estimate / 2**30:.1f} GiB at the peak" in err


def test_a_run_that_fits_gets_no_warning(tiny_config, monkeypatch):
    estimate = plan(tiny_config(), machines=False).memory.peak
    monkeypatch.setattr(preflight, "available_bytes", lambda device: estimate * 1.01)
    assert preflight.memory_warning(config_from_dict(tiny_config())) is None
    monkeypatch.setattr(preflight, "available_bytes", lambda device: estimate * 0.99)
    assert "run out of memory" in preflight.memory_warning(config_from_dict(tiny_config()))
    # processes on one machine share its memory
    monkeypatch.setattr(preflight, "available_bytes", lambda device: estimate * 1.5)
    assert preflight.memory_warning(config_from_dict(tiny_config()), world_size=2, local_size=2)
