"""Turns what the server learns each round into the run directory's files.

One round is "completed" only when its metrics lines, its rounds.jsonl line and its checkpoint
are all on disk; the checkpoint is written last, so `--resume` never continues from a round whose
metrics are missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedhealth.errors import FederationError
from fedhealth.metrics.headline import EVALUATION_KEYS, headline
from fedhealth.runs import rundir
from fedhealth.study.config import StudyConfig

log = logging.getLogger(__name__)

RoundCallback = Callable[[int, dict[str, Any]], None]


class RoundsFailedError(FederationError, RuntimeError):
    """Too many rounds in a row could not aggregate: the study stops instead of pretending to train."""


@dataclass
class _Pending:
    fit: dict[int, dict[str, Any]] = field(default_factory=dict)  # hospital index -> fit metrics
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {"hospital_index", "reason"}
    declined: dict[int, dict[str, Any]] = field(default_factory=dict)  # e.g. privacy budget exhausted
    fit_failures: list[str] = field(default_factory=list)
    evaluation: dict[int, dict[str, Any]] = field(default_factory=dict)
    evaluate_failures: list[str] = field(default_factory=list)
    aggregated: bool = False
    stage_seconds: dict[str, float] = field(default_factory=dict)  # SecAgg+ stage -> seconds
    failure: str | None = None  # why the round could not aggregate (SecAgg+ halted, too few contributors, ...)
    started: float = field(default_factory=time.perf_counter)


class RunRecorder:
    def __init__(self, run_dir: Path, cfg: StudyConfig, on_round: RoundCallback | None = None) -> None:
        self.run_dir = run_dir
        self.cfg = cfg
        self.on_round = on_round
        self._pending = _Pending()
        self.consecutive_failures = 0

    def begin_round(self) -> None:
        self._pending = _Pending()

    def record_fit(self, index: int, num_examples: int | None, metrics: dict[str, Any]) -> None:
        """A hospital's training result; `num_examples` is None under SecAgg+ (the server never learns it)."""
        self._pending.fit[index] = {"num_examples": num_examples, **metrics}

    def record_stage_seconds(self, seconds: dict[str, float]) -> None:
        self._pending.stage_seconds = dict(seconds)

    def record_round_failure(self, reason: str) -> None:
        log.error("round failed: %s", reason)
        self._pending.aggregated = False
        self._pending.failure = reason

    def record_rejected(self, index: int | None, reason: str) -> None:
        log.warning("round update rejected (hospital %s): %s", index, reason)
        self._pending.rejected.append({"hospital_index": index, "reason": reason})

    def record_declined(self, index: int, reason: str, epsilon: Any = None) -> None:
        log.warning("hospital %s declined the round: %s", index, reason)
        self._pending.declined[index] = {"reason": reason, "epsilon": epsilon}

    def record_fit_failure(self, reason: str) -> None:
        log.warning("a hospital failed to train: %s", reason)
        self._pending.fit_failures.append(reason)

    def record_aggregated(self, ok: bool) -> None:
        self._pending.aggregated = ok

    def _round_status(self) -> tuple[str, str | None]:
        """("aggregated" | "all_declined" | "failed", reason). Declining is a hospital's right, not a failure."""
        p = self._pending
        if p.aggregated:
            return "aggregated", None
        if p.failure:
            return "failed", p.failure
        if p.declined and not (p.fit or p.rejected or p.fit_failures):
            return "all_declined", None
        problems = [r["reason"] for r in p.rejected] + p.fit_failures
        detail = "; ".join(problems[:5]) if problems else "no hospital returned an update"
        return "failed", f"no update was aggregated: {detail}"

    def record_evaluation(self, index: int, loss: float, n: int, metrics: dict[str, Any]) -> None:
        self._pending.evaluation[index] = {"loss": loss, "n": n, **metrics}

    def record_evaluate_failure(self, reason: str) -> None:
        log.warning("a hospital failed to evaluate: %s", reason)
        self._pending.evaluate_failures.append(reason)

    def complete_round(self, server_round: int, weights: list[np.ndarray], optimizer_state: dict) -> None:
        p = self._pending
        kind = self.cfg.outcome_kind
        top = headline(kind)
        rows = []
        for index in sorted(p.evaluation):
            h = self.cfg.hospitals[index]
            ev = p.evaluation[index]
            fit = p.fit.get(index, {})
            rows.append({
                "round": server_round,
                "hospital_index": index,
                "hospital": h.name,
                "tier": h.tier,
                "region": h.region,
                **{key: ev.get(key) for key in EVALUATION_KEYS[kind]},
                "loss": ev["loss"],
                "n": ev["n"],
                "trained": index in p.fit,
                "aggregated": p.aggregated and index in p.fit,
                "n_train": fit.get("n_train"),
                "train_loss": fit.get("train_loss"),
                "train_seconds": fit.get("train_seconds"),
                "epsilon": fit.get("epsilon", p.declined.get(index, {}).get("epsilon")),
                "declined": p.declined.get(index, {}).get("reason"),
                "secagg_clipped": fit.get("secagg_clipped"),
            })
        defined = [r for r in rows if isinstance(r[top], int | float) and np.isfinite(r[top])]
        aurocs = np.array([r[top] for r in defined])
        ns = np.array([r["n"] for r in defined])
        status, failure = self._round_status()
        summary = {
            "round": server_round,
            "status": status,
            "aggregated": p.aggregated,
            "failure": failure,
            "secure_aggregation": self.cfg.federation.secure_aggregation.enabled,
            "hospitals_aggregated": sorted(p.fit) if p.aggregated else [],
            "hospitals_trained": sorted(p.fit),
            "rejected": p.rejected,
            "declined": [{"hospital_index": i, **d} for i, d in sorted(p.declined.items())],
            "fit_failures": p.fit_failures,
            "hospitals_evaluated": sorted(p.evaluation),
            "evaluate_failures": p.evaluate_failures,
            # the headline figure over the hospitals: auroc_mean/auroc_weighted, or c_index_mean/... (time to event)
            f"{top}_mean": float(aurocs.mean()) if len(aurocs) else None,
            f"{top}_weighted": float((aurocs * ns).sum() / ns.sum()) if len(aurocs) else None,
            "seconds": time.perf_counter() - p.started,
            "secagg_stage_seconds": p.stage_seconds or None,
        }
        sites = {self.cfg.hospitals[i].name: f["site_table"] for i, f in sorted(p.fit.items()) if "site_table" in f}
        if sites:  # a description's per-site columns, each released by its hospital under its own policy
            summary["site_tables"] = sites
        curves = {self.cfg.hospitals[i].name: f["site_curve"] for i, f in sorted(p.fit.items()) if "site_curve" in f}
        if curves:
            summary["site_curves"] = curves
        filled = {str(i): f["groups_filled"] for i, f in sorted(p.fit.items()) if "groups_filled" in f}
        if filled:  # which hospitals filled each tier and region slot of a description
            summary["groups_filled"] = filled
        if self.cfg.privacy.mode == "hospital":
            from fedhealth.privacy.hospital_level import hospital_epsilon

            summary["hospital_epsilon"] = hospital_epsilon(self.cfg, server_round)
        rundir.append_jsonl(self.run_dir / rundir.METRICS_FILE, rows)
        rundir.append_jsonl(self.run_dir / rundir.ROUNDS_FILE, [summary])
        rundir.save_weights(rundir.checkpoint_path(self.run_dir, server_round), weights, optimizer_state)
        rundir.update_state(self.run_dir, status="running", last_round=server_round)
        if self.on_round is not None:
            self.on_round(server_round, summary)
        self.consecutive_failures = self.consecutive_failures + 1 if status == "failed" else 0
        limit = self.cfg.federation.secure_aggregation.max_consecutive_failures
        if self.consecutive_failures >= limit:
            raise RoundsFailedError(
                f"{self.consecutive_failures} rounds in a row failed to aggregate (limit "
                f"federation.secure_aggregation.max_consecutive_failures = {limit}); last: {failure}")
