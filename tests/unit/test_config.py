"""Config loading: ready configs are valid, bad ones fail naming the key, value and what is allowed."""

import subprocess
import sys

import pytest

from fedhealth.data.study_file import load_config
from fedhealth.study.config import ConfigError, apply_overrides
from tests.support import ROOT, SMOKE


def test_ready_configs_are_valid():
    smoke = load_config(SMOKE)
    assert len(smoke.hospitals) == 3 and smoke.federation.rounds == 2
    default = load_config(ROOT / "configs" / "default.toml")
    assert len(default.hospitals) == 8
    assert {h.tier for h in default.hospitals} == {"tertiary", "secondary", "community"}
    assert len({h.region for h in default.hospitals}) >= 3
    large = load_config(ROOT / "configs" / "large.toml")
    assert len(large.hospitals) == 100
    sizes = [h.records for h in large.hospitals]
    assert max(sizes) / min(sizes) > 20  # record counts span orders of magnitude


def test_population_expansion_is_reproducible():
    a = load_config(ROOT / "configs" / "large.toml")
    b = load_config(ROOT / "configs" / "large.toml")
    assert a.hospitals == b.hospitals
    c = load_config(ROOT / "configs" / "large.toml", ["seed=99"])
    assert c.hospitals != a.hospitals


def _write(tmp_path, text):
    p = tmp_path / "study.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "override, expected",
    [
        ("federation.strategy.name=fedsgd", ["federation.strategy.name", "'fedsgd'", "fedavg", "fedprox", "fedadam"]),
        ("federation.rounds=-1", ["federation.rounds", "-1", "greater than or equal to 1"]),
        ("hospitals=[]", ["at least one hospital"]),
        ("model.name=resnet", ["model.name", "'resnet'", "logreg", "mlp"]),
        ("training.learnign_rate=0.1", ["training.learnign_rate", "unknown key"]),
        ("privacy.noise_multiplier=0", ["privacy.noise_multiplier", "0", "between 1e-06 and 10000"]),
        ("privacy.delta=1.5", ["privacy.delta", "1.5", "between 1e-15 and 1"]),
        ("privacy.target_epsilon=-2", ["privacy.target_epsilon", "-2", "between 0.01 and 100"]),
        ("privacy.mode=record", ["needs exactly one of noise_multiplier or target_epsilon"]),
        ("privacy.mode=laplace", ["privacy.mode", "'laplace'", "record", "hospital"]),
    ],
)
def test_bad_values_name_key_value_and_allowed(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(SMOKE, [override])
    message = str(err.value)
    assert str(SMOKE) in message
    for part in expected:
        assert part in message, message


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "name = [unclosed"))


def test_duplicate_hospital_names(tmp_path):
    text = "\n".join(
        '[[hospitals]]\nname = "same"\ntier = "community"\nregion = "north"\nrecords = 300' for _ in range(2)
    )
    with pytest.raises(ConfigError, match="repeated: same"):
        load_config(_write(tmp_path, text))


def test_overrides_coerce_types():
    data = apply_overrides({"federation": {"rounds": 2}}, ["federation.rounds=5", "model.hidden=[8, 4]", "name=x"])
    assert data == {"federation": {"rounds": 5}, "model": {"hidden": [8, 4]}, "name": "x"}
    cfg = load_config(SMOKE, ["federation.rounds=4", "federation.strategy.name=fedprox"])
    assert cfg.federation.rounds == 4 and cfg.federation.strategy.name == "fedprox"


def test_cli_rejects_bad_config_before_writing_anything(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fedhealth.cli", "simulate", "--config", str(SMOKE), "--out", str(out),
         "--strategy", "fedsgd"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "federation.strategy.name" in proc.stderr and "fedsgd" in proc.stderr
    assert not out.exists()
    missing = subprocess.run(
        [sys.executable, "-m", "fedhealth.cli", "simulate", "--config", str(tmp_path / "missing.toml")],
        capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 2 and "config file not found" in missing.stderr
