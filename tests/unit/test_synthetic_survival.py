"""The time-to-event generator (fedhealth/data/synthetic_survival.py): the binary generator's patients, their
event by one year exactly the binary label, a known true survival that the data follow, and a truth that a
discrete-time hazard model trained on pooled records recovers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedhealth.data.synthetic import HospitalProfile, generate_hospital
from fedhealth.data.synthetic_survival import generate_survival
from fedhealth.metrics.survival import harrell_c, kaplan_meier, step_function_at
from fedhealth.model import build_model
from fedhealth.model.losses import LogisticHazard, interval_targets, survival_curve
from fedhealth.model.training import train
from fedhealth.study.builtin_schema import encode_features

BIG = HospitalProfile("big", "secondary", "north", 20_000)


def test_the_same_patients_and_their_event_by_one_year_is_the_binary_label():
    never_censored = generate_survival(BIG, 0, 7, follow_up_days=1e9, dropout_mean_days=1e12)
    binary = generate_hospital(BIG, 0, 7)
    np.testing.assert_array_equal(never_censored.features, binary.features)
    assert never_censored.event.all()
    np.testing.assert_array_equal((never_censored.time <= 365).astype(int), binary.label)
    # censoring is drawn apart: other settings censor differently, and never move an event
    censored = generate_survival(BIG, 0, 7)
    seen = censored.event == 1
    np.testing.assert_array_equal(censored.time[seen], never_censored.time[seen])
    assert 0.2 < 1 - censored.event.mean() < 0.9 and censored.time.max() <= 3 * 365
    again = generate_survival(BIG, 0, 7)
    np.testing.assert_array_equal(again.time, censored.time)


def test_kaplan_meier_follows_the_true_survival():
    """Censoring is non-informative, so Kaplan-Meier on the records estimates the mean true survival."""
    records = generate_survival(BIG, 1, 3)
    at = np.array([90.0, 180.0, 365.0, 730.0])
    times, surv = kaplan_meier(records.time, records.event)
    estimated = step_function_at(times, surv, at)
    truth = records.true_survival(at).mean(axis=0)
    np.testing.assert_allclose(estimated, truth, atol=0.015)


def test_a_pooled_hazard_model_recovers_the_true_risk_ordering():
    """Truth recovered by pooled training within a stated tolerance: a discrete-time hazard model (logistic
    regression on the encoded records, one logit per interval) ranks held-out patients within 0.03 of the
    C-index of the true risk."""
    records = generate_survival(HospitalProfile("pool", "tertiary", "south", 12_000), 2, 5)
    x = encode_features(records.features)
    edges = np.array([0, 60, 120, 180, 270, 365, 545, 730, 1095], dtype=float)
    y = interval_targets(records.time, records.event, edges)
    train_rows, test_rows = np.arange(8000), np.arange(8000, 12_000)
    model = build_model("logreg", x.shape[1], [], seed=0, n_outputs=len(edges) - 1)
    train(model, x[train_rows], y[train_rows], epochs=8, batch_size=128, learning_rate=0.05, seed=1,
          loss=LogisticHazard(len(edges) - 1))
    with torch.no_grad():
        logits = model(torch.as_tensor(x[test_rows])).numpy()
    risk = 1.0 - survival_curve(logits)[:, 4]  # predicted probability of the event by one year
    truth = harrell_c(records.time[test_rows], records.event[test_rows], records.risk_scale[test_rows])
    learned = harrell_c(records.time[test_rows], records.event[test_rows], risk)
    assert truth > 0.6 and learned > truth - 0.03, (learned, truth)


@pytest.mark.parametrize("option", ["shape", "follow_up_days", "dropout_mean_days"])
def test_settings_must_be_positive(option):
    with pytest.raises(ValueError, match=f"{option} must be a positive number"):
        generate_survival(BIG, 0, 1, **{option: 0.0})


def test_the_one_year_event_is_the_label_even_at_rounding_edges(monkeypatch):
    """U exactly at p, or one float above it, where the label's U < p and the time formula could disagree."""
    import fedhealth.data.synthetic_survival as module
    from fedhealth.data.synthetic import HospitalRecords, generate_with_uniforms

    records, _ = generate_with_uniforms(HospitalProfile("edge", "community", "west", 2000), 0, 1)
    for uniforms in (records.true_risk.copy(), np.nextafter(records.true_risk, 1.0)):
        label = (uniforms < records.true_risk).astype(np.int64)
        edged = HospitalRecords(profile=records.profile, features=records.features, label=label,
                                       true_risk=records.true_risk)
        monkeypatch.setattr(module, "generate_with_uniforms", lambda *a, e=edged, u=uniforms: (e, u))
        out = module.generate_survival(records.profile, 0, 1, shape=7.7, follow_up_days=1e9, dropout_mean_days=1e12)
        np.testing.assert_array_equal((out.time <= 365).astype(int), label)
        assert np.isfinite(out.time).all()
