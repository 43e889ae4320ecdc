"""The Python API end to end on the smoke study: `fh.simulate` returns a `Run` that matches its run directory,
and `Run.open` gives the same. The API's argument checks and errors: tests/unit/test_api.py."""

import io
import json
import warnings

import pytest

import fedhealth as fh
from fedhealth.runs import rundir
from tests.support import SMOKE

# Record-level DP, so every hospital keeps a ledger; one round and no federation without DP beside it, so it is short.
DP_QUICK = {"privacy.mode": "record", "privacy.noise_multiplier": 1.0, "federation.rounds": 1,
            "references.non_private_federation": False}


# ---- a real federation through the API ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    seen, shown = [], io.StringIO()
    from rich.console import Console

    with warnings.catch_warnings():
        before = list(warnings.filters)
        result = fh.simulate(fh.load_study(SMOKE, DP_QUICK), out, progress=Console(file=shown, width=200),
                             on_round=lambda r, info: seen.append((r, info["status"])))
        added = [f for f in warnings.filters if f not in before and f[2] is DeprecationWarning]
    return result, seen, shown.getvalue(), added


@pytest.mark.slow
def test_simulate_returns_the_run_its_directory_holds(run):
    result, seen, shown, added = run
    path = result.path
    assert result.state == "completed" == rundir.read_state(path)["status"]
    assert seen == [(1, "aggregated")]
    assert "smoke: 3 hospitals, 1 rounds, fedavg/logreg" in shown and str(path) in shown
    assert added == []  # no DeprecationWarning filter (ours or Flower's "once") outlives the federation

    assert result.summary == json.loads((path / rundir.SUMMARY_FILE).read_text())
    assert result.summary["privacy"]["mode"] == "record"
    metrics_lines = [ln for ln in (path / rundir.METRICS_FILE).read_text().splitlines() if ln.strip()]
    assert len(result.metrics) == len(metrics_lines) == 3
    assert result.metrics[["round", "hospital"]].values.tolist() == [
        [json.loads(ln)["round"], json.loads(ln)["hospital"]] for ln in metrics_lines]
    rounds_lines = [ln for ln in (path / rundir.ROUNDS_FILE).read_text().splitlines() if ln.strip()]
    assert len(result.rounds) == len(rounds_lines) == 1 and result.rounds["status"].tolist() == ["aggregated"]

    files = {f.stem: json.loads(f.read_text()) for f in (path / rundir.PRIVACY_DIR).glob("*.json")}
    assert result.ledgers == {data["hospital"]: data["entries"] for data in files.values()}
    assert set(result.ledgers) == {"city-tertiary", "county-secondary", "village-clinic"}
    spent = {h["name"]: h["epsilon"] for h in result.summary["privacy"]["hospitals"]}
    assert {name: entries[-1]["epsilon"] for name, entries in result.ledgers.items()} == spent
    assert all(0 < eps <= 10.0 for eps in spent.values())

    assert result.report_path == path / "report.html" and result.report_path.is_file()
    assert result.study.fingerprint() == fh.load_study(SMOKE, DP_QUICK).fingerprint()


@pytest.mark.slow
def test_run_open_gives_the_same_run_and_a_completed_run_is_not_resumed(run):
    result = run[0]
    again = fh.Run.open(str(result.path))
    assert again == result
    assert again.metrics.equals(result.metrics) and again.ledgers == result.ledgers
    assert fh.report(again) == result.report_path
    with pytest.raises(fh.RunDirectoryError, match="already completed"):
        fh.resume(result.path)
    with pytest.raises(fh.RunDirectoryError, match="not empty"):
        fh.simulate(SMOKE, result.path, overrides=DP_QUICK)
