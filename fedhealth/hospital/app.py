"""The hospital side: a Flower NumPyClient that trains and evaluates on its own records only.

What leaves the hospital depends on the privacy mode (see `HospitalClient.fit`): never a record, a
prediction or a label, and under DP nothing DP does not cover but the held-out test figures.

torch, the model and the data loader are imported where they are used, not here: on the deployment
engine every message runs in a fresh process that imports this module, and three of a SecAgg+ round's
five messages (key set-up, key shares, unmasking) never reach the model. Importing torch costs those
processes about 2.5 s of CPU each.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from pathlib import Path

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, NDArrays, Scalar

from fedhealth.errors import HospitalRefusedError
from fedhealth.hospital.identity import check_own_schema, resolve_hospital
from fedhealth.hospital.node_config import Mode, NodeConfigError, NodeSettings, settings_of
from fedhealth.model.qffl import LOSS_KEY
from fedhealth.privacy.terms import TERMS_REASON, FixedTerms, TermsChanged, check_terms
from fedhealth.seeding import derive_seed
from fedhealth.study.config import StudyConfig
from fedhealth.study.policy import SitePolicy, effective_cap, hospitals_per_round, policy_violation
from fedhealth.wire import (
    DECLINED_KEY,
    HOSPITAL_KEY,
    LEDGER_DIR_KEY,
    LOCAL_PREFIX,
    ROUND_KEY,
    SECURE_KEY,
    study_from_payload,
)

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

log = logging.getLogger(__name__)


class NonFiniteUpdateError(HospitalRefusedError, RuntimeError):
    """Raised instead of sending an update that holds NaN or infinite values."""


# No model this project trains comes near it; a server that sends larger weights is crafting overflows
# (to make one record's gradient, and so the hospital's reply, depend on whether it was sampled).
MAX_RECEIVED_WEIGHT = 1e5


def implausible_model(parameters: NDArrays) -> bool:
    """Whether the global model received holds NaN, infinities or weights above MAX_RECEIVED_WEIGHT."""
    return any(not np.all(np.isfinite(w)) or (w.size and float(np.abs(w).max()) > MAX_RECEIVED_WEIGHT)
               for w in (np.asarray(p) for p in parameters))


class HospitalClient(NumPyClient):
    """One hospital. `index` is its position in the study's hospital list.

    `policy` and `ledger_dir` are the hospital's own (from its node config, in deployment): when
    given they win over anything the server sends.
    """

    def __init__(self, node: int | Context | NodeSettings, policy: SitePolicy | None = None, ledger_dir: str = "",
                 data_file: str | None = None, schema_file: str | None = None) -> None:
        """`node`: the node's Flower context, or (tests, simulation) the hospital's index in the study."""
        self.settings = NodeSettings.simulated_hospital(node) if isinstance(node, int) else settings_of(node)
        self.own_policy = policy
        self.own_ledger_dir = ledger_dir
        self.data_file = data_file
        self.schema_file = schema_file
        self.index = -1

    @property
    def simulated(self) -> bool:
        """A simulated hospital (`fedhealth.hospital.node_config` says how the mode is decided)."""
        return self.settings.simulated

    def _policy(self, cfg: StudyConfig) -> SitePolicy | None:
        """The hospital's own policy file wins; a deployed hospital without one gets the safe defaults
        (`SitePolicy()`); a simulated hospital may carry one inline in the study."""
        if self.own_policy is not None:
            return self.own_policy
        return cfg.hospitals[self.index].policy if self.simulated else SitePolicy()

    def _declined(self, received: NDArrays, reason: str, detail: str = "") -> tuple[NDArrays, int, dict[str, Scalar]]:
        """A decline: the model received goes back untouched with weight 0. `reason` may reach the server
        (no path, count or value of the hospital's); `detail` stays in its log and audit trail."""
        log.warning("hospital %s declines: %s", self.index, detail or reason)
        local = {f"{LOCAL_PREFIX}detail": detail} if detail else {}
        return received, 0, {HOSPITAL_KEY: self.index, DECLINED_KEY: reason, **local}

    def _model(self, config: dict[str, Scalar], parameters: NDArrays):
        from fedhealth.data.hospitals import load_hospital
        from fedhealth.model import set_weights
        from fedhealth.model.outcomes import build_study_model

        cfg = study_from_payload(config)
        self.index = resolve_hospital(self.settings, cfg)
        self._own_schema(cfg)
        split = load_hospital(cfg, self.index, self.data_file)
        model = build_study_model(cfg, split.x_train.shape[1], seed=cfg.seed)
        set_weights(model, parameters)
        return cfg, split, model

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Train on this hospital's records and return the new weights, or decline (no weights, weight 0).

        What leaves the hospital, by privacy mode (docs/privacy.md lists it too):
        record-level DP: the DP-SGD model, the study's public training-set size as FedAvg weight, and this
        study's epsilon, delta and noise multiplier (public functions of the config); hospital-level DP:
        the clipped model update, weight 1; no DP: the model, the training-record count, the training loss.
        Everything else (loss, steps, time, exact counts, the hospital's total epsilon) stays in
        `local.*` metrics, which the hospital's audit mod records and removes."""
        if study_from_payload(config).describe is not None:
            return self._describe(parameters, config)
        from fedhealth.model import get_weights
        from fedhealth.model.outcomes import study_loss
        from fedhealth.model.training import evaluate, mean_loss

        cfg, split, model = self._model(config, parameters)
        server_round = int(config.get(ROUND_KEY, 0))
        participants = cfg.federation.participants
        if participants is not None and split.hospital.name not in participants:
            # A coalition study (e.g. for contribution): this hospital evaluates but does not train.
            return self._declined(parameters, "this hospital is not in federation.participants")
        if implausible_model(parameters):
            # Checked before anything is charged or trained: the refusal depends on the server's input only.
            return self._declined(parameters, "the global model received holds non-finite or implausibly "
                                              "large weights; declining this round")
        policy = self._policy(cfg)
        secure = bool(config.get(SECURE_KEY, False))
        from fedhealth.privacy.round import public_train_records

        violation = policy_violation(
            policy, model=cfg.model.name, dp_mode=cfg.privacy.mode, delta=cfg.privacy_delta(),
            hospitals_per_round=hospitals_per_round(len(cfg.hospitals), cfg.federation.strategy.fraction_fit),
            # the declared size, never the true count: the refusal must not tell the server how many records
            secure=secure, records=public_train_records(cfg, self.index))
        if violation:
            return self._declined(parameters, f"{violation}; declining this round")
        fixed = self._terms(cfg, policy, server_round, config)  # checked before anything is charged or written
        if isinstance(fixed, tuple):
            return self._declined(parameters, *fixed)
        bound = {} if fixed is None or fixed.terms["mode"] == "none" else \
            {"terms": fixed.digest, "before_write": fixed.bind}  # fixed only by a charge the ledger accepts
        shared: dict[str, Scalar] = {}
        local: dict[str, Scalar] = {}
        if cfg.privacy.mode == "record":
            from fedhealth.privacy.round import train_with_budget

            ledger_dir = self._ledger_dir(config)
            cap = effective_cap(policy, cfg.privacy.max_epsilon)
            try:
                outcome = train_with_budget(cfg, split, model, list(parameters), server_round, ledger_dir, cap,
                                            noise=fixed.noise if fixed is not None else None, **bound)
            except TermsChanged as err:  # fixed by another request of the study between the check and the charge
                return self._declined(parameters, TERMS_REASON + "; declining this round", str(err))
            if outcome.weights is None:
                return self._declined(parameters, outcome.declined, outcome.detail)
            weights, shared, local = outcome.weights, dict(outcome.shared), dict(outcome.local)
            # FedAvg's weight: the declared (public) training-set size, never the exact private count.
            weight = public_train_records(cfg, self.index)
        else:
            if cfg.privacy.mode == "hospital":
                from fedhealth.privacy.round import charge_hospital_release

                ledger_dir = self._ledger_dir(config)
                cap = policy.max_hospital_epsilon if policy is not None and policy.max_hospital_epsilon else math.inf
                try:
                    refused = charge_hospital_release(cfg, split, list(parameters), server_round, ledger_dir, cap,
                                                      **bound)
                except TermsChanged as err:
                    return self._declined(parameters, TERMS_REASON + "; declining this round", str(err))
                if refused is not None:
                    return self._declined(parameters, refused.declined, refused.detail)
            qffl = cfg.federation.strategy.name == "qfedavg"
            if qffl:
                # q-FedAvg weighs this hospital by its loss at the model it received (see federation.qffl).
                shared[LOSS_KEY] = (evaluate(model, split.x_train, split.y_train).loss if split.kind == "binary"
                                    else mean_loss(model, split.x_train, split.y_train, study_loss(cfg)))
            seed = derive_seed(cfg.seed, "fit", self.index, server_round)  # no DP: nothing secret to protect
            result = self._train_plain(cfg, split, model, parameters, config, seed)
            weights = get_weights(model)
            figures = {"train_loss": result.mean_loss, "train_steps": result.steps, "train_seconds": result.seconds}
            if cfg.privacy.mode == "hospital":
                # Hospital-level DP covers the clipped update only: the loss and steps stay home, and every
                # hospital weighs 1 (a record-count weight would raise a hospital's sensitivity).
                local.update(figures)
                weight = 1
            else:
                shared.update(figures)
                # q-FedAvg sums its terms unweighted: the loss weighting is inside them.
                weight = 1 if qffl else len(split.y_train)
                if not secure:  # under SecAgg+ the record count travels only inside the masked sum
                    shared["n_train"] = len(split.y_train)
        bad = [i for i, w in enumerate(weights) if not np.all(np.isfinite(w))]
        if bad and cfg.privacy.mode == "hospital":
            # An error here would tell the server something about the records outside the DP release; a zero
            # update is within the clipping norm, so sending it is covered by hospital-level DP.
            log.warning("hospital %s: non-finite update in round %d; sending a zero update", self.index, server_round)
            weights, local = [np.array(p, copy=True) for p in parameters], {**local, "non_finite_update": 1}
        elif bad:
            raise NonFiniteUpdateError(
                f"hospital {split.hospital.name}: update has non-finite values in parameter arrays {bad} "
                f"(round {server_round}); not sending it. Lower training.learning_rate."
            )
        local_keys = {f"{LOCAL_PREFIX}{k}": v for k, v in local.items()}
        return weights, weight, {HOSPITAL_KEY: self.index, **shared, **local_keys}

    def _describe(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """A cohort description instead of training (`fedhealth.hospital.describe`: what it checks, charges
        and sends)."""
        from fedhealth.hospital.describe import as_reply, describe_cohort

        cfg = study_from_payload(config)
        self.index = resolve_hospital(self.settings, cfg)
        self._own_schema(cfg)
        described = describe_cohort(cfg, self.index, parameters, config, policy=self._policy(cfg),
                                    simulated=self.simulated, ledger_dir=self._ledger_dir(config),
                                    data_file=self.data_file)
        if described.declined:
            return self._declined(parameters, described.declined, described.detail)
        return as_reply(self.index, described)

    def _own_schema(self, cfg: StudyConfig) -> None:
        """The study's schema must be the hospital's own copy (node config `schema-file`), checked before a
        record is read. A deployed hospital without one takes part in no study of files: the server's schema
        would decide which checks run on its records, and whether the file passes them is a fact about the
        records that an error reply would tell the server, uncharged (one bit per request)."""
        from fedhealth.hospital.guard import HospitalRefusal

        if self.schema_file:
            check_own_schema(cfg, self.schema_file, cfg.hospitals[self.index].name)
        elif cfg.study_schema is not None and not self.simulated:
            raise HospitalRefusal("this hospital's node config names no schema-file (its own copy of the study "
                                  "schema), so it takes part in no study of files; its IT must add it")

    def _ledger_dir(self, config: dict[str, Scalar]) -> str:
        """The hospital's own ledger folder; the server's location only in simulation (in deployment it is
        not the hospital's disk)."""
        return self.own_ledger_dir or (str(config.get(LEDGER_DIR_KEY, "")) if self.simulated else "")

    def _terms(self, cfg: StudyConfig, policy: SitePolicy | None, server_round: int,
               config: dict[str, Scalar]) -> FixedTerms | tuple[str, str] | None:
        """The privacy terms this request runs under (`fedhealth.privacy.terms`), or (reason, detail) when it
        asks for other terms than those this hospital fixed for the study's name, or when its terms file or
        ledger cannot be trusted. None: no ledger folder, nothing fixed and nothing can be. Writes nothing:
        the terms are fixed by the ledger's charge (`FixedTerms.bind`), so a declined round fixes nothing."""
        from fedhealth.privacy.ledger import LedgerError
        from fedhealth.privacy.round import LEDGER_REASON

        folder = self._ledger_dir(config)
        if not folder:
            return None  # no ledger folder: nothing was fixed and nothing can be (a node without ledger-dir)
        if cfg.privacy.mode == "hospital":
            cap = policy.max_hospital_epsilon if policy is not None and policy.max_hospital_epsilon else math.inf
        else:
            cap = effective_cap(policy, cfg.privacy.max_epsilon)
        try:
            return check_terms(Path(folder), cfg.hospitals[self.index].name, cfg, self.index, server_round, cap)
        except TermsChanged as err:
            return TERMS_REASON + "; declining this round", str(err)
        except LedgerError as err:  # the terms file or the ledger: whether the study was private cannot be told
            return LEDGER_REASON, str(err)

    @staticmethod
    def _train_plain(cfg, split, model, parameters: NDArrays, config: dict[str, Scalar], seed: int):
        from fedhealth.model.outcomes import study_loss
        from fedhealth.model.training import train

        mu = float(config.get("proximal_mu", 0.0))  # FedProx puts it in the fit config
        return train(
            model, split.x_train, split.y_train,
            epochs=cfg.training.local_epochs,
            batch_size=cfg.training.batch_size,
            learning_rate=cfg.training.learning_rate,
            momentum=cfg.training.momentum,
            weight_decay=cfg.training.weight_decay,
            seed=seed,
            proximal_mu=mu,
            anchor=parameters if mu > 0 else None,
            loss=study_loss(cfg),
        )

    def evaluate(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[float, int, dict[str, Scalar]]:
        """Figures of the global model on this hospital's held-out test records.

        These leave the hospital under every mode and no DP covers them (see docs/threat-model.md: the
        server chooses the split and the models evaluated, so evaluation is a query channel a site that
        must not expose it closes with its policy's `share_evaluation = false`). The weight is the
        study's public test-set size (declared records minus the public training size), not the count."""
        from fedhealth.hospital.guard import HospitalRefusal
        from fedhealth.model.training import evaluate
        from fedhealth.privacy.round import public_train_records

        if study_from_payload(config).describe is not None:
            raise HospitalRefusal("a cohort description has no model to evaluate; this hospital evaluates nothing "
                                  "for it")
        cfg, split, model = self._model(config, parameters)
        policy = self._policy(cfg)
        if policy is not None and not policy.share_evaluation:
            raise HospitalRefusal("this hospital's site policy does not share evaluation figures")
        if implausible_model(parameters):
            raise HospitalRefusal("the global model received holds non-finite or implausibly large weights")
        n = len(split.y_test)
        if cfg.hospitals[self.index].records is not None:
            n = max(1, int(cfg.hospitals[self.index].records) - public_train_records(cfg, self.index))
        if split.kind == "time_to_event":
            return self._evaluate_survival(cfg, split, model, n)
        if split.kind in ("multiclass", "continuous"):
            return self._evaluate_outcome(cfg, split, model, n)
        m = evaluate(model, split.x_test, split.y_test)
        return m.loss, n, {HOSPITAL_KEY: self.index, "auroc": m.auroc, "auprc": m.auprc,
                           "accuracy": m.accuracy, "brier": m.brier}

    def _evaluate_survival(self, cfg: StudyConfig, split, model, n: int) -> tuple[float, int, dict[str, Scalar]]:
        """A time-to-event model's figures on this hospital's test records: Harrell's and Uno's C, the
        integrated Brier score and the mean time-dependent AUROC over the study's horizons; NaN where the test
        records cannot give one (no event, a horizon outside their follow-up). The censoring weights come from
        this hospital's own training records, and so does a Cox model's baseline hazard (a federated Cox model
        is stratified by hospital: shared coefficients, each site its own baseline)."""
        from fedhealth.metrics.survival_model import survival_figures
        from fedhealth.model.outcomes import baseline_records, edges, horizons, predict, study_loss
        from fedhealth.model.training import mean_loss

        curves = predict(cfg, model, split.x_test, baseline_records(cfg, [split]))
        f = survival_figures(split.time_test, split.event_test, curves, edges(cfg), horizons(cfg), split.time_train,
                             split.event_train)
        loss = mean_loss(model, split.x_test, split.y_test, study_loss(cfg))
        return loss, n, {HOSPITAL_KEY: self.index, "c_index": f.c_index, "uno_c": f.uno_c, "ibs": f.ibs,
                         "td_auroc": f.td_auroc}

    def _evaluate_outcome(self, cfg: StudyConfig, split, model, n: int) -> tuple[float, int, dict[str, Scalar]]:
        """A multi-class or continuous model's figures on this hospital's test records
        (`fedhealth.metrics.outcome_figures`); NaN where its test records cannot give one (a class absent)."""
        from fedhealth.metrics.outcome_figures import outcome_figures
        from fedhealth.model.outcomes import predict, study_loss
        from fedhealth.model.training import mean_loss

        figures = outcome_figures(cfg.outcome_kind, split.outcome_test, predict(cfg, model, split.x_test))
        loss = mean_loss(model, split.x_test, split.y_test, study_loss(cfg))
        return loss, n, {HOSPITAL_KEY: self.index, **figures}


def client_fn(context: Context):
    """The hospital's client, set up from its own node config (`fedhealth.hospital.node_config` declares
    the keys)."""
    import torch

    torch.set_num_threads(1)  # one CPU per simulated hospital; lets two train at once on 2 cores
    settings = settings_of(context)
    policy = SitePolicy.from_file(settings.policy_file) if settings.policy_file else None

    def text(path: Path | None) -> str | None:
        return str(path) if path is not None else None

    return HospitalClient(settings, policy, text(settings.ledger_dir) or "", text(settings.data_file),
                          text(settings.schema_file)).to_client()


def _leave_interrupts_to_the_driver() -> None:
    """A simulated hospital (a Ray worker) ignores SIGINT. Ctrl-C reaches every process of the terminal's
    process group at once; a hospital interrupted mid-task would answer with an error, and the round could
    be recorded without it before the driver has stopped the server. The driver stops the federation and
    ends the workers itself (`fedhealth.experiments.simulate`). Only the worker's main thread may do this;
    elsewhere the worker keeps Ray's handling."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_client_app(cfg: StudyConfig | None = None, mode: Mode | None = None) -> ClientApp:
    """The hospital's ClientApp. `cfg` (simulation only) supplies test-only injected dropouts.

    `mode`: what the caller runs (`fedhealth simulate` says "simulation"); every node's own config must
    then agree, or the node refuses to start. Without it (`clients/app.py`, under `flwr run` or a
    SuperNode) each node's mode is what its node config says (`fedhealth.hospital.node_config`)."""
    from fedhealth.hospital.audit_mod import audit_mod
    from fedhealth.hospital.guard import guard_mod
    from fedhealth.hospital.hospital_noise import clipping_mod
    from fedhealth.hospital.secure_aggregation import dropout_mod, secure_aggregation_mod, update_mod

    mods = [guard_mod, secure_aggregation_mod, audit_mod, update_mod, clipping_mod]
    if cfg is not None and cfg.testing.dropouts:
        index = {h.name: i for i, h in enumerate(cfg.hospitals)}
        faults = [(index[d.hospital], d.stage, tuple(d.rounds)) for d in cfg.testing.dropouts]
        log.warning("testing.dropouts: injecting %d hospital dropout(s); not a real study", len(faults))
        mods.insert(0, dropout_mod(faults))
    if mode is None:
        return ClientApp(client_fn=client_fn, mods=mods)

    def client_in_mode(context: Context):
        if mode == "simulation":
            _leave_interrupts_to_the_driver()
        settings = settings_of(context)
        if settings.mode != mode:
            raise NodeConfigError(f"this ClientApp runs a {mode}, but the node config describes a "
                                  f"{settings.mode} hospital")
        return client_fn(context)

    return ClientApp(client_fn=client_in_mode, mods=mods)
