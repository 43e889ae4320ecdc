"""A time-to-event study trains end to end on Flower, as a user runs it (issue 18).

Two real federations through `fedhealth simulate` in a process of its own:

- ten small generated clinics followed in time (`outcome = "time_to_event"`, `tests.support.SMALL_SITES`),
  with record-level DP-SGD at a target epsilon of 8 and SecAgg+: every round is a secure sum of clipped,
  noised hazard-model updates, each hospital's ledger is charged, the summary's headline figure is
  Harrell's C-index with intervals, and the federated model beats local-only on all test records beyond
  the test set's noise (local-only with the study's optimiser, as the summary's reference always has it;
  docs/results.md, "Against local-only under DP: ten small sites", has how a smaller step changes it);
- the NCCTG lung cancer data (`configs/lung.toml`, eight real sites of 16 to 79 patients): the example the
  README and docs/results.md quote, scored against local-only and pooled, with an interval on every figure.

And a Cox model (`model.survival = "cox"`, without DP: it is refused with record-level DP) on the generated
hospitals, under SecAgg+, scored on the same curves beside local-only and pooled.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedhealth.runs import rundir
from tests.support import ROOT, SMALL_SITE_NAMES, SMALL_SITES, THREE_HOSPITALS, run_cli

pytestmark = pytest.mark.slow

STUDY = """name = "survival-dp"
seed = 11
outcome = "time_to_event"
[model]
name = "mlp"
[training]
local_epochs = 1
batch_size = 64
learning_rate = 0.5
test_fraction = 0.5
[federation]
rounds = 10
[privacy]
mode = "record"
target_epsilon = 8.0
[references]
non_private_federation = false  # the same federation without DP: not needed here
""" + SMALL_SITES


def test_a_generated_survival_study_trains_under_dp_and_secagg_and_beats_local_only(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(STUDY)
    out = tmp_path / "run"
    proc = run_cli("simulate", "--config", str(study), "--out", str(out), "--set", "federation.backend=in-process")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "C-index" in text and "Traceback" not in text

    rounds = rundir.read_jsonl(out / rundir.ROUNDS_FILE)
    assert [r["round"] for r in rounds] == list(range(1, 11))
    for r in rounds:  # every hospital's clipped, noised update is in every secure sum
        assert r["status"] == "aggregated" and r["secure_aggregation"] is True
        assert r["hospitals_aggregated"] == list(range(10))
        assert 0.4 < r["c_index_mean"] < 1.0 and "auroc_mean" not in r
    rows = rundir.read_jsonl(out / rundir.METRICS_FILE)
    assert all(set(("c_index", "uno_c", "ibs", "td_auroc")) <= set(row) and "auroc" not in row for row in rows)
    assert all(row["epsilon"] is not None and row["epsilon"] > 0 for row in rows)

    summary = json.loads((out / rundir.SUMMARY_FILE).read_text())
    assert summary["outcome"] == "time_to_event" and summary["headline"] == "c_index"
    assert {h["name"]: len(h["rounds_trained"]) for h in summary["privacy"]["hospitals"]} == dict.fromkeys(
        SMALL_SITE_NAMES, 10)
    assert all(7.0 < h["epsilon"] <= 8.0 for h in summary["privacy"]["hospitals"])  # the target, composed
    village = summary["hospitals"][2]
    for model in ("federated", "local_only", "pooled"):
        low, high = village["c_index_ci"][model]
        assert low <= village["c_index"][model] <= high
    assert village["c_index"]["best_possible"] > 0.7  # the generator's true risk on the same records
    # the clinic's gain is paired on its own test records
    c_index = village["c_index"]
    assert village["gain"]["estimate"] == pytest.approx(c_index["federated"] - c_index["local_only"])
    overall = summary["overall"]
    # the DP federation has learnt to rank patients, beyond the test set's noise, and beats local-only on all
    # test records (the paired interval of the gain excludes zero)
    assert overall["c_index_ci"]["federated"][0] > 0.6
    gain = overall["gain"]
    assert gain["estimate"] == pytest.approx(overall["c_index"]["federated"] - overall["c_index"]["local_only"])
    assert gain["ci"][0] > 0 and gain["distinguishable_from_zero"] is True, gain
    json.dumps(summary, allow_nan=False)  # every undefined figure is null, never NaN
    report = (out / "report.html").read_text()
    assert "C-index" in report and (out / "figures" / "risk_groups.png").is_file()


def test_the_lung_cancer_example_runs_with_intervals_on_every_figure(tmp_path):
    out = tmp_path / "lung"
    proc = run_cli("simulate", "--config", str(ROOT / "configs" / "lung.toml"), "--out", str(out),
                   "--set", "federation.backend=in-process")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "ncctg-lung: test C-index per hospital" in text and "Traceback" not in text
    summary = json.loads((out / rundir.SUMMARY_FILE).read_text())
    assert [h["name"] for h in summary["hospitals"]] == [
        "inst-01", "inst-03", "inst-11", "inst-12", "inst-13", "inst-16", "inst-22", "other"]
    assert sum(h["n_train"] + h["n_test"] for h in summary["hospitals"]) == 228  # every patient, once
    overall = summary["overall"]
    for model in ("federated", "local_only", "pooled"):
        value, (low, high) = overall["c_index"][model], overall["c_index_ci"][model]
        assert value is not None and low <= value <= high, model
    assert "best_possible" not in overall["c_index"]  # real patients: their true risk is unknown
    # the federated model ranks the patients better than chance on all test records
    assert overall["c_index"]["federated"] > 0.5 and overall["c_index_ci"]["federated"][1] > 0.55
    for h in summary["hospitals"]:
        value = h["c_index"]["federated"]
        assert (value is not None and np.isfinite(value)) or "c_index" in h.get("undefined", {}), h["name"]


COX_STUDY = """name = "survival-cox"
seed = 11
outcome = "time_to_event"
[model]
name = "logreg"
survival = "cox"
[training]
local_epochs = 1
batch_size = 64
learning_rate = 0.05
[federation]
rounds = 3
""" + THREE_HOSPITALS


def test_a_cox_study_trains_end_to_end_under_secagg_beside_local_only_and_pooled(tmp_path):
    """Every round a secure sum of the hospitals' Cox updates; each hospital scores the model with its own
    baseline hazard, and the summary's headline C-index has an interval for federated, local-only and pooled."""
    study = tmp_path / "study.toml"
    study.write_text(COX_STUDY)
    out = tmp_path / "run"
    proc = run_cli("simulate", "--config", str(study), "--out", str(out), "--set", "federation.backend=in-process")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "C-index" in text and "Traceback" not in text

    rounds = rundir.read_jsonl(out / rundir.ROUNDS_FILE)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert r["status"] == "aggregated" and r["secure_aggregation"] is True
        assert r["hospitals_aggregated"] == [0, 1, 2]
        assert 0.5 < r["c_index_mean"] < 1.0
    summary = json.loads((out / rundir.SUMMARY_FILE).read_text())
    assert summary["outcome"] == "time_to_event" and summary["headline"] == "c_index"
    assert summary["survival_model"] == "cox"
    overall = summary["overall"]
    for model in ("federated", "local_only", "pooled"):
        value, (low, high) = overall["c_index"][model], overall["c_index_ci"][model]
        assert low <= value <= high and 0.5 < value < 1.0, model
    assert overall["c_index_ci"]["federated"][0] > 0.6  # the Cox model ranks patients, beyond the test noise
    for h in summary["hospitals"]:
        assert set(h["c_index_ci"]) >= {"federated", "local_only", "pooled"}, h["name"]
    json.dumps(summary, allow_nan=False)
