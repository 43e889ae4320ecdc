"""Multi-class and continuous studies train end to end on Flower, as a user runs them (issue 18).

Each is a real federation through `fedhealth simulate` in a process of its own, on generated hospitals with a
known truth, with record-level DP-SGD and SecAgg+: every round is a secure sum of clipped, noised updates of
the kind's model (one logit per class, or one value), each hospital's ledger is charged, the summary's headline
figure (macro AUROC, or R²) has an interval on every figure, the federated model has learnt beyond the test
set's noise, and local-only and pooled references are scored beside it with paired gains. (That the
federation beats local-only is shown on the default hospitals, configs/multiclass.toml and
configs/continuous.toml, docs/results.md: on these three, the clinic's own model is as good as the pooled one.)
"""

from __future__ import annotations

import json

import pytest

from fedhealth.runs import rundir
from tests.support import THREE_HOSPITALS, run_cli

pytestmark = pytest.mark.slow

HOSPITALS = THREE_HOSPITALS


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
[federation]
rounds = 8
[privacy]
mode = "record"
noise_multiplier = 1.2
[references]
non_private_federation = false  # the same federation without DP: not needed here, and a federation's time
""" + HOSPITALS


@pytest.mark.parametrize(("kind", "top", "keys", "chance", "learning_rate"), [
    ("multiclass", "macro_auroc", {"macro_auroc", "accuracy", "log_loss", "ece"}, 0.5, 0.5),
    # a squared error's gradient grows with the residual: a step of 0.5 overshoots, 0.1 does not
    ("continuous", "r2", {"r2", "mae", "rmse", "calibration_slope"}, 0.0, 0.1),
])
def test_a_generated_study_of_the_kind_trains_under_dp_and_secagg(tmp_path, kind, top, keys, chance, learning_rate):
    path = tmp_path / "study.toml"
    path.write_text(study(kind, learning_rate))
    out = tmp_path / "run"
    proc = run_cli("simulate", "--config", str(path), "--out", str(out), "--set", "federation.backend=in-process")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "Traceback" not in text

    rounds = rundir.read_jsonl(out / rundir.ROUNDS_FILE)
    assert [r["round"] for r in rounds] == list(range(1, 9))
    for r in rounds:  # every hospital's clipped, noised update is in every secure sum
        assert r["status"] == "aggregated" and r["secure_aggregation"] is True
        assert r["hospitals_aggregated"] == [0, 1, 2]
        assert r[f"{top}_mean"] is not None and "auroc_mean" not in r
    rows = rundir.read_jsonl(out / rundir.METRICS_FILE)
    assert all(keys <= set(row) and "auroc" not in row for row in rows)
    assert all(row["epsilon"] is not None and row["epsilon"] > 0 for row in rows)

    summary = json.loads((out / rundir.SUMMARY_FILE).read_text())
    assert summary["outcome"] == kind and summary["headline"] == top
    assert {h["name"]: len(h["rounds_trained"]) for h in summary["privacy"]["hospitals"]} == {
        "city-tertiary": 8, "county-secondary": 8, "village-clinic": 8}
    for h in summary["hospitals"]:
        for model in ("federated", "local_only", "pooled"):
            low, high = h[f"{top}_ci"][model]
            assert low <= h[top][model] <= high, (h["name"], model)
        assert h[top]["best_possible"] > h[top]["federated"] - 0.05  # the generator's truth on the same records
    overall = summary["overall"]
    low, high = overall[f"{top}_ci"]["federated"]
    assert low > chance  # the federated model has learnt something, beyond the test set's noise
    assert "federated_no_dp" not in overall[top]
    assert "gain" in overall and overall["gain"]["estimate"] is not None
    json.dumps(summary, allow_nan=False)  # every undefined figure is null, never NaN
    report = (out / "report.html").read_text()
    assert {"macro_auroc": "macro AUROC", "r2": "R²"}[top] in report
