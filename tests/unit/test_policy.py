"""The site policy: the hospital's limits, checked on the client, never raised by the server."""

import pytest

from fedhealth.data.study_file import load_config
from fedhealth.study.config import ConfigError
from fedhealth.study.policy import SitePolicy, policy_violation
from tests.support import SMOKE


def test_policy_cap_wins_over_the_study_default(tmp_path):
    cfg = load_config(SMOKE, ["privacy.mode=record", "privacy.noise_multiplier=1.0", "privacy.max_epsilon=50"])
    assert cfg.epsilon_cap(0) == 50
    text = SMOKE.read_text().replace('records = 300', 'records = 300\npolicy = { max_epsilon = 2.5 }')
    path = tmp_path / "s.toml"
    path.write_text(text)
    cfg = load_config(path, ["privacy.mode=record", "privacy.noise_multiplier=1.0", "privacy.max_epsilon=50"])
    assert cfg.epsilon_cap(2) == 2.5 and cfg.epsilon_cap(0) == 50


@pytest.mark.parametrize("policy, kwargs, expected", [
    (SitePolicy(allowed_models=["logreg"]), {"model": "mlp"}, "not allowed"),
    (SitePolicy(max_epsilon=3), {"dp_mode": "none"}, "requires record-level DP"),
    (SitePolicy(max_delta=1e-6), {"delta": 1e-5}, "above the largest delta the site policy accepts"),
    (SitePolicy(min_hospitals=5), {"hospitals_per_round": 3}, "fewer hospitals than the site policy's min_hospitals"),
    (SitePolicy(), {"hospitals_per_round": 2}, "fewer hospitals than the site policy's min_hospitals"),
    (SitePolicy(), {"secure": False}, "requires secure aggregation"),
    (SitePolicy(), {"delta": 1e-4, "records": 2000}, "above the largest delta"),
])
def test_violations_are_named_without_the_hospitals_figures(policy, kwargs, expected):
    args = {"model": "logreg", "dp_mode": "record", "delta": 1e-5, "hospitals_per_round": 10, **kwargs}
    reason = policy_violation(policy, **args)
    assert expected in reason
    assert not any(ch.isdigit() for ch in reason)  # no limit, count or delta of the hospital's
    assert policy_violation(SitePolicy(), **{**args, **{"delta": 1e-5, "hospitals_per_round": 10, "secure": True,
                                                       "records": 2000, "model": "logreg", "dp_mode": "record"}}) \
        is None  # the defaults allow a secure, large-enough round at a small delta


def test_the_default_delta_limit_is_a_tenth_of_one_over_the_records():
    from fedhealth.study.policy import delta_limit

    assert delta_limit(SitePolicy(), 5000) == pytest.approx(2e-5)
    assert delta_limit(SitePolicy(max_delta=1e-7), 5000) == 1e-7


def test_policy_file_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="site policy file not found"):
        SitePolicy.from_file(tmp_path / "missing.toml")
    bad = tmp_path / "policy.toml"
    bad.write_text("max_epsilon = -1\n")
    with pytest.raises(ValueError, match="invalid site policy"):
        SitePolicy.from_file(bad)
    good = tmp_path / "ok.toml"
    good.write_text('max_epsilon = 3.0\nallowed_models = ["logreg"]\nmin_hospitals = 3\n')
    assert SitePolicy.from_file(good).max_epsilon == 3.0


def test_unknown_policy_key_is_a_config_error(tmp_path):
    text = SMOKE.read_text().replace('records = 300', 'records = 300\npolicy = { max_epsilom = 2.5 }')
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="policy.max_epsilom"):
        load_config(path)


def test_the_hospitals_own_policy_and_ledger_win_over_the_server(tmp_path):
    """In deployment the policy file and ledger live at the hospital (node config); the server's config
    (here: a generous cap of 50 and a ledger location of its choosing) cannot override them."""
    from fedhealth.hospital.app import HospitalClient
    from fedhealth.model.initial import initial_weights
    from fedhealth.wire import DECLINED_KEY, SECURE_KEY, study_payload

    cfg = load_config(SMOKE, ["privacy.mode=record", "privacy.noise_multiplier=1.0", "privacy.max_epsilon=50"])
    own_ledgers = tmp_path / "hospital-ledgers"
    strict = HospitalClient(0, SitePolicy(max_epsilon=1.0), str(own_ledgers))
    # SECURE_KEY is what the hospital's own SecAgg+ mod sets when the request really is masked.
    payload = {**study_payload(cfg, 1, str(tmp_path / "server-chosen")), SECURE_KEY: True}
    weights, n, metrics = strict.fit(initial_weights(cfg), payload)
    assert n == 0 and "budget" in metrics[DECLINED_KEY] and "above its cap of 1" in metrics["local.detail"]
    relaxed = HospitalClient(0, SitePolicy(max_epsilon=20.0), str(own_ledgers))
    weights, n, metrics = relaxed.fit(initial_weights(cfg), payload)
    assert n > 0 and 0 < metrics["epsilon"] <= 20.0
    assert (own_ledgers / "city-tertiary.json").exists()
    assert not (tmp_path / "server-chosen").exists()
    refuse_model = HospitalClient(0, SitePolicy(allowed_models=["mlp"]), str(own_ledgers))
    _, n, metrics = refuse_model.fit(initial_weights(cfg), {**study_payload(cfg, 2, ""), SECURE_KEY: True})
    assert n == 0 and "model 'logreg' is not allowed" in metrics[DECLINED_KEY]


def test_a_hospital_refuses_plain_aggregation_unless_its_policy_allows_it(tmp_path):
    """Whatever the server's study config says, a request without SecAgg+ (SECURE_KEY false, as the
    hospital's mod marks it) is declined under the default policy."""
    from fedhealth.hospital.app import HospitalClient
    from fedhealth.model.initial import initial_weights
    from fedhealth.wire import DECLINED_KEY, SECURE_KEY, study_payload

    cfg = load_config(SMOKE)
    plain = {**study_payload(cfg, 1, ""), SECURE_KEY: False}
    _, n, metrics = HospitalClient(2, SitePolicy()).fit(initial_weights(cfg), plain)
    assert n == 0 and "requires secure aggregation" in metrics[DECLINED_KEY]
    _, n, metrics = HospitalClient(2, SitePolicy(require_secure_aggregation=False)).fit(initial_weights(cfg), plain)
    assert n > 0 and DECLINED_KEY not in metrics
    _, n, metrics = HospitalClient(2, SitePolicy()).fit(initial_weights(cfg), {**plain, SECURE_KEY: True})
    assert n > 0 and "n_train" not in metrics  # under SecAgg+ the record count stays out of the clear
