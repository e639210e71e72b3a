"""`training.report_to`: TensorBoard event files that TensorBoard's own reader loads, and an MLflow
file store inside the run that MLflow's client reads back, both holding the losses metrics.jsonl has."""

import math

import pytest

import tunelab
from tunelab.config import check_before_loading, config_from_dict
from tunelab.errors import TunelabError
from tunelab.runs.layout import read_metrics


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("tracked")
    qa = tmp / "qa.jsonl"
    import json

    from conftest import qa_rows

    qa.write_text("\n".join(json.dumps(r) for r in qa_rows()) + "\n")
    return tunelab.train({
        "name": "tracked", "output_dir": str(tmp / "runs"), "model": str(tiny_model), "method": "lora",
        "data": {"train": str(qa), "max_length": 64, "split": {"validation": 0.1, "test": 0.1, "seed": 1}},
        "training": {"max_steps": 6, "batch_size": 4, "lr": 5e-3, "logging_steps": 2, "eval_steps": 3,
                     "save_steps": 3, "precision": "fp32", "report_to": ["tensorboard", "mlflow"]},
        "evaluation": {"max_new_tokens": 4, "probes": None, "compare_base": False},
    })  # fmt: skip


def logged_losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def test_tensorboard_reader_loads_the_losses(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tracked_run.run_dir / "tensorboard"
    assert list(logdir.rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    events = {e.step: e.value for e in acc.Scalars("train/loss")}
    expected = logged_losses(tracked_run.run_dir)
    assert events.keys() == expected.keys() and len(events) == 3
    for step, value in expected.items():
        assert math.isclose(events[step], value, rel_tol=1e-6)
    assert "eval/loss" in acc.Tags()["scalars"]


def test_mlflow_client_reads_the_local_store(tracked_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = tracked_run.run_dir / "mlruns"
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    experiment = client.get_experiment_by_name("tunelab")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    expected = logged_losses(tracked_run.run_dir)
    assert history.keys() == expected.keys()
    for step, value in expected.items():
        assert math.isclose(history[step], value, rel_tol=1e-6)
    assert run.data.params["learning_rate"] == "0.005"


def test_the_environment_is_put_back(tracked_run):
    import os

    assert "TENSORBOARD_LOGGING_DIR" not in os.environ and "MLFLOW_TRACKING_URI" not in os.environ


def test_unknown_tracker_is_refused_with_a_suggestion(tmp_path, tiny_config):
    cfg = tiny_config(training={"report_to": ["tensorbord"]})
    with pytest.raises(TunelabError) as err:
        config_from_dict(cfg)
    assert "did you mean 'tensorboard'" in str(err.value) and err.value.field == "training.report_to"


def test_missing_tracker_package_is_refused_before_loading(tmp_path, tiny_config, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = config_from_dict(tiny_config(training={"report_to": "wandb"}))
    assert cfg.training.report_to == ["wandb"]
    with pytest.raises(TunelabError) as err:
        check_before_loading(cfg, output_dir=False)
    assert "tunelab[wandb]" in err.value.expected
