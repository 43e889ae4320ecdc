"""Hospital-level DP on Flower's own pieces: the study's epsilon and noise calibration, the minimum it is
calibrated to, and Flower's clipping mod on one hospital's reply. That updates really are clipped on the
client, averaged with equal weights and noised on the server in a federation:
tests/integration/test_hospital_dp_federation.py."""

import numpy as np
import pytest

from fedhealth.data.study_file import load_config
from fedhealth.privacy.hospital_level import hospital_epsilon, hospital_noise
from fedhealth.privacy.ledger import epsilon_of
from fedhealth.study.config import ConfigError
from tests.support import SMOKE, smoke


def test_hospital_mode_needs_one_noise_source_and_calibrates():
    with pytest.raises(ConfigError, match="mode 'hospital' needs exactly one of"):
        load_config(SMOKE, ["privacy.mode=hospital"])
    cfg = load_config(SMOKE, ["privacy.mode=hospital", "privacy.target_epsilon=20", "federation.rounds=5"])
    assert cfg.privacy_delta() == 1e-5
    assert 19 < hospital_epsilon(cfg, 5) <= 20
    assert hospital_epsilon(cfg, 2) < hospital_epsilon(cfg, 5)
    assert hospital_epsilon(cfg, 5) == pytest.approx(epsilon_of([(hospital_noise(cfg), 1.0, 5)], 1e-5))


# -- the fixed minimum the noise is calibrated to (issue 14, item 7) ----------------------------------------

def _hospital(*overrides: str):
    return smoke("privacy.mode=hospital", "privacy.noise_multiplier=1.0", *overrides)


@pytest.mark.parametrize("overrides, message", [
    (["privacy.min_contributors=4"], "only 3 hospitals take part in a round"),
    (["privacy.min_contributors=2"], "secure aggregation releases no aggregate of fewer than 3"),
    (["privacy.colluding_hospitals=1"], "applies only to privacy.hospital_noise = 'distributed'"),
    (["privacy.hospital_noise=distributed", "privacy.colluding_hospitals=3"], "must be below privacy.min_contributors"),
])
def test_min_contributors_and_colluders_are_validated_with_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _hospital(*overrides)
    with pytest.raises(ConfigError, match="applies only to privacy.mode = 'hospital'"):
        load_config(SMOKE, ["privacy.min_contributors=3"])
    # plain aggregation may calibrate to fewer than SecAgg+'s floor of 3
    assert _hospital("privacy.min_contributors=2", "federation.secure_aggregation.enabled=false",
                     ).privacy.min_contributors == 2


def test_noise_is_calibrated_to_the_announced_minimum_not_the_count_observed():
    from fedhealth.coordinator.app import min_contributors
    from fedhealth.privacy.hospital_level import calibrated_secagg_params, distributed_noise_std

    # distributed: each share sigma*C/sqrt(m - k), so the m - k honest shares add up to sigma*C
    cfg = _hospital("privacy.hospital_noise=distributed", "privacy.clipping_norm=0.5")
    assert distributed_noise_std(cfg) == pytest.approx(0.5 / np.sqrt(3))
    colluding = _hospital("privacy.hospital_noise=distributed", "privacy.clipping_norm=0.5",
                          "privacy.colluding_hospitals=2")
    assert distributed_noise_std(colluding) == pytest.approx(0.5)
    assert calibrated_secagg_params(colluding).noise_std_per_hospital == pytest.approx(0.5)
    assert min_contributors(colluding) == 3
    # central: Flower's wrapper is told m, whatever the number aggregated
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

    from fedhealth.coordinator.observed import ObservedStrategy

    inner = DifferentialPrivacyClientSideFixedClipping(FedAvg(initial_parameters=ndarrays_to_parameters([])),
                                                       noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=5)
    strategy = ObservedStrategy(inner, recorder=None, shapes=[], secure=True,  # type: ignore[arg-type]
                                min_contributors=min_contributors(_hospital()))
    strategy._set_noise_count()
    assert inner.num_sampled_clients == 3


@pytest.mark.parametrize("server_norm", [1.0, 1e9, None])
def test_a_declining_hospital_is_passed_on_and_updates_are_clipped_at_the_studys_norm(server_norm):
    """Flower's fixedclipping_mod divides by the update's norm: a decline (zero update) crashed it. And it
    clips to whatever KEY_CLIPPING_NORM the server sends, or not at all without it: the hospital clips to
    the study's `privacy.clipping_norm` instead (the norm its noise share and its ledger assume)."""
    from types import SimpleNamespace

    from flwr.app.message_type import MessageType
    from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    from fedhealth.data.study_file import load_config
    from fedhealth.hospital.hospital_noise import clipping_mod
    from fedhealth.wire import DECLINED_KEY, STUDY_KEY

    class Reply(SimpleNamespace):  # a Message outside a run: what the mods read and write
        def has_error(self) -> bool:
            return False

    cfg = load_config(SMOKE, ["privacy.mode=hospital", "privacy.noise_multiplier=1.0", "privacy.clipping_norm=1.0"])
    config = {STUDY_KEY: cfg.model_dump_json(), **({} if server_norm is None else {KEY_CLIPPING_NORM: server_norm})}
    weights = [np.ones((2, 2), np.float32)]

    def message():
        ins = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(weights), dict(config)), True)
        return SimpleNamespace(content=ins, metadata=SimpleNamespace(message_type=MessageType.TRAIN))

    def reply_with(new, metrics):
        def app(_m, _c):
            res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(new), 0, metrics)
            return Reply(content=compat.fitres_to_recorddict(res, True))
        return app

    out = clipping_mod(message(), None, reply_with(weights, {DECLINED_KEY: "not a participant"}))
    assert DECLINED_KEY in compat.recorddict_to_fitres(out.content, True).metrics
    clipped = clipping_mod(message(), None, reply_with([w + 3.0 for w in weights], {}))
    from flwr.common import parameters_to_ndarrays

    update = parameters_to_ndarrays(compat.recorddict_to_fitres(clipped.content, True).parameters)[0] - weights[0]
    assert np.linalg.norm(update) == pytest.approx(1.0, rel=1e-5)
