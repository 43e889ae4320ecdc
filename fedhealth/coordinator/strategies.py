"""Flower's own strategies (FedAvg, FedProx, FedAdam, q-FedAvg), built by name from the study config."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.common import Scalar, ndarrays_to_parameters
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    Strategy,
)

from fedhealth.study.config import StudyConfig

STRATEGY_NAMES = ("fedavg", "fedprox", "fedadam", "qfedavg")


def _mean_train_loss(results: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    """Record-weighted mean of the hospitals' last-epoch training loss (a figure the server may see)."""
    total = sum(n for n, _ in results)
    loss = sum(n * float(m.get("train_loss", 0.0)) for n, m in results)
    return {"train_loss": loss / total} if total else {}


def build_strategy(
    cfg: StudyConfig,
    initial_weights: list[np.ndarray],
    fit_config: Callable[[int], dict[str, Scalar]],
    evaluate_config: Callable[[int], dict[str, Scalar]],
) -> Strategy:
    """Every hospital must be connected before round 1, and every hospital evaluates every round."""
    n = len(cfg.hospitals)
    s = cfg.federation.strategy
    common = dict(
        fraction_fit=s.fraction_fit,
        # a cohort description (`describe`) has no model to evaluate: its one round is the secure sum only
        fraction_evaluate=0.0 if cfg.describe is not None else 1.0,
        min_fit_clients=max(1, int(np.ceil(s.fraction_fit * n))),
        min_evaluate_clients=1 if cfg.describe is not None else n,
        min_available_clients=n,
        initial_parameters=ndarrays_to_parameters(initial_weights),
        on_fit_config_fn=fit_config,
        on_evaluate_config_fn=evaluate_config,
        accept_failures=True,
        fit_metrics_aggregation_fn=_mean_train_loss,
        evaluate_metrics_aggregation_fn=lambda _: {},  # per-hospital figures are recorded, not averaged away
    )
    if s.name == "fedavg":
        strategy: Strategy = FedAvg(**common)
    elif s.name == "fedprox":
        strategy = FedProx(**common, proximal_mu=s.proximal_mu)
    elif s.name == "fedadam":
        strategy = FedAdam(**common, eta=s.server_learning_rate, eta_l=cfg.training.learning_rate,
                           beta_1=s.server_momentum, beta_2=s.server_second_moment, tau=s.server_tau)
    elif s.name == "qfedavg":
        from fedhealth.coordinator.qffl import QFairFedAvg

        strategy = QFairFedAvg(**common, q_param=s.q,
                               qffl_learning_rate=s.qffl_learning_rate)
    else:
        raise ValueError(f"unknown strategy {s.name!r}; choose one of {', '.join(STRATEGY_NAMES)}")
    if cfg.privacy.mode == "hospital" and cfg.privacy.hospital_noise == "central":
        from fedhealth.privacy.hospital_level import hospital_noise

        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy, noise_multiplier=hospital_noise(cfg), clipping_norm=cfg.privacy.clipping_norm,
            num_sampled_clients=common["min_fit_clients"])
    return strategy


def base_strategy(strategy: Strategy) -> Strategy:
    """The Flower strategy that holds the optimiser state, under any DP wrapper."""
    return strategy.strategy if isinstance(strategy, DifferentialPrivacyClientSideFixedClipping) else strategy


def optimizer_state(strategy: Strategy) -> dict[str, list[np.ndarray]]:
    """Server-side optimiser state that a checkpoint must keep for resume to be exact (FedAdam's moments)."""
    strategy = base_strategy(strategy)
    if isinstance(strategy, FedAdam) and strategy.m_t is not None:
        return {"m_t": list(strategy.m_t), "v_t": list(strategy.v_t or [])}
    if is_qffl(strategy):
        return {"qffl_scale": [np.array([strategy.scale])]}
    return {}


def is_qffl(strategy: Strategy) -> bool:
    """q-FedAvg: hospitals send q-FFL terms (see `fedhealth.coordinator.qffl`), not plain updates."""
    from fedhealth.coordinator.qffl import QFairFedAvg

    return isinstance(base_strategy(strategy), QFairFedAvg)


def restore_optimizer_state(strategy: Strategy, state: dict[str, list[np.ndarray]]) -> None:
    strategy = base_strategy(strategy)
    if isinstance(strategy, FedAdam) and "m_t" in state:
        strategy.m_t = [np.asarray(a) for a in state["m_t"]]
        strategy.v_t = [np.asarray(a) for a in state["v_t"]]
    if is_qffl(strategy) and "qffl_scale" in state:
        strategy.scale = float(np.asarray(state["qffl_scale"][0]).reshape(-1)[0])
