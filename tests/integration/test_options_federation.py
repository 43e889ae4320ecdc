"""Every documented option of a study runs end to end through `fedhealth simulate`: each strategy, each
privacy mode (and each hospital-level noise placement), secure aggregation on and off with every privacy
mode, each reference switched off at least once; each run exits 0, is `completed`, and its report shows
the references it has and names the ones it lacks. A covering set, not the full product: the smoke study
at one round per combination. The report over every subset of references, without a federation:
tests/unit/test_report_options.py; combinations refused at load: tests/unit/test_option_combinations.py."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest

from fedhealth.runs import rundir
from fedhealth.study.config import PrivacyConfig, StrategyName
from tests.support import SMOKE, invoke_cli

ALL_REFS = {"local_only", "pooled", "federated_no_dp", "best_possible"}
NO_SIBLING = "references.non_private_federation=false"

# (id, overrides, the references the run has): each privacy mode with SecAgg+ on and off (hospital-level DP:
# distributed noise, which needs SecAgg+, and central noise in the clear; central noise under SecAgg+ is
# tests/integration/test_hospital_dp_federation.py), each strategy once among them, each reference off at
# least once. Six runs, seven federations (the record-level DP run also runs its no-DP sibling).
COMBINATIONS = [
    ("none-secagg-fedavg-no-local-only", ["references.local_only=false"], {"pooled", "best_possible"}),
    ("none-plain-qfedavg-mlp-no-pooled", ['federation.strategy.name="qfedavg"', 'model.name="mlp"',
                                          "federation.secure_aggregation.enabled=false", "references.pooled=false"],
     {"local_only", "best_possible"}),
    ("record-secagg-fedadam-target-epsilon-with-no-dp-sibling",
     ["privacy.mode=record", "privacy.target_epsilon=8.0", 'federation.strategy.name="fedadam"',
      "references.local_only=false", "references.pooled=false"], {"federated_no_dp", "best_possible"}),
    ("record-plain-fedavg", ["privacy.mode=record", "privacy.noise_multiplier=1.0",
                             "federation.secure_aggregation.enabled=false", NO_SIBLING],
     {"local_only", "pooled", "best_possible"}),
    ("hospital-central-plain-fedprox", ["privacy.mode=hospital", "privacy.noise_multiplier=1.0",
                                        'federation.strategy.name="fedprox"', "references.pooled=false",
                                        "federation.secure_aggregation.enabled=false", NO_SIBLING],
     {"local_only", "best_possible"}),
    ("hospital-distributed-secagg-fedavg", ["privacy.mode=hospital", "privacy.target_epsilon=20.0",
                                            'privacy.hospital_noise="distributed"', "references.local_only=false",
                                            NO_SIBLING], {"pooled", "best_possible"}),
]


@pytest.fixture(scope="module")
def tiny_smoke(tmp_path_factory) -> Path:
    """The smoke study with smaller hospitals (still unequal, so equity has something to say) and one local
    epoch: what is walked here is which code paths run, not how well the model learns."""
    sizes = iter((400, 250, 150))
    text = re.sub(r"^records = \d+$", lambda _: f"records = {next(sizes)}", SMOKE.read_text(encoding="utf-8"),
                  flags=re.M)
    path = tmp_path_factory.mktemp("study") / "smoke.toml"
    path.write_text(text.replace("local_epochs = 2", "local_epochs = 1"), encoding="utf-8")
    return path


def _values(overrides: list[str], key: str, default: str) -> str:
    found = [o.split("=", 1)[1].strip('"') for o in overrides if o.startswith(key + "=")]
    return found[0] if found else default


def test_the_combinations_cover_every_value_of_each_option():
    """Every strategy and privacy mode the config allows, each noise placement, SecAgg+ on and off with each
    privacy mode, and each reference absent at least once: a value added to the config fails here until
    it is walked."""
    seen = {(_values(o, "privacy.mode", "none"), _values(o, "privacy.hospital_noise", "central"),
             _values(o, "federation.secure_aggregation.enabled", "true"),
             _values(o, "federation.strategy.name", "fedavg")) for _, o, _ in COMBINATIONS}
    modes = typing.get_args(PrivacyConfig.model_fields["mode"].annotation)
    assert {s[3] for s in seen} == set(typing.get_args(StrategyName))
    assert {s[0] for s in seen} == set(modes)
    assert {s[1] for s in seen if s[0] == "hospital"} == set(
        typing.get_args(PrivacyConfig.model_fields["hospital_noise"].annotation))
    assert {(s[0], s[2]) for s in seen} == {(m, on) for m in modes for on in ("true", "false")}
    assert len(COMBINATIONS) <= 6, "each run costs a federation: keep the walk a covering set"
    absent = set().union(*(ALL_REFS - has for _, _, has in COMBINATIONS))
    assert absent == ALL_REFS - {"best_possible"}  # best possible is absent only for real records (unit test)


@pytest.mark.parametrize("name, overrides, refs", COMBINATIONS, ids=[c[0] for c in COMBINATIONS])
def test_each_option_combination_completes_with_a_report_of_what_it_has(name, overrides, refs, tmp_path,
                                                                       tiny_smoke):
    out = tmp_path / name
    args = ["simulate", "--config", str(tiny_smoke), "--out", str(out), "--rounds", "1"]
    for o in overrides:
        args += ["--set", o]
    result = invoke_cli(*args)
    assert result.exit_code == 0, result.output[-3000:]
    assert rundir.read_state(out)["status"] == "completed"
    summary = json.loads((out / rundir.SUMMARY_FILE).read_text(encoding="utf-8"))
    assert set(summary["overall"]["auroc"]) == {"federated", *refs}
    rows = rundir.read_jsonl(out / rundir.ROUNDS_FILE)
    secure = _values(overrides, "federation.secure_aggregation.enabled", "true") == "true"
    assert [r["status"] for r in rows] == ["aggregated"] and all(r["secure_aggregation"] == secure for r in rows)
    strategy, model = (_values(overrides, "federation.strategy.name", "fedavg"), _values(overrides, "model.name",
                                                                                          "logreg"))
    assert (summary["strategy"], summary["model"]) == (strategy, model)
    mode = _values(overrides, "privacy.mode", "none")
    assert summary.get("privacy", {}).get("mode", "none") == mode

    html = (out / rundir.REPORT_FILE).read_text(encoding="utf-8")
    assert str(out / rundir.REPORT_FILE) in result.output
    comparison = html[html.index('<h2 id="comparison">'):html.index('<h2 id="calibration">')]
    for ref, header in (("local_only", "<th>local-only</th>"), ("pooled", "<th>pooled</th>"),
                        ("federated_no_dp", "<th>federated, no DP</th>"), ("best_possible", "<th>best possible</th>")):
        assert (header in comparison) == (ref in refs), (ref, name)
    for ref, key in (("local_only", "references.local_only = false"), ("pooled", "references.pooled = false"),
                     ("federated_no_dp", "references.non_private_federation = false")):
        assert (key in html) == (ref not in refs and (ref != "federated_no_dp" or mode != "none")), (key, name)
    assert ("The server saw only sums." in html) == secure
    assert f"privacy: {mode};" in html and f"{strategy} / {model}" in html
    if mode != "none":
        assert (out / "figures" / rundir.FIGURES["privacy"]).is_file()
    assert ((out / "figures" / rundir.FIGURES["equity"]).is_file()) == ("local_only" in refs)
