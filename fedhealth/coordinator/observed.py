"""A strategy wrapper that checks every update and records every result, then defers to Flower's.

Why a wrapper rather than a subclass: the same checks and bookkeeping apply to FedAvg, FedProx and
FedAdam alike, and the aggregation itself stays Flower's own code.

Hospitals send updates (new minus received weights), not weights: under SecAgg+ an update has a
known range to quantise into. The wrapper adds the global model back before Flower's strategy sees
them, so FedAvg, FedProx and FedAdam get the weights they expect.

Under SecAgg+ (`secure=True`) the server never holds one hospital's update: every result carries
the same unmasked, already weighted mean, and the clear part of each reply (hospital index,
training loss, epsilon) is what the run directory records per hospital. A hospital that declines a
secure round drops out of it: its error reply names only its index and a category of reason
(`fedhealth.wire.public_decline_reason`), recorded as declined, not as a failure.
"""

from __future__ import annotations

import numpy as np
from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy

from fedhealth.coordinator.recorder import RunRecorder
from fedhealth.wire import DECLINED_KEY, HOSPITAL_KEY


def update_problem(arrays: list[np.ndarray], shapes: list[tuple[int, ...]]) -> str | None:
    """Why an update must not enter the aggregate (wrong count, wrong shape, non-finite), or None."""
    if len(arrays) != len(shapes):
        return f"expected {len(shapes)} parameter arrays, got {len(arrays)}"
    for i, (a, shape) in enumerate(zip(arrays, shapes, strict=True)):
        if tuple(a.shape) != tuple(shape):
            return f"parameter array {i}: expected shape {tuple(shape)}, got {tuple(a.shape)}"
        if not np.all(np.isfinite(a)):
            return f"parameter array {i} holds NaN or infinite values"
    return None


def short_error(text: str, limit: int = 300) -> str:
    """The hospital's own message out of the traceback Flower and Ray wrap around it."""
    marker = "Message: "
    if marker in text:
        text = text[text.rindex(marker) + len(marker):]
        text = text.split("'>")[0].split("\n")[0]
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        text = lines[-1] if lines else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _declined(failure: object) -> tuple[int, str] | None:
    """(hospital index, category) when a failure is a hospital declining the round under SecAgg+."""
    if not isinstance(failure, BaseException):
        return None
    from fedhealth.wire import declined_from_error

    return declined_from_error(_reason(failure))


def _reason(failure: object) -> str:
    if isinstance(failure, BaseException):
        inner = failure.args[0] if failure.args else failure
        return short_error(str(getattr(inner, "reason", inner)))
    _, res = failure  # (proxy, FitRes/EvaluateRes) with a non-OK status
    return short_error(getattr(res.status, "message", str(res.status)))


class ObservedStrategy(Strategy):
    def __init__(self, inner: Strategy, recorder: RunRecorder, shapes: list[tuple[int, ...]],
                 secure: bool = False, min_contributors: int = 1, raw_updates: bool = False) -> None:
        """`min_contributors`: fewest non-declined hospitals whose updates an aggregate may be released
        from (see `fedhealth.coordinator.app.min_contributors`); in hospital-level DP also the
        fixed count the central noise is calibrated to. `raw_updates`: pass what hospitals send to
        the strategy as it is (q-FedAvg's terms), rather than adding the global model back; `shapes`
        are then the shapes of those terms."""
        self.inner = inner
        self.raw_updates = raw_updates
        self.recorder = recorder
        self.shapes = shapes
        self.secure = secure
        self.min_contributors = min_contributors
        self._global: list[np.ndarray] = []

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager
                      ) -> list[tuple[ClientProxy, FitIns]]:
        self.recorder.begin_round()
        self._global = parameters_to_ndarrays(parameters)
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def _weights(self, update: list[np.ndarray]) -> Parameters:
        if self.raw_updates:
            return ndarrays_to_parameters(update)
        return ndarrays_to_parameters([(g + u).astype(g.dtype) for g, u in zip(self._global, update, strict=True)])

    def _set_noise_count(self) -> None:
        if isinstance(self.inner, DifferentialPrivacyClientSideFixedClipping):
            # Flower's wrapper adds sigma * C / num_sampled_clients to the mean. Calibrated to the fixed,
            # announced minimum m (never to the count observed): the mean of n >= m clipped updates then
            # carries noise n * sigma * C / m >= sigma * C on the sum (see fedhealth.privacy.hospital_level).
            self.inner.num_sampled_clients = self.min_contributors

    def _record_failures(self, failures: list) -> None:
        for failure in failures:
            declined = _declined(failure)
            if declined:
                self.recorder.record_declined(*declined)
            else:
                self.recorder.record_fit_failure(_reason(failure))

    # -- SecAgg+ observer -------------------------------------------------------------------------
    def masked_vector_rejected(self, index: int | None, reason: str) -> None:
        self.recorder.record_rejected(index, reason)

    def secure_stage_seconds(self, seconds: dict[str, float]) -> None:
        self.recorder.record_stage_seconds(seconds)

    def secure_round_failed(self, reason: str, results: list[tuple[ClientProxy, FitRes]],
                            failures: list[BaseException]) -> None:
        self._record_failures(failures)
        self._record_clear_parts(results)  # trained (and charged) but not aggregated
        if not results and failures and all(_declined(f) for f in failures):
            return  # every hospital declined: their right, not a failed round ("all_declined")
        self.recorder.record_round_failure(reason)

    def _record_clear_parts(self, results: list[tuple[ClientProxy, FitRes]]) -> list[tuple[int, ClientProxy]]:
        contributors = []
        for proxy, res in results:
            index = res.metrics.get(HOSPITAL_KEY)
            if index is None:
                self.recorder.record_rejected(None, f"result carries no {HOSPITAL_KEY} (its masked vector is "
                                                    "in the sum, with its weight)")
                continue
            if DECLINED_KEY in res.metrics:
                self.recorder.record_declined(int(index), str(res.metrics[DECLINED_KEY]), res.metrics.get("epsilon"))
                continue
            contributors.append((int(index), proxy, res))
        contributors.sort(key=lambda item: item[0])
        for index, _, res in contributors:
            self.recorder.record_fit(index, None, dict(res.metrics))
        return [(index, proxy) for index, proxy, _ in contributors]

    def _aggregate_secure(self, server_round: int, results: list[tuple[ClientProxy, FitRes]]
                          ) -> tuple[Parameters | None, dict[str, Scalar]]:
        contributors = self._record_clear_parts(results)
        if not contributors:
            self.recorder.record_aggregated(False)
            return None, {}
        if len(contributors) < self.min_contributors:
            self.recorder.record_round_failure(
                f"only {len(contributors)} hospital(s) contributed an update (the others declined), "
                f"{self.min_contributors} are needed for this aggregate to hide each one (an aggregate of one is "
                "that hospital's update; distributed DP needs that many noise shares); not released")
            return None, {}
        mean_update = parameters_to_ndarrays(results[0][1].parameters)
        problem = update_problem(mean_update, self.shapes)
        if problem:
            self.recorder.record_round_failure(f"the unmasked aggregate is unusable: {problem}")
            return None, {}
        self._set_noise_count()
        merged = FitRes(status=Status(Code.OK, "secure aggregate"), parameters=self._weights(mean_update),
                        num_examples=1, metrics={})
        # Flower's strategy averages what it is given: the one unmasked mean stands for every contributor
        # (Flower's DP wrapper also checks that count against the hospitals it calibrated its noise to).
        copies = self.min_contributors if isinstance(self.inner, DifferentialPrivacyClientSideFixedClipping) else 1
        params, metrics = self.inner.aggregate_fit(server_round, [(p, merged) for _, p in contributors[:copies]], [])
        self.recorder.record_aggregated(params is not None)
        return params, metrics

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self._record_failures(failures)
        if self.secure:
            return self._aggregate_secure(server_round, results)
        accepted = []
        for proxy, res in results:
            index = res.metrics.get(HOSPITAL_KEY)
            if index is not None and DECLINED_KEY in res.metrics:
                self.recorder.record_declined(int(index), str(res.metrics[DECLINED_KEY]),
                                              res.metrics.get("epsilon"))
                continue
            problem = update_problem(parameters_to_ndarrays(res.parameters), self.shapes)
            if index is None:
                problem = problem or f"result carries no {HOSPITAL_KEY}"
            if problem:
                self.recorder.record_rejected(None if index is None else int(index), problem)
                continue
            accepted.append((int(index), proxy, res))
        # Sum in hospital order, not arrival order: the aggregate is bit-identical whatever Ray does.
        accepted.sort(key=lambda item: item[0])
        for index, _, res in accepted:
            self.recorder.record_fit(index, res.num_examples, dict(res.metrics))
        if not accepted:
            self.recorder.record_aggregated(False)
            return None, {}
        if len(accepted) < self.min_contributors:
            self.recorder.record_round_failure(
                f"only {len(accepted)} hospital(s) contributed an update, {self.min_contributors} are needed "
                "(hospital-level DP noise is calibrated to privacy.min_contributors); not released")
            return None, {}
        self._set_noise_count()
        as_weights = [(p, FitRes(status=r.status, parameters=self._weights(parameters_to_ndarrays(r.parameters)),
                                 num_examples=r.num_examples, metrics=r.metrics)) for _, p, r in accepted]
        params, metrics = self.inner.aggregate_fit(server_round, as_weights, [])
        self.recorder.record_aggregated(params is not None)
        return params, metrics

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager
                           ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]], failures: list
                           ) -> tuple[float | None, dict[str, Scalar]]:
        for failure in failures:
            self.recorder.record_evaluate_failure(_reason(failure))
        total, weighted = 0, 0.0
        for _, res in results:
            index = res.metrics.get(HOSPITAL_KEY)
            if index is None:
                self.recorder.record_evaluate_failure(f"evaluation result carries no {HOSPITAL_KEY}")
                continue
            metrics = {k: v for k, v in res.metrics.items() if k != HOSPITAL_KEY}
            self.recorder.record_evaluation(int(index), float(res.loss), int(res.num_examples), metrics)
            total += res.num_examples
            weighted += res.num_examples * res.loss
        return (weighted / total if total else None), {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None  # the server holds no patient data: all evaluation is federated
