"""Options that cannot run together are refused when the study is loaded, before anything starts, with a
message that names both keys (so the user knows which one to change), exit status 2 from the CLI. The
combinations that can run are walked through real federations in tests/integration/test_options_federation.py."""

from __future__ import annotations

import re

import pytest

from fedhealth.data.study_file import load_config
from fedhealth.study.config import ConfigError
from tests.support import SMOKE, invoke_cli

STRATEGY_AND_MODE = ("federation.strategy.name", "privacy.mode")
RECORD = ["privacy.mode=record", "privacy.noise_multiplier=1.0"]
HOSPITAL = ["privacy.mode=hospital", "privacy.noise_multiplier=1.0"]
PLAIN = ["federation.secure_aggregation.enabled=false"]

# (id, overrides, the two keys the refusal must name)
REFUSED = [
    ("record-dp-fedprox", [*RECORD, 'federation.strategy.name="fedprox"'], STRATEGY_AND_MODE),
    ("hospital-dp-fedadam", [*HOSPITAL, 'federation.strategy.name="fedadam"'],
     STRATEGY_AND_MODE),
    ("record-dp-qfedavg", [*RECORD, 'federation.strategy.name="qfedavg"'], STRATEGY_AND_MODE),
    ("hospital-dp-qfedavg", [*HOSPITAL, 'federation.strategy.name="qfedavg"'],
     STRATEGY_AND_MODE),
    ("distributed-noise-without-hospital-dp", ['privacy.hospital_noise="distributed"'],
     ("privacy.hospital_noise", "privacy.mode")),
    ("distributed-noise-without-secagg", [*HOSPITAL, 'privacy.hospital_noise="distributed"', *PLAIN],
     ("privacy.hospital_noise", "federation.secure_aggregation.enabled")),
    ("min-contributors-without-hospital-dp", [*RECORD, "privacy.min_contributors=3"],
     ("privacy.min_contributors", "privacy.mode")),
    ("colluders-without-hospital-dp", ["privacy.colluding_hospitals=1"],
     ("privacy.colluding_hospitals", "privacy.mode")),
    ("colluders-with-central-noise", [*HOSPITAL, "privacy.colluding_hospitals=1"],
     ("privacy.colluding_hospitals", "privacy.hospital_noise")),
    ("two-contributors-under-secagg", [*HOSPITAL, "privacy.min_contributors=2"],
     ("privacy.min_contributors", "federation.secure_aggregation.enabled")),
    ("two-hospitals-minimum-under-secagg", ["federation.min_hospitals=2"],
     ("federation.min_hospitals", "federation.secure_aggregation.enabled")),
    ("noise-multiplier-and-target-epsilon", [*RECORD, "privacy.target_epsilon=3.0"],
     ("noise_multiplier", "target_epsilon")),
]


@pytest.mark.parametrize("overrides, keys", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_combination_that_cannot_run_is_refused_naming_both_keys(overrides, keys):
    with pytest.raises(ConfigError) as err:
        load_config(SMOKE, overrides)
    message = str(err.value)
    assert all(key in message for key in keys), message
    assert len(message.splitlines()) == 1, message


@pytest.mark.parametrize("overrides", [["privacy.min_contributors=2"], ["federation.min_hospitals=2"]],
                         ids=["two-contributors", "two-hospitals-minimum"])
def test_the_other_key_of_the_refusal_is_a_way_out(overrides):
    """The refusal offers plain aggregation as the fix; taking it gives a study that loads."""
    extra = HOSPITAL if "contributors" in overrides[0] else []
    assert load_config(SMOKE, [*extra, *overrides, *PLAIN])


def test_simulate_refuses_the_combination_before_anything_starts(tmp_path):
    out = tmp_path / "run"
    result = invoke_cli("simulate", "--config", str(SMOKE), "--out", str(out), *[a for o in REFUSED[0][1]
                                                                                 for a in ("--set", o)])
    assert result.exit_code == 2, result.output
    assert "federation.strategy.name" in result.output and "privacy.mode" in result.output
    assert "Traceback" not in result.output and not out.exists()


def _with_policies(tmp_path, policies: list[str | None], *overrides: str):
    """The smoke study with an inline site policy per hospital (None: that hospital has none)."""
    sizes = iter(policies)
    text = re.sub(r"^records = \d+$", lambda m: m.group(0) + (f"\npolicy = {{ {p} }}" if (p := next(sizes)) else ""),
                  SMOKE.read_text(encoding="utf-8"), flags=re.M)
    path = tmp_path / "smoke.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, list(overrides))


@pytest.mark.parametrize("policy, overrides, keys", [
    ("max_epsilon = 5.0", [], ("policy.max_epsilon", "privacy.mode")),
    ("min_hospitals = 3", PLAIN, ("policy.require_secure_aggregation", "federation.secure_aggregation.enabled")),
    ('allowed_models = ["mlp"]', [], ("policy.allowed_models", "model.name")),
    ("max_delta = 1e-9", RECORD, ("policy.max_delta", "privacy.delta")),
], ids=["epsilon-cap-without-dp", "plain-aggregation", "model", "delta"])
def test_a_study_every_hospitals_policy_refuses_is_refused_at_load(policy, overrides, keys, tmp_path):
    with pytest.raises(ConfigError) as err:
        _with_policies(tmp_path, [policy] * 3, *overrides)
    message = str(err.value)
    assert "every hospital's own site policy refuses this study" in message
    assert all(key in message for key in keys) and "hospitals[2]" in message, message


def test_a_study_some_hospital_can_serve_loads_and_the_others_decline_at_run_time(tmp_path):
    """One hospital's policy winning over the study is what a simulation shows (it declines, the others train)."""
    assert _with_policies(tmp_path, ["max_epsilon = 5.0", "max_epsilon = 5.0", None])
    assert _with_policies(tmp_path, ["require_secure_aggregation = false"] * 3, *PLAIN)
