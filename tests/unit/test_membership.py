"""The membership-inference arithmetic: per-record loss, attack scores, AUC and its interval."""

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from fedhealth.metrics.membership import (
    _auc_statistic,
    calibrated_attack_scores,
    evaluate_attack,
    loss_attack_scores,
    per_record_loss,
)


def test_per_record_loss_is_torch_binary_cross_entropy_even_far_from_zero():
    z = np.array([-40.0, -3.0, -0.2, 0.0, 0.7, 5.0, 40.0])
    y = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.as_tensor(z), torch.as_tensor(y), reduction="none").numpy()
    assert per_record_loss(z, y) == pytest.approx(expected, rel=1e-12)
    assert np.all(np.diff(per_record_loss(np.array([10.0, 20.0, 30.0]), np.ones(3))) < 0)  # no floor: still ordered


def test_attack_auc_equals_scikit_learn_ties_included():
    rng = np.random.default_rng(1)
    member = rng.random(300) < 0.7  # unbalanced on purpose: AUC needs no subsampling
    loss = np.round(rng.exponential(1.0, 300) * np.where(member, 0.7, 1.0), 1)  # rounding makes ties
    scores = loss_attack_scores(loss)
    result = evaluate_attack(scores, member, n_resamples=200)
    assert result.auc == pytest.approx(roc_auc_score(member, -loss))
    assert _auc_statistic(scores[member], scores[~member]) == pytest.approx(result.auc)
    assert (result.members, result.non_members) == (member.sum(), (~member).sum())
    assert result.ci_low < result.auc < result.ci_high


def test_the_interval_covers_the_true_auc_about_as_often_as_it_says():
    """Scores N(d, 1) for members, N(0, 1) for non-members: the true AUC is Phi(d / sqrt 2)."""
    rng = np.random.default_rng(7)
    d, trials = 0.5, 200
    true_auc = norm.cdf(d / np.sqrt(2))
    member = np.r_[np.ones(60, bool), np.zeros(60, bool)]
    covered = 0
    for t in range(trials):
        scores = np.r_[rng.normal(d, 1, 60), rng.normal(0, 1, 60)]
        r = evaluate_attack(scores, member, n_resamples=400, seed=t)
        covered += r.ci_low <= true_auc <= r.ci_high
    assert 0.89 <= covered / trials <= 0.99  # 95 % nominal; +-2 binomial s.e. of 200 trials is +-0.03


def test_calibration_removes_record_difficulty():
    """Hard records have high loss for any model; the target fits its members a little better than an outsider.
    The raw loss is dominated by difficulty, the calibrated score recovers membership; more memorisation, higher."""
    rng = np.random.default_rng(3)
    n = 2000
    member = rng.random(n) < 0.5
    difficulty = rng.exponential(1.0, n)
    references = difficulty + rng.normal(0, 0.05, (4, n))
    aucs = []
    for memorised in (0.0, 0.1, 0.3):
        target = difficulty - memorised * member + rng.normal(0, 0.05, n)
        calibrated = evaluate_attack(calibrated_attack_scores(target, references), member, n_resamples=200)
        plain = evaluate_attack(loss_attack_scores(target), member, n_resamples=200)
        aucs.append(calibrated.auc)
        if memorised:
            assert calibrated.ci_low > 0.5 and calibrated.auc > plain.auc + 0.1
        else:
            assert calibrated.ci_low < 0.5 < calibrated.ci_high
    assert aucs[0] < aucs[1] < aucs[2]
    # direction: a record the target fits better than the references scores higher
    assert calibrated_attack_scores(np.array([0.1, 1.0]), np.array([[1.0, 1.0]])).tolist() == [0.9, 0.0]


def test_attack_needs_both_kinds_of_record_and_matching_shapes():
    with pytest.raises(ValueError, match="at least 2 members and 2 non-members"):
        evaluate_attack(np.arange(5.0), np.array([True, False, False, False, False]))
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate_attack(np.arange(5.0), np.ones(4, bool))
    with pytest.raises(ValueError, match="reference losses"):
        calibrated_attack_scores(np.ones(3), np.ones((2, 4)))
    same = evaluate_attack(np.zeros(6), np.array([1, 1, 1, 0, 0, 0], bool))
    assert same.auc == same.ci_low == same.ci_high == 0.5
