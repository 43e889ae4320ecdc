"""`sweep`, `fairness` and `contribution` on studies whose outcome is not binary, on real Flower federations
(issue 18, item 7): each scores its sibling federations on the kind's headline figure with the summary's
intervals, writes its file and figure, and spends privacy only where its siblings run with DP.

How the scores are computed for each kind, against the summary: tests/unit/test_outcome_kinds_summary.py."""

from __future__ import annotations

import json
import math

import pytest

from fedhealth.data.study_file import load_config
from fedhealth.runs import rundir

pytestmark = pytest.mark.slow

TWO_HOSPITALS = """
[[hospitals]]
name = "city-tertiary"
tier = "tertiary"
region = "north"
records = 1500
[[hospitals]]
name = "village-clinic"
tier = "community"
region = "west"
records = 400
"""


def study(tmp_path, kind: str, learning_rate: float, rounds: int = 2) -> object:
    path = tmp_path / f"{kind}.toml"
    path.write_text(f"""name = "{kind}-siblings"
seed = 5
outcome = "{kind}"
[training]
local_epochs = 1
batch_size = 64
learning_rate = {learning_rate}
[federation]
rounds = {rounds}
backend = "in-process"
[federation.secure_aggregation]
enabled = false
""" + TWO_HOSPITALS)
    return load_config(path)


def test_a_survival_sweep_scores_each_epsilon_on_the_c_index_and_charges_the_dp_sibling(tmp_path):
    from fedhealth.experiments.sweep import run_sweep

    cfg = study(tmp_path, "time_to_event", 0.5)
    result = run_sweep(cfg, [4.0, math.inf], tmp_path / "sweep", audit_references=0)
    assert result["metric"] == "c_index" and result["outcome"] == "time_to_event"
    dp, plain = result["points"]
    for point in (dp, plain, *result["references"].values()):
        c, (low, high) = point["all_records_c_index"], point["all_records_c_index_ci"]
        assert 0.5 < c < 1.0 and low <= c <= high  # the generated hazard depends on the features
        assert set(point["by_hospital"]) == {"city-tertiary", "village-clinic"}
        assert point["undefined_hospitals"] == []
    ledger = rundir.read_json(tmp_path / "sweep" / "eps-4" / "privacy" / "city-tertiary.json")
    assert 0 < ledger["entries"][-1]["epsilon"] <= 4.0
    assert (tmp_path / "sweep" / rundir.PRIVACY_UTILITY_FIGURE).read_bytes()[:4] == b"\x89PNG"
    json.loads((tmp_path / "sweep" / rundir.SWEEP_FILE).read_text())  # JSON without NaN


def test_contribution_of_a_continuous_study_is_exact_shapley_in_r2(tmp_path):
    from fedhealth.experiments.contribution import estimate_contributions

    cfg = study(tmp_path, "continuous", 0.1)
    result = estimate_contributions(cfg, tmp_path / "contribution", budget=3)
    assert result["metric"] == "r2" and result["method"] == "exact" and result["federations_run"] == 3
    assert result["empty_coalition_value"] == 0.0
    values = {tuple(c["members"]): c["value"] for c in result["coalitions"]}
    assert len(values) == 3 and all(math.isfinite(v) for v in values.values())
    shapley = {h["name"]: h["shapley"] for h in result["hospitals"]}
    # efficiency: the Shapley values add up to the grand coalition's R² over the empty one's
    assert sum(shapley.values()) == pytest.approx(result["grand_coalition_value"], abs=1e-9)
    assert result["grand_coalition_value"] > 0.0  # the federated model predicts better than the test mean


def test_fairness_compares_fedavg_and_qfedavg_on_macro_auroc(tmp_path):
    from fedhealth.experiments.fairness import compare_strategies

    cfg = study(tmp_path, "multiclass", 0.5)
    result = compare_strategies(cfg, [1.0], tmp_path / "fairness")
    assert result["metric"] == "macro_auroc"
    fedavg, qfedavg = result["runs"]
    for run in result["runs"]:
        low, high = run["worst_hospital_macro_auroc_ci"]
        assert 0.5 < run["worst_hospital_macro_auroc"] <= run["mean_hospital_macro_auroc"] <= 1.0
        assert low <= run["worst_hospital_macro_auroc"] <= high
    assert qfedavg["worst_vs_fedavg"] == pytest.approx(
        qfedavg["worst_hospital_macro_auroc"] - fedavg["worst_hospital_macro_auroc"])
    assert set(result["local_only"]["by_hospital"]) == {"city-tertiary", "village-clinic"}


def test_seeds_of_a_survival_study_spread_its_c_index(tmp_path):
    """`simulate --seeds` on a time-to-event study: one run per seed, seeds.json on the C-index."""
    import numpy as np

    import fedhealth as fh

    cfg = study(tmp_path, "time_to_event", 0.5, rounds=1)
    result = fh.simulate_seeds(cfg, "5,6", tmp_path / "seeds", report=False)
    assert result["headline"] == "c_index" and result["seeds"] == [5, 6]
    summaries = [fh.Run.open(tmp_path / "seeds" / f"seed-{s}").summary for s in (5, 6)]
    values = [s["overall"]["c_index"]["federated"] for s in summaries]
    fed = result["overall"]["c_index"]["federated"]
    assert fed["values"] == values and fed["sd"] == pytest.approx(np.std(values, ddof=1)) and values[0] != values[1]
    assert [h["name"] for h in result["hospitals"]] == ["city-tertiary", "village-clinic"]


@pytest.mark.parametrize("kind", ["time_to_event", "multiclass", "continuous"])
def test_hospital_level_dp_clips_each_kinds_update_under_secagg(tmp_path, kind):
    """Hospital-level DP (distributed noise, SecAgg+) for each kind: every hospital's whole update is clipped on
    its side, so the global model moves by at most the clipping norm in a round, and the round's epsilon is
    the calibrated one."""
    import numpy as np

    from fedhealth.experiments.simulate import simulate
    from fedhealth.model.initial import initial_weights
    from fedhealth.privacy.ledger import epsilon_of

    path = tmp_path / f"{kind}.toml"
    path.write_text(f"""name = "{kind}-hospital-dp"
seed = 5
outcome = "{kind}"
[federation]
rounds = 1
backend = "in-process"
[privacy]
mode = "hospital"
hospital_noise = "distributed"
noise_multiplier = 0.0001
clipping_norm = 0.001
[references]
non_private_federation = false
pooled = false
""" + TWO_HOSPITALS.replace("records = 400", "records = 600") + """
[[hospitals]]
name = "county-secondary"
tier = "secondary"
region = "south"
records = 900
""")
    cfg = load_config(path)
    run_dir = rundir.create_run_dir(cfg, tmp_path / "run")
    summary = simulate(cfg, run_dir)
    before = initial_weights(cfg)
    after, _ = rundir.load_weights(run_dir / rundir.MODEL_FILE)
    moved = np.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(after, before, strict=True)))
    assert 0 < moved <= 0.001 * 1.01
    (row,) = rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE)
    assert row["hospitals_aggregated"] == [0, 1, 2] and row["secure_aggregation"] is True
    assert row["hospital_epsilon"] == pytest.approx(epsilon_of([(0.0001, 1.0, 1)], 1e-5))
    assert summary["privacy"]["mode"] == "hospital" and summary["outcome"] == kind
