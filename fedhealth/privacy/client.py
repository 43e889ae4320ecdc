"""One hospital's private round: check the cap, charge the ledger, then train with DP-SGD.

The order is the guarantee: the ledger entry is on disk before a single gradient is computed, so
an update can never leave the hospital uncharged, and a round that would pass the cap never runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from torch import nn

from fedhealth.config import StudyConfig
from fedhealth.data.hospitals import HospitalSplit
from fedhealth.privacy.dp import calibrate_noise, sample_rate, steps_per_epoch, train_private
from fedhealth.privacy.ledger import BudgetExceeded, PrivacyLedger
from fedhealth.training import TrainResult


@dataclass
class PrivateRound:
    result: TrainResult | None = None
    declined: str = ""  # why the hospital declined the round; empty when it trained
    epsilon: float = 0.0  # cumulative epsilon at the study's delta after this round
    metrics: dict[str, float] = field(default_factory=dict)


@lru_cache(maxsize=1024)
def _calibrated(target_epsilon: float, delta: float, q: float, steps: int) -> float:
    return calibrate_noise(target_epsilon, delta, q, steps)


def noise_for(cfg: StudyConfig, n_train: int) -> float:
    """The noise multiplier: as configured, or calibrated so that all planned rounds spend the target."""
    if cfg.privacy.noise_multiplier is not None:
        return cfg.privacy.noise_multiplier
    assert cfg.privacy.target_epsilon is not None
    q = sample_rate(n_train, cfg.training.batch_size)
    planned = cfg.federation.rounds * cfg.training.local_epochs * steps_per_epoch(n_train, cfg.training.batch_size)
    return _calibrated(cfg.privacy.target_epsilon, cfg.privacy_delta(), q, planned)


def train_with_budget(cfg: StudyConfig, split: HospitalSplit, model: nn.Module, server_round: int,
                      ledger_dir: str, seed: int, cap: float) -> PrivateRound:
    """`cap` is the hospital's epsilon cap as its own policy sets it (the caller resolves who wins)."""
    if not ledger_dir:
        raise ValueError("record-level DP needs a ledger location; the server sent none")
    n = len(split.y_train)
    batch = cfg.training.batch_size
    q = sample_rate(n, batch)
    steps = cfg.training.local_epochs * steps_per_epoch(n, batch)
    try:
        ledger = PrivacyLedger(Path(ledger_dir) / f"{split.hospital.name}.json", split.hospital.name,
                               cap, cfg.privacy_delta())
    except ValueError as err:  # unreadable, altered, another hospital's, another delta: train nothing
        return PrivateRound(declined=str(err))
    # A calibrated noise multiplier is fixed for the study: reuse the one the ledger recorded rather
    # than calibrating again in every process (seconds of RDP evaluations each time).
    study = f"{cfg.name}:{cfg.fingerprint()}"
    own = ledger.study_entries(study)
    sigma = own[0].noise_multiplier if (own and cfg.privacy.noise_multiplier is None) else noise_for(cfg, n)
    before = ledger.spent
    try:
        entry = ledger.charge(server_round, sigma, q, steps, cfg.privacy.max_grad_norm, study=study)
    except BudgetExceeded as refusal:
        return PrivateRound(declined=str(refusal), epsilon=ledger.spent)
    result, taken = train_private(model, split.x_train, split.y_train, epochs=cfg.training.local_epochs,
                                  batch_size=batch, learning_rate=cfg.training.learning_rate,
                                  momentum=cfg.training.momentum, noise_multiplier=sigma,
                                  max_grad_norm=cfg.privacy.max_grad_norm, seed=seed)
    if taken != steps:
        raise RuntimeError(f"DP-SGD took {taken} steps but the ledger charged {steps}")
    return PrivateRound(result=result, epsilon=entry.epsilon,
                        metrics={"epsilon": entry.epsilon, "epsilon_charged": max(0.0, entry.epsilon - before),
                                 "delta": entry.delta, "noise_multiplier": sigma})
