"""Equity figures (Gini, gains, the plain sentence), calibration bands, and the report's template."""

import numpy as np
import pytest

from fedhealth.metrics.calibration import expected_calibration_error, reliability_bins
from fedhealth.metrics.equity import equity_summary, gini, spearman


@pytest.mark.parametrize("values, expected", [
    ([1, 1, 1], 0.0),
    ([0, 0, 1], 2 / 3),            # one of three has everything: (n - 1) / n
    ([1, 2, 3, 4], 0.25),          # sum |xi - xj| = 20 over 2 * 16 * 2.5
    ([5], 0.0),
    ([2, 0], 0.5),
])
def test_gini_against_hand_computed_values(values, expected):
    assert gini(values) == pytest.approx(expected)


def test_gini_is_undefined_for_a_non_positive_mean():
    assert gini([-0.01, 0.01]) is None and gini([]) is None
    assert gini([0.1, -0.05, 0.2]) == pytest.approx(sum(abs(a - b) for a in (0.1, -0.05, 0.2)
                                                     for b in (0.1, -0.05, 0.2)) / (2 * 9 * 0.25 / 3))


def test_spearman_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None


def _hospital(name, tier, records, local, federated):
    return {"name": name, "tier": tier, "region": "north", "records": records,
            "auroc": {"local_only": local, "federated": federated}}


def test_equity_says_plainly_who_gained():
    small_gain_most = [_hospital("a", "community", 300, 0.70, 0.80), _hospital("b", "community", 500, 0.72, 0.78),
                       _hospital("c", "secondary", 3000, 0.80, 0.82), _hospital("d", "tertiary", 20000, 0.84, 0.83)]
    eq = equity_summary(small_gain_most)
    assert eq["hospitals_that_gained"] == 3
    assert eq["worst_hospital"]["name"] == "b" and eq["worst_hospital"]["gain"] == pytest.approx(0.06)
    assert eq["by_tier"]["community"]["gain"] == pytest.approx(0.08)
    assert eq["gini"]["records"] == pytest.approx(gini([300, 500, 3000, 20000]))
    assert eq["gain_vs_records_spearman"] < 0
    assert eq["sentence"].startswith("3 of 4 hospitals gained") and eq["sentence"].endswith("gained most.")
    large_gain_most = [_hospital("a", "community", 300, 0.80, 0.79), _hospital("b", "community", 500, 0.80, 0.80),
                       _hospital("c", "secondary", 3000, 0.80, 0.83), _hospital("d", "tertiary", 20000, 0.80, 0.85)]
    assert equity_summary(large_gain_most)["sentence"].endswith("the smallest sites gained least.")


def test_equity_does_not_rank_groups_whose_difference_is_within_the_noise():
    """With each hospital's paired gain interval, the smallest-against-largest comparison gets one too: a
    difference it covers is said to be not distinguishable from zero, not "gained most"."""
    def with_gain(h, half):
        gain = h["auroc"]["federated"] - h["auroc"]["local_only"]
        return {**h, "gain": {"estimate": gain, "ci": [gain - half, gain + half],
                              "distinguishable_from_zero": abs(gain) > half}}

    rows = [_hospital("a", "community", 300, 0.70, 0.80), _hospital("b", "community", 500, 0.72, 0.78),
            _hospital("c", "secondary", 3000, 0.80, 0.82), _hospital("d", "tertiary", 20000, 0.84, 0.83)]
    wide = equity_summary([with_gain(h, 0.15) for h in rows])
    low, high = wide["smallest_vs_largest"]["difference_ci"]
    assert low < 0 < high and high - low == pytest.approx(2 * 0.15 * 2 ** 0.5)
    assert wide["sentence"].endswith("a difference of +0.110 [-0.10, +0.32], not distinguishable from zero on "
                                     "these test sets.")
    narrow = equity_summary([with_gain(h, 0.01) for h in rows])
    assert narrow["sentence"].endswith("the smallest sites gained most.")


def test_reliability_bands_hold_counts_and_means_only():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(float)  # perfectly calibrated
    bins = reliability_bins(y, p)
    assert len(bins) == 10 and sum(b["n"] for b in bins) == p.size
    assert expected_calibration_error(bins) < 0.02
    overconfident = reliability_bins(y, np.where(p > 0.5, 1.0, 0.0))
    assert expected_calibration_error(overconfident) > 0.2


def test_report_on_a_directory_that_is_not_a_finished_run_is_a_clear_error(tmp_path):
    from typer.testing import CliRunner

    from fedhealth.cli import app

    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a finished run directory" in result.output and "summary.json" in result.output


def test_a_hospital_without_a_local_only_figure_is_left_out_of_the_gains_and_named():
    """NaN (in memory) and None (summary.json) both mean undefined: the site leaves every gain figure and the
    sentence names it, while its records still count in the record Gini and its tier's size."""
    for missing in (float("nan"), None):
        rows = [_hospital("a", "community", 300, 0.70, 0.80), _hospital("b", "community", 120, missing, 0.75),
                _hospital("c", "secondary", 3000, 0.80, 0.82), _hospital("d", "tertiary", 900, 0.79, 0.81)]
        eq = equity_summary(rows)
        assert eq["gain_undefined_for"] == ["b"] and [g["name"] for g in eq["gain_by_hospital"]] == ["a", "c", "d"]
        assert eq["hospitals_that_gained"] == 3 and np.isfinite(eq["gain_vs_records_spearman"])
        assert "Every one of the 3 hospitals gained" in eq["sentence"]
        assert "left out, their gain undefined: b" in eq["sentence"] and "nan" not in eq["sentence"]
        assert eq["gini"]["records"] == pytest.approx(gini([300, 120, 3000, 900]))
        community = eq["by_tier"]["community"]
        assert (community["hospitals"], community["records"], community["auroc_hospitals"]) == (2, 420, 2)
        assert "gain" not in community and community["federated"] == pytest.approx(0.775)


def test_a_hospital_without_a_federated_auroc_still_counts_in_the_records():
    rows = [_hospital("a", "community", 300, 0.70, 0.80), _hospital("b", "community", 120, None, float("nan")),
            _hospital("c", "secondary", 3000, 0.80, 0.82)]
    eq = equity_summary(rows)
    assert eq["gini"]["records"] == pytest.approx(gini([300, 120, 3000]))
    community = eq["by_tier"]["community"]
    assert (community["hospitals"], community["records"], community["auroc_hospitals"]) == (2, 420, 1)
    assert community["federated"] == pytest.approx(0.80) and "gain" not in community
