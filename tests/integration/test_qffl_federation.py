"""q-FedAvg in a real federation: under SecAgg+ the server builds the model the clear federation builds.
The step itself: tests/unit/test_qffl.py."""

import json

import numpy as np
import pytest

from fedhealth.data.study_file import load_config
from fedhealth.model.initial import initial_weights
from fedhealth.runs import rundir
from tests.support import QFFL, SMOKE


@pytest.mark.slow
def test_secure_qfedavg_federation_equals_the_clear_one(tmp_path):
    """A real federation: under SecAgg+ the server gets only the mean of the q-FFL terms, and the
    model it builds from them is the one it builds from every hospital's terms in the clear."""
    from fedhealth.experiments.simulate import run_federation

    cfg = load_config(SMOKE, [QFFL, "federation.rounds=1", "references.local_only=false",
                              "references.pooled=false"])
    dirs = {}
    for secure in (True, False):
        c = load_config(SMOKE, [QFFL, "federation.rounds=1",
                                f"federation.secure_aggregation.enabled={str(secure).lower()}"])
        dirs[secure] = rundir.create_run_dir(c, tmp_path / str(secure))
        run_federation(c, dirs[secure])
    secure_w, state = rundir.load_weights(rundir.checkpoint_path(dirs[True], 1))
    plain_w, _ = rundir.load_weights(rundir.checkpoint_path(dirs[False], 1))
    init = initial_weights(cfg)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(secure_w, init, strict=True))
    worst = max(float(np.abs(a - b).max()) for a, b in zip(secure_w, plain_w, strict=True))
    assert moved > 1e-3 and worst < 1e-3 * moved, (moved, worst)
    assert "qffl_scale" in state
    rows = rundir.read_jsonl(dirs[True] / rundir.METRICS_FILE)
    assert all(r["aggregated"] and r["secagg_clipped"] == 0 for r in rows if "secagg_clipped" in r)


@pytest.mark.slow
def test_the_fairness_comparison_runs_fedavg_and_qfedavg_siblings_as_sweep_does(tmp_path):
    """`fedhealth fairness` on the smoke study, one round: FedAvg and q-FedAvg (q = 1) side by side, each
    scored on the same splits; q-FedAvg's worst hospital is compared with FedAvg's."""
    from fedhealth.experiments.fairness import FAIRNESS_FILE, compare_strategies

    cfg = load_config(SMOKE, ["federation.rounds=1", "federation.secure_aggregation.enabled=false"])
    result = compare_strategies(cfg, [1.0], tmp_path / "fairness")
    assert [(r["strategy"], r["q"]) for r in result["runs"]] == [("fedavg", None), ("qfedavg", 1.0)]
    fedavg, qffl = result["runs"]
    assert qffl["worst_vs_fedavg"] == pytest.approx(qffl["worst_hospital_auroc"] - fedavg["worst_hospital_auroc"])
    assert set(fedavg["by_hospital"]) == {h.name for h in cfg.hospitals}
    assert json.loads((tmp_path / "fairness" / FAIRNESS_FILE).read_text()) == json.loads(json.dumps(result))
    with pytest.raises(ValueError, match="without DP"):
        compare_strategies(load_config(SMOKE, ["privacy.mode=record", "privacy.target_epsilon=3"]), [1.0],
                           tmp_path / "refused")
