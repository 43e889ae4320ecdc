"""A site with one class on a side of its split trains with the federation (issue 18, item 6).

Real consortia have such sites: a referral centre where nearly everyone has the disease. It still has
something to teach the federated model, so it is not refused; what cannot be computed for it (its local-only
model from one class, an AUROC on a one-class test set) is reported as undefined with the reason, in
summary.json, the terminal table and the report, never as a number and never as a crash. Two real cases, each
a real Flower federation run as a user runs it:

- a toy file study whose site b holds positives only (its training split is one class: no local-only model);
  record-level DP-SGD and SecAgg+, so the site's updates are clipped, noised, charged and securely summed
  like the others';
- FLamby's Fed-Heart-Disease protocol with its Switzerland centre (45 positives, 1 negative): the negative
  trains, the test side holds positives only.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedhealth.runs import rundir
from tests.support import RECORD_DP, TOY_SCHEMA, run_cli, toy_frame

pytestmark = pytest.mark.slow


def _toy_study(tmp_path) -> tuple:
    data = tmp_path / "data"
    data.mkdir()
    (data / "schema.toml").write_text(TOY_SCHEMA)
    toy_frame(240, 1).to_csv(data / "a.csv", index=False)
    toy_frame(120, 2).assign(outcome="yes").to_csv(data / "b.csv", index=False)  # the referral centre
    toy_frame(240, 3).to_csv(data / "c.csv", index=False)
    study = tmp_path / "study.toml"
    study.write_text(f'name = "one-class"\nseed = 3\nschema = "{data / "schema.toml"}"\n[model]\nname = "logreg"\n'
                     '[training]\nlocal_epochs = 1\n[federation]\nrounds = 2\n'
                     + "".join(f'[[hospitals]]\nname = "{n}"\ndata = "{data / f"{n}.csv"}"\n' for n in "abc"))
    return study, data


def test_a_site_with_one_class_in_training_trains_and_its_undefined_figures_say_why(tmp_path):
    study, _ = _toy_study(tmp_path)
    out = tmp_path / "run"
    sets = [a for o in ("federation.backend=in-process", *RECORD_DP) for a in ("--set", o)]
    proc = run_cli("simulate", "--config", str(study), "--out", str(out), *sets)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    # the warning names the site and its counts (never a value); the table says undefined, with the reason
    assert "hospital b: its training split holds" in text and "0 negative records" in text, text[-4000:]
    assert "undefined†" in text and "† b: its training split holds" in text, text[-4000:]
    assert "Traceback" not in text

    rounds = rundir.read_jsonl(out / rundir.ROUNDS_FILE)
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:  # b's clipped, noised update is in every secure sum
        assert r["status"] == "aggregated" and r["secure_aggregation"] is True
        assert r["hospitals_aggregated"] == [0, 1, 2]
    summary = json.loads((out / "summary.json").read_text())
    a, b, c = summary["hospitals"]
    assert b["n_train"] > 0 and set(b["undefined"]) == {"auroc", "local_only"}
    assert b["undefined"]["local_only"].startswith(f"its training split holds {b['n_train']} positive and 0 negative")
    assert b["undefined"]["auroc"].startswith(f"its test split holds {b['n_test']} positive and 0 negative")
    for model in ("federated", "local_only", "pooled"):
        assert b["auroc"][model] is None and b["auroc_ci"][model] == [None, None]
    assert b["brier"]["local_only"] is None and b["accuracy"]["local_only"] is None  # no local-only model at all
    assert b["brier"]["federated"] is not None and b["accuracy"]["federated"] is not None  # defined on one class
    assert b["gain"]["estimate"] is None and b["gain"]["distinguishable_from_zero"] is False
    for h in (a, c):
        assert "undefined" not in h and all(h["auroc"][m] is not None for m in ("federated", "local_only"))
    # overall: the federated model is scored on every test record; the local-only one has no model at b
    assert summary["overall"]["auroc"]["federated"] is not None
    assert summary["overall"]["auroc"]["local_only"] is None
    assert summary["overall"]["accuracy"]["local_only"] is None and summary["overall"]["brier"]["local_only"] is None
    assert "local_only" not in summary["calibration"] and "federated" in summary["calibration"]
    assert b["auprc"]["federated"] is None  # positives only: average precision would read 1.0 for any model
    assert summary["overall"]["mean_hospital_auroc"]["federated"] == pytest.approx(
        np.mean([a["auroc"]["federated"], c["auroc"]["federated"]]))
    assert summary["equity"]["gain_undefined_for"] == ["b"]
    assert "left out, their gain undefined: b" in summary["equity"]["sentence"]
    # b trained under DP: its ledger charged both rounds, like the others'
    spent = {h["name"]: h for h in summary["privacy"]["hospitals"]}
    assert len(spent["b"]["rounds_trained"]) == 2 and spent["b"]["epsilon"] > 0
    report = (out / "report.html").read_text()
    assert "undefined&dagger;" in report and "&dagger; b: its training split holds" in report


def test_the_flamby_switzerland_centre_trains_and_its_auroc_is_undefined(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("simulate", "--config", "configs/heart-disease-flamby.toml", "--out", str(out),
                   "--set", "federation.rounds=3", "--set", "federation.backend=in-process")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "hospital switzerland: its test split holds 15 positive and 0 negative records" in text, text[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = {h["name"]: h for h in summary["hospitals"]}
    ch = rows["switzerland"]
    assert (ch["n_train"], ch["n_test"]) == (31, 15)  # its one negative trains
    assert set(ch["undefined"]) == {"auroc"}  # it has a local-only model: its training split holds both classes
    assert ch["auroc"]["federated"] is None and ch["auroc"]["local_only"] is None
    assert ch["accuracy"]["federated"] is not None and ch["accuracy"]["local_only"] is not None
    assert all("undefined" not in rows[n] for n in ("cleveland", "hungary", "va-long-beach"))
    assert summary["overall"]["auroc"]["federated"] > 0.8
    assert [r["hospitals_aggregated"] for r in rundir.read_jsonl(out / rundir.ROUNDS_FILE)] == [[0, 1, 2, 3]] * 3
