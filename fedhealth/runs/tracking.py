"""Optional experiment tracking: a study's parameters and per-round metrics in MLflow or TensorBoard.

Off by default and installed as extras (`pip install -e ".[mlflow]"` or `".[tensorboard]"`), so
researchers can compare runs in the tools they already use. Both write local files only, inside the
run directory unless `tracking.uri` says otherwise: MLflow a file store (no tracking server), TensorBoard
event files. MLflow's usage telemetry is switched off before it is imported: nothing phones home.
What is logged are the same aggregate figures as `rounds.jsonl` and `metrics.jsonl`, never a record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

from fedhealth.errors import MissingExtraError
from fedhealth.runs import rundir
from fedhealth.study.config import StudyConfig

EXTRAS = {"mlflow": "mlflow", "tensorboard": "tensorboard"}


class TrackingError(MissingExtraError, RuntimeError):
    """Tracking was asked for and cannot work (its extra is not installed); the message says what to run."""


class Tracker(Protocol):
    def log_round(self, server_round: int, metrics: dict[str, float]) -> None: ...

    def log_summary(self, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are written as JSON text."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def round_metrics(run_dir: Path, server_round: int, summary: dict[str, Any]) -> dict[str, float]:
    """The round's figures: mean and weighted AUROC, hospitals aggregated, and AUROC and epsilon per hospital."""
    metrics: dict[str, float] = {"hospitals_aggregated": float(len(summary.get("hospitals_aggregated", []))),
                                 "round_failed": float(summary.get("status") == "failed")}
    from fedhealth.metrics.headline import HEADLINE

    # the round's headline figure: the one whose mean the round row holds
    top = next((t for t in HEADLINE.values() if f"{t}_mean" in summary), "auroc")
    for key in (f"{top}_mean", f"{top}_weighted", "hospital_epsilon", "seconds"):
        if summary.get(key) is not None:
            metrics[key] = float(summary[key])
    for row in rundir.read_jsonl(run_dir / rundir.METRICS_FILE):
        if row["round"] == server_round:
            if row.get(top) is not None:
                metrics[f"{top}.{row['hospital']}"] = float(row[top])
            if row.get("epsilon") is not None:
                metrics[f"epsilon.{row['hospital']}"] = float(row["epsilon"])
    return metrics


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    top = summary.get("headline", "auroc")
    out = {f"final.{top}.{k}": float(v) for k, v in summary["overall"][top].items() if v is not None}
    out.update({f"final.mean_hospital_{top}.{k}": float(v)
                for k, v in summary["overall"][f"mean_hospital_{top}"].items() if v is not None})
    for key, value in summary.get("equity", {}).get("gini", {}).items():
        if value is not None:
            out[f"final.gini.{key}"] = float(value)
    return out


class MlflowTracker:
    """MLflow through its client API with an explicit run id: rounds end on Flower's server thread, and
    MLflow's fluent API keeps its active run per thread (it would silently open a second run)."""

    def __init__(self, cfg: StudyConfig, run_dir: Path) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("DO_NOT_TRACK", "true")
        # MLflow 3 keeps its file store (no database, no server) behind this switch; it is what a run
        # directory on a hospital laptop wants. A `tracking.uri` may name any other backend.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise TrackingError("tracking.backend = 'mlflow' needs MLflow: pip install -e '.[mlflow]'") from None
        self._metric = Metric
        uri = cfg.tracking.uri or (run_dir / rundir.MLFLOW_DIR).resolve().as_uri()
        self.client = MlflowClient(uri)
        name = cfg.tracking.experiment or cfg.name
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        params = flatten(cfg.model_dump(mode="json", exclude={"hospitals"}, exclude_none=True))
        params["hospitals"] = len(cfg.hospitals)
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:500]) for k, v in sorted(params.items())])

    def _log(self, metrics: dict[str, float], step: int) -> None:
        import time

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self._metric(_mlflow_key(k), float(v), now, step)
                                                    for k, v in metrics.items()])

    def log_round(self, server_round: int, metrics: dict[str, float]) -> None:
        self._log(metrics, server_round)

    def log_summary(self, metrics: dict[str, float]) -> None:
        self._log(metrics, 0)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _mlflow_key(key: str) -> str:
    """MLflow keys allow letters, digits, _ - . space and /."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in key)


class TensorBoardTracker:
    def __init__(self, cfg: StudyConfig, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrackingError("tracking.backend = 'tensorboard' needs TensorBoard: "
                                "pip install -e '.[tensorboard]'") from None
        logdir = Path(cfg.tracking.uri) if cfg.tracking.uri else run_dir / rundir.TENSORBOARD_DIR
        self.writer = SummaryWriter(log_dir=str(logdir / run_dir.name))
        params = flatten(cfg.model_dump(mode="json", exclude={"hospitals"}, exclude_none=True))
        self.writer.add_text("config", "\n".join(f"    {k} = {v}" for k, v in sorted(params.items())))

    def log_round(self, server_round: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key.replace(".", "/", 1), value, server_round)
        self.writer.flush()

    def log_summary(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key.replace(".", "/", 1), value, 0)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tracker(cfg: StudyConfig, run_dir: Path) -> Tracker | None:
    """The configured tracker, or None when tracking is off; TrackingError if its extra is missing."""
    backend = cfg.tracking.backend
    if backend == "none":
        return None
    return MlflowTracker(cfg, run_dir) if backend == "mlflow" else TensorBoardTracker(cfg, run_dir)
