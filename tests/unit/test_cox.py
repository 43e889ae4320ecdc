"""The Cox proportional-hazards model of a time-to-event study (`model.survival = "cox"`, issue 18 item 2): its
loss is Breslow's partial likelihood, pooled training recovers scikit-survival's coefficients, its curves use
scikit-survival's Breslow baseline, and it is refused with record-level DP, at load and at a hospital that a
server asks for it. The real federation: tests/integration/test_survival_federation.py."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedhealth.data.hospitals import load_hospital
from fedhealth.data.study_file import load_config
from fedhealth.model import build_model, set_weights
from fedhealth.model.losses import CoxPartialLikelihood, breslow_log_cumulative_hazard, cox_survival_curve
from fedhealth.model.outcomes import (
    BaselineRecords,
    baseline_records,
    build_study_model,
    edges,
    predict,
    study_loss,
    study_outputs,
)
from fedhealth.model.training import train
from fedhealth.study.config import ConfigError
from tests.support import ROOT, SMOKE, THREE_HOSPITALS

COX_CONFIG = ROOT / "configs" / "survival-cox.toml"
RECORD_DP = ["privacy.mode=record", "privacy.noise_multiplier=1.0"]
# tied times: two events and a censored record at 5, an event and a censored record at 9
TIME = np.array([5.0, 3.0, 5.0, 9.0, 1.0, 5.0, 9.0, 12.0, 7.0])
EVENT = np.array([1, 0, 1, 1, 1, 0, 0, 1, 1])
ETA = np.array([0.4, -1.2, 0.9, 0.1, -0.3, 2.0, -0.7, 0.5, 1.3])


def _breslow_by_loop(eta: np.ndarray, time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Each record's negative Breslow partial log-likelihood term, written as the O(n^2) definition."""
    terms = np.zeros(len(eta))
    for i in range(len(eta)):
        if event[i]:
            at_risk = sum(math.exp(eta[j]) for j in range(len(eta)) if time[j] >= time[i])
            terms[i] = -(eta[i] - math.log(at_risk))
    return terms


def _cohort(n: int = 600, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded proportional-hazards cohort: 4 features, exponential times, uniform censoring, times rounded up
    to 10 days (so many are tied)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    event_time = rng.exponential(200.0 / np.exp(x.astype(np.float64) @ np.array([0.8, -0.5, 0.3, 0.0])))
    censored_at = rng.uniform(20.0, 600.0, size=n)
    time = np.ceil(np.minimum(event_time, censored_at) / 10.0) * 10.0
    return x, time, (event_time <= censored_at).astype(np.int64)


def _sksurv_fit(x: np.ndarray, time: np.ndarray, event: np.ndarray):
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    return CoxPHSurvivalAnalysis(ties="breslow").fit(x.astype(np.float64), Surv.from_arrays(event.astype(bool), time))


# ---- the loss ----------------------------------------------------------------------------------------------

def test_the_loss_is_breslows_partial_likelihood_with_tied_times():
    """Each record's term is the loop's: within 5e-16 in float64, 1.3e-7 in float32."""
    loss = CoxPartialLikelihood()
    target = torch.tensor(np.stack([TIME, EVENT], axis=1))
    want = _breslow_by_loop(ETA, TIME, EVENT)
    got = loss(torch.tensor(ETA), target, reduction="none")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    assert (got[torch.tensor(EVENT == 0)] == 0).all()  # a censored record has no term of its own
    torch.testing.assert_close(loss(torch.tensor(ETA), target, reduction="sum"), torch.tensor(want.sum(),
                                                                                             dtype=torch.float64))
    torch.testing.assert_close(loss(torch.tensor(ETA), target), torch.tensor(want.mean(), dtype=torch.float64))
    # the model's (records, 1) output reads the same; float32 as training runs it
    got32 = loss(torch.tensor(ETA, dtype=torch.float32)[:, None], target.float(), reduction="none")
    np.testing.assert_allclose(got32.numpy(), want, rtol=1e-5, atol=1e-6)


def test_the_loss_does_not_depend_on_the_records_order_or_a_shift_of_every_risk():
    loss = CoxPartialLikelihood()
    target = torch.tensor(np.stack([TIME, EVENT], axis=1))
    base = loss(torch.tensor(ETA), target, reduction="none")
    order = torch.tensor([8, 2, 5, 0, 7, 1, 3, 6, 4])
    torch.testing.assert_close(loss(torch.tensor(ETA)[order], target[order], reduction="none"), base[order])
    torch.testing.assert_close(loss(torch.tensor(ETA) + 50.0, target, reduction="none"), base)
    big = loss(torch.tensor(ETA) * 400.0, target, reduction="none")  # exp(800) would overflow a plain sum
    assert torch.isfinite(big).all()


def test_the_gradient_is_the_partial_likelihoods_score():
    """d/d eta_k of the summed loss = sum over events i with k at risk of softmax weight - 1[k is the event]."""
    eta = torch.tensor(ETA, requires_grad=True)
    CoxPartialLikelihood()(eta, torch.tensor(np.stack([TIME, EVENT], axis=1)), reduction="sum").backward()
    want = np.zeros(len(ETA))
    for i in np.flatnonzero(EVENT):
        at_risk = TIME[i] <= TIME
        w = np.exp(ETA) * at_risk / np.exp(ETA[at_risk]).sum()
        want += w
        want[i] -= 1.0
    np.testing.assert_allclose(eta.grad.numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("target, message", [
    (np.array([1.0, 2.0]), r"targets must be \(records, 2\) = \[time, event\]"),
    (np.array([[-7.25, 1.0], [2.0, 0.0]]), "1 time.s. are not positive finite"),
    (np.array([[0.0, 1.0], [np.inf, 0.0]]), "2 time.s. are not positive finite"),
    (np.array([[3.0, 1.0], [2.0, 0.5]]), "1 event indicator.s. are not 0 or 1"),
])
def test_targets_the_loss_would_misread_are_refused_by_count_never_by_value(target, message):
    with pytest.raises(ValueError, match=message) as err:
        CoxPartialLikelihood().check_targets(target)
    assert "7.25" not in str(err.value) and "0.5" not in str(err.value)


# ---- pooled training and the Breslow baseline against scikit-survival -------------------------------------

def test_pooled_training_of_the_linear_cox_model_recovers_scikit_survivals_coefficients():
    """The training loop every model of a study uses (`fedhealth.model.training.train`), one batch of all the
    cohort's records (so its risk sets are the cohort's), reaches scikit-survival's Newton solution of the same
    Breslow partial likelihood: measured within 1.5e-5 (largest coefficient difference) at 200 epochs;
    asserted within 1e-4. (scikit-survival's own estimate is within 0.12 of the cohort's true coefficients.)"""
    x, time, event = _cohort()
    sk = _sksurv_fit(x, time, event)
    model = build_model("logreg", 4, [], seed=0)
    train(model, x, np.stack([time, event], axis=1).astype(np.float32), epochs=200, batch_size=len(x),
          learning_rate=1.0, momentum=0.9, loss=CoxPartialLikelihood())
    learned = model.linear.weight.detach().numpy()[0].astype(np.float64)
    np.testing.assert_allclose(learned, sk.coef_, atol=1e-4)
    assert np.abs(sk.coef_ - [0.8, -0.5, 0.3, 0.0]).max() < 0.15  # the truth, within the cohort's noise


def test_an_mlp_cox_model_trains_on_batches_and_ranks_held_out_patients_as_the_linear_solution_does():
    """The study's MLP on mini-batch risk sets (DeepSurv's training): on held-out records of the same cohort its
    log relative risk ranks within 0.03 of scikit-survival's linear solution's C-index (measured: 0.714 against
    0.730)."""
    from fedhealth.metrics.survival import harrell_c

    x, time, event = _cohort(1200)
    rows, held = np.arange(800), np.arange(800, 1200)
    sk = _sksurv_fit(x[rows], time[rows], event[rows])
    model = build_model("mlp", 4, [16, 8], seed=0)
    train(model, x[rows], np.stack([time, event], axis=1)[rows].astype(np.float32), epochs=10, batch_size=64,
          learning_rate=0.05, momentum=0.9, seed=1, loss=CoxPartialLikelihood())
    with torch.no_grad():
        eta = model(torch.as_tensor(x[held])).numpy()
    assert eta.shape == (400,)
    linear = harrell_c(time[held], event[held], x[held].astype(np.float64) @ sk.coef_)
    learned = harrell_c(time[held], event[held], eta)
    assert linear > 0.65 and learned > linear - 0.03, (learned, linear)


def test_the_breslow_baseline_survival_is_scikit_survivals():
    """On the same coefficients, in float64: H0 within 4e-15 relative, S(t | x) within 1e-15 (asserted 1e-12)."""
    x, time, event = _cohort()
    sk = _sksurv_fit(x, time, event)
    eta = x.astype(np.float64) @ sk.coef_
    at = np.array([10.0, 35.0, 100.0, 200.0, 400.0, 600.0])
    log_h0 = breslow_log_cumulative_hazard(eta, time, event, at)
    np.testing.assert_allclose(np.exp(log_h0), sk.cum_baseline_hazard_(at), rtol=1e-12)
    theirs = np.array([f(at) for f in sk.predict_survival_function(x[:50].astype(np.float64))])
    np.testing.assert_allclose(cox_survival_curve(eta[:50], log_h0), theirs, rtol=1e-12, atol=1e-14)
    # before the first event no baseline hazard has accrued; records without an event leave none at all
    first = time[event == 1].min()
    assert breslow_log_cumulative_hazard(eta, time, event, [first - 1.0])[0] == -np.inf
    assert (cox_survival_curve(eta[:3], breslow_log_cumulative_hazard(eta, time, 0 * event, at)) == 1.0).all()


def test_a_cox_studys_predictions_are_curves_at_the_interval_ends_from_the_predictors_own_records():
    """`predict` reads S(t | x) = S0(t)^exp(eta(x)) at each interval's end of the study's `[time]` table, with the
    Breslow baseline of the records it is given, under the same model: scikit-survival's curve for the same
    coefficients (the model's outputs are float32: measured within 7e-8, asserted within 1e-5)."""
    cfg = load_config(COX_CONFIG)
    x, time, event = _cohort()
    sk = _sksurv_fit(x, time, event)
    model = build_study_model(cfg, 4, seed=0)  # an MLP: build a linear one with the study's one output
    assert study_outputs(cfg) == 1 and isinstance(study_loss(cfg), CoxPartialLikelihood)
    linear = build_model("logreg", 4, [], seed=0, n_outputs=study_outputs(cfg))
    set_weights(linear, [sk.coef_[None, :].astype(np.float32), np.zeros(1, np.float32)])
    curves = predict(cfg, linear, x[:40], BaselineRecords(x, time, event))
    ends = edges(cfg)[1:]
    assert curves.shape == (40, len(ends))
    within = ends <= time.max()  # scikit-survival's curve ends at the last time; Breslow's stays flat after it
    theirs = np.array([f(np.r_[ends[within], time.max()]) for f in sk.predict_survival_function(x[:40].astype(float))])
    np.testing.assert_allclose(curves[:, within], theirs[:, :-1], atol=1e-5)
    np.testing.assert_allclose(curves[:, ~within], np.repeat(theirs[:, -1:], (~within).sum(), axis=1), atol=1e-5)
    assert np.all(np.diff(curves, axis=1) <= 0)  # survival never rises
    with pytest.raises(ValueError, match="baseline hazard"):
        predict(cfg, model, x[:3])  # no records to estimate the baseline from: refused, never a guess


def test_a_site_without_a_training_event_has_undefined_cox_curves_and_says_why():
    """No event among the baseline records: no baseline hazard to estimate, so the curves are NaN (undefined,
    never the zero-hazard curve S = 1 that would rank every patient as tied) and the summary row says why."""
    from dataclasses import replace

    from fedhealth.experiments.survival_summary import undefined_reasons

    cfg = load_config(COX_CONFIG)
    x, time, event = _cohort()
    linear = build_model("logreg", 4, [], seed=0, n_outputs=1)
    curves = predict(cfg, linear, x[:5], BaselineRecords(x, time, np.zeros_like(event)))
    assert curves.shape == (5, len(edges(cfg)) - 1) and np.isnan(curves).all()
    split = load_hospital(cfg, 0)
    quiet = replace(split, event_train=np.zeros_like(split.event_train))
    assert "cox_baseline" in undefined_reasons(quiet, local_only=True, cox=True)
    assert "cox_baseline" not in undefined_reasons(quiet, local_only=True, cox=False)
    assert "cox_baseline" not in undefined_reasons(split, local_only=True, cox=True)


# ---- the study: targets, defaults, and the refusal with record-level DP ----------------------------------

def test_a_cox_study_trains_on_time_and_event_and_the_default_dumps_as_before():
    cfg = load_config(COX_CONFIG)
    split = load_hospital(cfg, 7)
    np.testing.assert_array_equal(split.y_train[:, 0], split.time_train.astype(np.float32))
    np.testing.assert_array_equal(split.y_train[:, 1], split.event_train)
    assert cfg.model_dump(mode="json")["model"]["survival"] == "cox"
    default = load_config(ROOT / "configs" / "survival.toml")
    assert default.model.survival == "logistic_hazard" and "survival" not in default.model_dump(mode="json")["model"]
    assert "survival" not in json.loads(default.model_dump_json())["model"]  # the payload hospitals receive
    only = baseline_records(cfg, [split])
    assert only is not None and only.x is split.x_train  # one hospital's own records, not a copy
    assert baseline_records(default, [split]) is None  # other studies' predictions need none


def test_cox_with_record_level_dp_is_refused_at_load_saying_why_and_how_to_fix_it():
    with pytest.raises(ConfigError) as err:
        load_config(COX_CONFIG, RECORD_DP)
    message = str(err.value)
    assert len(message.splitlines()) == 1, message
    for words in ('model.survival = "cox"', 'privacy.mode = "record"', "couples the records of each risk set",
                  "per-sample clipping does not bound one record's influence", 'model.survival = "logistic_hazard"',
                  '"hospital"', '"none"'):
        assert words in message, (words, message)
    assert load_config(COX_CONFIG, ["privacy.mode=hospital", "privacy.noise_multiplier=1.0"]).model.survival == "cox"
    with pytest.raises(ConfigError, match='needs outcome = "time_to_event"'):
        load_config(SMOKE, ['model.survival="cox"'])


def test_dp_sgd_itself_refuses_the_cox_loss_before_any_step():
    from fedhealth.privacy.dp import dp_schedule, train_private, train_private_opacus

    x, time, event = _cohort(64)
    y = np.stack([time, event], axis=1).astype(np.float32)
    for trainer in (train_private, train_private_opacus):
        model = build_model("logreg", 4, [], seed=0)
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(ValueError, match="couples the records of each risk set"):
            trainer(model, x, y, epochs=1, schedule=dp_schedule(64, 16), learning_rate=0.1, momentum=0.0,
                    noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=1, sampling_seed=2,
                    loss=CoxPartialLikelihood())
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# ---- a hostile server asks a hospital for Cox under record-level DP --------------------------------------

def _small_cox_study(tmp_path):
    study = tmp_path / "cox.toml"
    study.write_text('name = "cox-small"\nseed = 5\noutcome = "time_to_event"\n[model]\nname = "logreg"\n'
                     'survival = "cox"\n[training]\nlocal_epochs = 1\n' + THREE_HOSPITALS)
    return load_config(study)


def test_a_hospital_declines_a_servers_cox_request_under_record_dp_with_nothing_trained_sent_or_charged(tmp_path):
    """A server's validator would refuse the study, but a hostile server sends it anyway: the hospital builds
    its config from the payload, and the same validation refuses it before anything is loaded, trained,
    charged or sent. What reaches the server is the guard's category only; the honest request trains."""
    from fedhealth.hospital.app import HospitalClient
    from fedhealth.hospital.guard import HospitalRefusal, guard_mod
    from fedhealth.model.initial import initial_weights
    from fedhealth.study.policy import SitePolicy
    from fedhealth.wire import STUDY_KEY, study_payload

    honest = _small_cox_study(tmp_path)
    weights = initial_weights(honest)
    data = json.loads(honest.model_dump_json())
    data["privacy"] = {**data["privacy"], "mode": "record", "noise_multiplier": 1.0}
    ledger = tmp_path / "ledger"
    hostile = {**study_payload(honest, 1, str(ledger)), STUDY_KEY: json.dumps(data)}
    client = HospitalClient(2, SitePolicy(require_secure_aggregation=False), str(ledger))
    for ask in (client.fit, client.evaluate):
        with pytest.raises(ConfigError, match="couples the records of each risk set"):
            ask([w.copy() for w in weights], dict(hostile))
    assert not ledger.exists()  # nothing charged, no secret made, no release stored

    def through_the_client_app(_msg, _ctxt):
        return client.fit([w.copy() for w in weights], dict(hostile))

    with pytest.raises(HospitalRefusal) as refusal:
        guard_mod(SimpleNamespace(metadata=SimpleNamespace(message_type="train")), None, through_the_client_app)
    assert "do not match the study's declaration" in str(refusal.value) and "cox" not in str(refusal.value).lower()
    assert not ledger.exists()

    sent, n, metrics = client.fit([w.copy() for w in weights], study_payload(honest, 1, str(ledger)))
    assert n > 0 and not all(np.array_equal(a, b) for a, b in zip(sent, weights, strict=True))
    _, _, figures = client.evaluate(sent, study_payload(honest, 1, str(ledger)))
    assert 0.0 <= figures["c_index"] <= 1.0  # its own test records, its own baseline hazard
