"""Experiment tracking: MLflow (local file store) and TensorBoard receive the study's parameters and
per-round figures; a missing extra is a clear error."""

import sys

import pytest

from fedhealth.data.study_file import load_config
from fedhealth.runs.tracking import TrackingError, flatten, open_tracker
from tests.support import SMOKE

ROUND = {"auroc_mean": 0.81, "auroc.city-tertiary": 0.8, "hospitals_aggregated": 3.0}


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": 1, "a.c": "[1, 2]", "d": "x"}


def test_mlflow_file_store_gets_params_and_per_round_metrics(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    cfg = load_config(SMOKE, ["tracking.backend=mlflow", f"tracking.uri={uri!r}"])
    tracker = open_tracker(cfg, tmp_path / "run-a")
    tracker.log_round(1, ROUND)
    tracker.log_round(2, {**ROUND, "auroc_mean": 0.84})
    tracker.log_summary({"final.auroc.federated": 0.85})
    tracker.close()
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert run.data.params["federation.rounds"] == "2" and run.data.params["hospitals"] == "3"
    history = client.get_metric_history(run.info.run_id, "auroc_mean")
    assert [(m.step, m.value) for m in history] == [(1, 0.81), (2, 0.84)]
    assert run.data.metrics["final.auroc.federated"] == 0.85 and "auroc.city-tertiary" in run.data.metrics


def test_tensorboard_event_files_hold_the_rounds(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(SMOKE, ["tracking.backend=tensorboard", f"tracking.uri={str(tmp_path / 'tb')!r}"])
    tracker = open_tracker(cfg, tmp_path / "run-b")
    tracker.log_round(1, ROUND)
    tracker.close()
    events = EventAccumulator(str(tmp_path / "tb" / "run-b"))
    events.Reload()
    assert {"auroc_mean", "auroc/city-tertiary", "hospitals_aggregated"} <= set(events.Tags()["scalars"])
    assert events.Scalars("auroc_mean")[0].value == pytest.approx(0.81)


def test_a_missing_extra_says_what_to_install(tmp_path, monkeypatch):
    for name in ("mlflow", "mlflow.entities", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(TrackingError, match=r"pip install -e '\.\[mlflow\]'"):
        open_tracker(load_config(SMOKE, ["tracking.backend=mlflow"]), tmp_path)
    assert open_tracker(load_config(SMOKE), tmp_path) is None  # off by default
