"""Our NumPy AUROC/AUPRC must equal scikit-learn's, ties included."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from fedhealth.metrics.classification import average_precision, binary_metrics, roc_auc


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    score = np.round(rng.random(500) + 0.3 * y, 1)  # rounding makes many ties
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert average_precision(y, score) == pytest.approx(average_precision_score(y, score), abs=1e-12)


def test_one_class_gives_nan_not_a_number_that_looks_real():
    m = binary_metrics(np.zeros(10), np.full(10, 0.2))
    assert np.isnan(m.auroc) and np.isnan(m.auprc)
    assert m.accuracy == 1.0 and m.brier == pytest.approx(0.04) and m.n == 10
    # positives only: average precision would be 1.0 whatever the model, so it is undefined too
    m = binary_metrics(np.ones(10), np.linspace(0.1, 0.9, 10))
    assert np.isnan(m.auroc) and np.isnan(m.auprc) and m.accuracy == pytest.approx(0.5)
    # no model (NaN predictions: a local-only model from one class): every figure undefined, the count kept
    m = binary_metrics(np.array([0, 1, 0, 1]), np.full(4, np.nan))
    assert all(np.isnan(v) for v in (m.auroc, m.auprc, m.accuracy, m.brier, m.loss)) and m.n == 4


def test_perfect_and_inverted_scores():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
