"""One hospital's private round: identify the release, check the cap, charge the ledger, train, store.

The order is the guarantee, and the ledger's lock covers all of it:
1. the release key (study, round, hash of the model received, training settings) is computed;
2. a key the ledger already charged is a retry: the stored, byte-identical update is returned, at no cost;
3. otherwise the release is charged (on disk, fsync'ed) before a single gradient is computed, or refused
   at the cap; a round older than one this study charged is refused for this request only;
4. DP-SGD trains with noise and sampling seeded from the hospital's own secret, never from the server;
5. the update is stored under its key before it is returned, so it can leave only as a charged release.

What the caller may send to the server is in `PrivateRound.shared`; `PrivateRound.local` stays at the
hospital (its log and audit trail): the training loss, the steps, the exact record count and everything
about its other studies and its cap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from torch import nn

from fedhealth.data.hospitals import HospitalSplit
from fedhealth.durable import inside
from fedhealth.privacy.dp import DPSchedule, calibrate_noise, dp_schedule, train_private
from fedhealth.privacy.ledger import BudgetExceeded, LedgerEntry, LedgerError, PrivacyLedger, StaleRound, epsilon_of
from fedhealth.privacy.release import ReleaseStore, model_hash, release_key
from fedhealth.privacy.secret import HospitalSecret, SecretError, secret_path
from fedhealth.study.config import StudyConfig

# Reasons the server may see: no path, no count, no value of the hospital's (those stay in its own log).
BUDGET_REASON = "the hospital's privacy budget does not allow this round"
LEDGER_REASON = "the hospital's privacy ledger or secret cannot be used; its data-protection officer must check it"
STALE_REASON = "the round is older than one this study already released"
MISSING_RELEASE_REASON = "this release was charged but its stored update is missing; the hospital will not retrain it"


@dataclass
class PrivateRound:
    weights: list[np.ndarray] | None = None  # the model to send (None: declined)
    declined: str = ""  # why, in words that may leave the hospital; empty when it trained
    detail: str = ""  # why, in full: the hospital's log and audit trail only
    shared: dict[str, float] = field(default_factory=dict)  # figures that may leave (public functions of the config)
    local: dict[str, float] = field(default_factory=dict)  # figures that stay at the hospital


@lru_cache(maxsize=1024)
def _calibrated(target_epsilon: float, delta: float, q: float, steps: int) -> float:
    return calibrate_noise(target_epsilon, delta, q, steps)


def public_train_records(cfg: StudyConfig, index: int) -> int:
    """The training-set size DP-SGD's schedule is derived from: the hospital's *declared* records (in the
    study config, so public) times the training share. Its private, actual count never enters it."""
    h = cfg.hospitals[index]
    if h.records is None:
        raise ValueError(f"hospital {h.name!r}: record-level DP needs the study to declare its `records`")
    return max(1, round(h.records * (1.0 - cfg.training.test_fraction)))


def schedule_for(cfg: StudyConfig, index: int) -> DPSchedule:
    return dp_schedule(public_train_records(cfg, index), cfg.training.batch_size)


def noise_for(cfg: StudyConfig, index: int) -> float:
    """The noise multiplier: as configured, or calibrated so that all planned rounds spend the target."""
    if cfg.privacy.noise_multiplier is not None:
        return cfg.privacy.noise_multiplier
    assert cfg.privacy.target_epsilon is not None
    schedule = schedule_for(cfg, index)
    planned = cfg.federation.rounds * cfg.training.local_epochs * schedule.steps_per_epoch
    return _calibrated(cfg.privacy.target_epsilon, cfg.privacy_delta(), schedule.sample_rate, planned)


def study_id(cfg: StudyConfig) -> str:
    return f"{cfg.name}:{cfg.fingerprint()}"


def training_settings(cfg: StudyConfig, index: int, cap: float) -> dict:
    """Everything of the study that shapes this hospital's computation, for its release key."""
    return {"hospital": cfg.hospitals[index].name, "model": cfg.model.model_dump(mode="json"),
            "training": cfg.training.model_dump(mode="json"), "privacy": cfg.privacy.model_dump(mode="json"),
            "cap": cap}


def _study_epsilon(ledger: PrivacyLedger, study: str) -> float:
    """Epsilon of this study's releases alone: a public function of its config and rounds, so it may leave."""
    own = ledger.study_entries(study)
    if own and len(own) == len(ledger.history("record")):  # only this study: the ledger's own figure
        return own[-1].epsilon
    return epsilon_of([(e.noise_multiplier, e.sample_rate, e.steps) for e in own], ledger.delta)


def _figures(ledger: PrivacyLedger, entry: LedgerEntry, study: str, charged: float) -> tuple[dict, dict]:
    shared = {"epsilon": _study_epsilon(ledger, study), "delta": entry.delta,
              "noise_multiplier": entry.noise_multiplier}
    local = {"epsilon_total": ledger.spent, "epsilon_charged": charged, "epsilon_cap": ledger.cap}
    return shared, local


def train_with_budget(cfg: StudyConfig, split: HospitalSplit, model: nn.Module, received: list[np.ndarray],
                      server_round: int, ledger_dir: str, cap: float, *, noise: float | None = None,
                      terms: str = "", before_write: Callable[[PrivacyLedger], None] | None = None) -> PrivateRound:
    """Release this round's update under record-level DP, or decline it. `cap` is the hospital's epsilon cap
    as its own policy sets it (the caller resolves who wins); `received` is the global model it was sent.

    `noise`, `terms`, `before_write`: the study's privacy terms as the hospital fixed them
    (`fedhealth.privacy.terms.FixedTerms`): the noise multiplier fixed at the study's first charge (used
    as is, never calibrated again), the terms' digest recorded in the charge, and what binds the terms
    to the ledger under its lock before the charge is written."""
    from fedhealth.model import get_weights
    from fedhealth.model.outcomes import study_loss

    if not ledger_dir:
        raise ValueError("record-level DP needs a ledger location; the hospital has none configured")
    name = split.hospital.name
    folder = Path(ledger_dir)
    schedule = schedule_for(cfg, split.index)
    steps = cfg.training.local_epochs * schedule.steps_per_epoch
    study = study_id(cfg)
    key = release_key(study, server_round, model_hash(received), training_settings(cfg, split.index, cap))
    store = ReleaseStore(folder, name)
    try:
        secret = HospitalSecret.load_or_create(secret_path(folder, name))
        with PrivacyLedger.locked(inside(folder, f"{name}.json"), name, cap, cfg.privacy_delta()) as ledger:
            earlier = ledger.release_entry(key)
            if earlier is not None:  # a retry of a release already paid for: the same bytes, no new cost
                stored = store.get(key)
                if stored is None:
                    return PrivateRound(declined=MISSING_RELEASE_REASON,
                                        detail=f"hospital {name}: release {key[:12]} of round {server_round} is "
                                               f"charged but {store.root} lacks it")
                shared, local = _figures(ledger, earlier, study, 0.0)
                return PrivateRound(weights=stored, shared=shared, local={**local, "retry": 1.0})
            # A calibrated noise multiplier is fixed for the study: reuse the one the ledger recorded rather
            # than calibrating again in every process (seconds of RDP evaluations each time).
            own = ledger.study_entries(study)
            if noise is not None:
                sigma = noise
            else:
                sigma = own[0].noise_multiplier if (own and cfg.privacy.noise_multiplier is None) \
                    else noise_for(cfg, split.index)
            before = ledger.spent
            entry = ledger.charge(server_round, sigma, schedule.sample_rate, steps, cfg.privacy.max_grad_norm,
                                  study=study, release=key, terms=terms, before_write=before_write)
            result, taken = train_private(
                model, split.x_train, split.y_train, epochs=cfg.training.local_epochs, schedule=schedule,
                learning_rate=cfg.training.learning_rate, momentum=cfg.training.momentum, noise_multiplier=sigma,
                max_grad_norm=cfg.privacy.max_grad_norm, noise_seed=secret.seed("dp-sgd-noise", key),
                sampling_seed=secret.seed("dp-sgd-sampling", key), loss=study_loss(cfg))
            if taken != steps:  # cannot happen with dp_schedule's integer steps; never send if it does
                raise RuntimeError(f"DP-SGD took {taken} steps but the ledger charged {steps}")
            weights = get_weights(model)
            store.put(key, weights)
            shared, local = _figures(ledger, entry, study, entry.epsilon - before)
    except BudgetExceeded as refusal:
        return PrivateRound(declined=BUDGET_REASON, detail=str(refusal))
    except StaleRound as stale:
        return PrivateRound(declined=STALE_REASON, detail=str(stale))
    except (LedgerError, SecretError) as err:  # unreadable, altered, another hospital's, another delta
        return PrivateRound(declined=LEDGER_REASON, detail=str(err))
    local.update({"train_loss": result.mean_loss, "train_steps": float(result.steps),
                  "train_seconds": result.seconds, "n_train": float(len(split.y_train))})
    return PrivateRound(weights=weights, shared=shared, local=local)


def charge_hospital_release(cfg: StudyConfig, split: HospitalSplit, received: list[np.ndarray], server_round: int,
                            ledger_dir: str, cap: float, *, terms: str = "",
                            before_write: Callable[[PrivacyLedger], None] | None = None) -> PrivateRound | None:
    """Record a hospital-level release in the hospital's ledger (unit "hospital") before it leaves; a
    PrivateRound with the decline when it would pass `cap`, else None (go ahead).

    Why: hospital-level epsilon is about this hospital's participation, and a hospital takes part in many
    studies: its ledger composes them, as it does record-level releases. Each request is charged (a nonce
    in the key): its noise share is drawn afresh, so even a retry is a new release. The epsilon is the one
    the study announces (noise multiplier at q = 1, one step per round); in `central` mode the server adds
    that noise, and the hospital cannot check that it did (see docs/threat-model.md). `terms` and
    `before_write`: as for `train_with_budget`."""
    import secrets as _secrets

    from fedhealth.privacy.hospital_level import hospital_noise

    if not ledger_dir:
        return None  # a simulation without a run directory, or a node without a ledger-dir: nothing to compose
    name = split.hospital.name
    study = study_id(cfg)
    key = release_key(study, server_round, model_hash(received),
                      {**training_settings(cfg, split.index, cap), "nonce": _secrets.token_hex(16)})
    try:
        ledger = PrivacyLedger(inside(ledger_dir, f"{name}.json"), name, math.inf, cfg.privacy_delta(),
                               hospital_cap=cap)
        ledger.charge(server_round, hospital_noise(cfg), 1.0, 1, cfg.privacy.clipping_norm, study=study,
                      release=key, unit="hospital", terms=terms, before_write=before_write)
    except BudgetExceeded as refusal:
        return PrivateRound(declined=BUDGET_REASON, detail=str(refusal))
    except StaleRound as stale:
        return PrivateRound(declined=STALE_REASON, detail=str(stale))
    except (LedgerError, SecretError) as err:
        return PrivateRound(declined=LEDGER_REASON, detail=str(err))
    return None
