"""Each outcome kind trains end to end on Flower, under DP and SecAgg+, and beats local-only (issue 18).

Each is a real federation through `fedhealth simulate` in a process of its own, on ten small generated
clinics with a known truth (`tests.support.SMALL_SITES`: 400 records each, half held out), with record-level
DP-SGD at a target epsilon of 8 per hospital and SecAgg+: every round is a secure sum of the clipped, noised
updates of the kind's model (one logit, one per class, or one value), each hospital's ledger is charged, the
summary's headline figure (AUROC, macro AUROC, R²) has an interval on every figure, and the federated model
beats local-only on all test records: the paired interval of the gain excludes zero. (The time-to-event kind
has the same test in test_survival_federation.py.)

Local-only trains with the study's optimiser, as the summary's reference always does. At these learning
rates it does worse than at a smaller one (docs/results.md, "Against local-only under DP: ten small sites",
has the sweep): the test shows the federation beating the reference fedhealth reports, not every tuning of
a hospital's own model.
"""

from __future__ import annotations

import json

import pytest

from fedhealth.runs import rundir
from tests.support import SMALL_SITE_NAMES, SMALL_SITES, run_cli

pytestmark = pytest.mark.slow



def study(kind: str, learning_rate: float) -> str:
    return f"""name = "{kind}-dp"
seed = 11
outcome = "{kind}"
[model]
name = "mlp"
[training]
local_epochs = 1
batch_size = 64
learning_rate = {learning_rate}
test_fraction = 0.5
[federation]
rounds = 10
[privacy]
mode = "record"
target_epsilon = 8.0
[references]
non_private_federation = false  # the same federation without DP: not needed here, and a federation's time
pooled = false
""" + SMALL_SITES


@pytest.mark.parametrize(("kind", "top", "keys", "chance"), [
    ("binary", "auroc", {"auroc", "brier", "accuracy"}, 0.5),
    ("multiclass", "macro_auroc", {"macro_auroc", "accuracy", "log_loss", "ece"}, 0.5),
    ("continuous", "r2", {"r2", "mae", "rmse", "calibration_slope"}, 0.0),
])
def test_a_generated_study_of_the_kind_trains_under_dp_and_secagg_and_beats_local_only(tmp_path, kind, top, keys,
                                                                                      chance):
    path = tmp_path / "study.toml"
    path.write_text(study(kind, learning_rate=0.2))
    out = tmp_path / "run"
    proc = run_cli("simulate", "--config", str(path), "--out", str(out), "--set", "federation.backend=in-process")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "Traceback" not in text

    rounds = rundir.read_jsonl(out / rundir.ROUNDS_FILE)
    assert [r["round"] for r in rounds] == list(range(1, 11))
    for r in rounds:  # every hospital's clipped, noised update is in every secure sum
        assert r["status"] == "aggregated" and r["secure_aggregation"] is True
        assert r["hospitals_aggregated"] == list(range(10))
        assert r[f"{top}_mean"] is not None and (top == "auroc") == ("auroc_mean" in r)
    rows = rundir.read_jsonl(out / rundir.METRICS_FILE)
    assert all(keys <= set(row) and (top == "auroc") == ("auroc" in row) for row in rows)
    assert all(row["epsilon"] is not None and row["epsilon"] > 0 for row in rows)

    summary = json.loads((out / rundir.SUMMARY_FILE).read_text())
    # a binary study's summary keeps the layout it had before the other kinds: no "outcome" or "headline" key
    assert summary.get("outcome", "binary") == kind and summary.get("headline", "auroc") == top
    assert {h["name"]: len(h["rounds_trained"]) for h in summary["privacy"]["hospitals"]} == dict.fromkeys(
        SMALL_SITE_NAMES, 10)
    assert all(7.0 < h["epsilon"] <= 8.0 for h in summary["privacy"]["hospitals"])  # the target, composed
    for h in summary["hospitals"]:
        for model in ("federated", "local_only"):
            low, high = h[f"{top}_ci"][model]
            assert low <= h[top][model] <= high, (h["name"], model)
        assert h[top]["best_possible"] > h[top]["federated"] - 0.05  # the generator's truth on the same records
    overall = summary["overall"]
    low, high = overall[f"{top}_ci"]["federated"]
    assert low > chance  # the federated model has learnt something, beyond the test set's noise
    assert "federated_no_dp" not in overall[top]
    # the federation beats local-only on all test records, beyond the test set's noise (the paired interval)
    gain = overall["gain"]
    assert gain["estimate"] == pytest.approx(overall[top]["federated"] - overall[top]["local_only"])
    assert gain["ci"][0] > 0 and gain["distinguishable_from_zero"] is True, gain
    json.dumps(summary, allow_nan=False)  # every undefined figure is null, never NaN
    report = (out / "report.html").read_text()
    assert {"auroc": "AUROC", "macro_auroc": "macro AUROC", "r2": "R²"}[top] in report
